"""Rao-Blackwell weighting on hand-made 3-d vectors whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.rao_blackwell import WEIGHTING_METHODS, RaoBlackwellConfig, WeightingMethod, _mix_for_anchors, _Outputs, rao_blackwellise

METHODS = WEIGHTING_METHODS.names()

E1, E2, E3 = torch.eye(3)


def unit(*values: float) -> torch.Tensor:
    vector = torch.tensor(values, dtype=torch.float32)
    return vector / vector.norm()


def long(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def three_documents() -> dict:
    """Doc 0: e1 with a question e2 and keywords e3. Doc 1: e2 with questions e1, e3 and keywords e1.
    Doc 2: e3 with no synthetic output."""
    return dict(unit_vectors=torch.stack([E1, E2, E3]), unit_to_doc=long(0, 1, 2),
                synthetic_vectors=torch.stack([E2, E3, E1, E3, E1]), synthetic_doc=long(0, 0, 1, 1, 1),
                synthetic_task=["question", "keywords", "question", "question", "keywords"])


def test_manual_is_a_mean_within_each_task_and_shares_across_tasks():
    out = rao_blackwellise(**three_documents(), config=RaoBlackwellConfig(doc_weight=0.5))
    # Doc 0: 0.5 e1 + 0.25 e2 + 0.25 e3. Doc 1: 0.5 e2 + 0.25 mean(e1, e3) + 0.25 e1 = (0.375, 0.5, 0.125).
    torch.testing.assert_close(out[0], unit(2, 1, 1))
    torch.testing.assert_close(out[1], unit(3, 4, 1))
    torch.testing.assert_close(out[2], E3)


def test_manual_task_shares_are_ratios_and_a_zero_share_switches_a_task_off():
    config = RaoBlackwellConfig(doc_weight=0.5, task_weights={"question": 3.0, "keywords": 1.0})
    out = rao_blackwellise(**three_documents(), config=config)
    torch.testing.assert_close(out[0], unit(0.5, 0.375, 0.125))
    off = RaoBlackwellConfig(doc_weight=0.5, task_weights={"question": 0.0, "keywords": 1.0})
    out = rao_blackwellise(**three_documents(), config=off)
    torch.testing.assert_close(out[0], unit(1, 0, 1))
    torch.testing.assert_close(out[1], unit(1, 1, 0))


def test_a_missing_task_gives_its_share_to_the_present_ones():
    data = three_documents()
    keep = [0, 2, 3]  # doc 0 keeps only its question, doc 1 only its questions
    data.update(synthetic_vectors=data["synthetic_vectors"][keep], synthetic_doc=data["synthetic_doc"][keep],
                synthetic_task=[data["synthetic_task"][i] for i in keep])
    out = rao_blackwellise(**data, config=RaoBlackwellConfig(doc_weight=0.5))
    torch.testing.assert_close(out[0], unit(1, 1, 0))
    torch.testing.assert_close(out[1], unit(1, 2, 1))


def test_uniform_counts_the_unit_and_every_output_once_whatever_the_weights():
    for config in (RaoBlackwellConfig(method="uniform"),
                   RaoBlackwellConfig(method="uniform", doc_weight=0.1, task_weights={"question": 9, "keywords": 1})):
        out = rao_blackwellise(**three_documents(), config=config)
        torch.testing.assert_close(out[0], unit(1, 1, 1))
        torch.testing.assert_close(out[1], unit(2, 1, 1))  # (e2 + e1 + e3 + e1) / 4
        torch.testing.assert_close(out[2], E3)


def question_pair() -> dict:
    """One document e1 with two questions a = (0.6, 0.8, 0) (cosine 0.6) and b = e2 (cosine 0)."""
    return dict(unit_vectors=E1[None], unit_to_doc=long(0), synthetic_vectors=torch.stack([unit(0.6, 0.8, 0), E2]),
                synthetic_doc=long(0, 0), synthetic_task=["question", "question"])


def test_softmax_weights_by_cosine_over_temperature():
    out = rao_blackwellise(**question_pair(), config=RaoBlackwellConfig(method="softmax", doc_weight=0.5,
                                                                         temperature=0.1))
    p = math.exp(6) / (math.exp(6) + 1)
    expected = 0.5 * E1 + 0.5 * (p * unit(0.6, 0.8, 0) + (1 - p) * E2)
    torch.testing.assert_close(out[0], expected / expected.norm())


def test_bertscore_weights_are_proportional_to_the_given_scores():
    config = RaoBlackwellConfig(method="bertscore", doc_weight=0.5)
    out = rao_blackwellise(**question_pair(), config=config, synthetic_weights=torch.tensor([0.6, 0.2]))
    expected = 0.5 * E1 + 0.5 * (0.75 * unit(0.6, 0.8, 0) + 0.25 * E2)
    torch.testing.assert_close(out[0], expected / expected.norm())
    with pytest.raises(ValueError, match="synthetic_weights"):
        rao_blackwellise(**question_pair(), config=config)
    with pytest.raises(ValueError, match="non-negative"):
        rao_blackwellise(**question_pair(), config=config, synthetic_weights=torch.tensor([0.6, -0.2]))


def test_a_method_is_one_registered_class_that_declares_what_it_needs(monkeypatch: pytest.MonkeyPatch):
    """What adding a weighting method takes (docs/architecture.md): a WeightingMethod registered under a name.
    Its declared per-output score is demanded by name; configs accept it; unknown names list the choices."""
    class ByLength(WeightingMethod):
        output_score = "length"

        def pair_scores(self, keep, cosine, output_score, group, num_groups, config):
            return torch.where(keep, output_score, torch.zeros_like(output_score))

    monkeypatch.setitem(WEIGHTING_METHODS._entries, "length", ByLength)  # registered for this test only
    config = RaoBlackwellConfig(method="length", doc_weight=0.5)
    out = rao_blackwellise(**question_pair(), config=config, synthetic_weights=torch.tensor([3.0, 1.0]))
    expected = 0.5 * E1 + 0.5 * (0.75 * unit(0.6, 0.8, 0) + 0.25 * E2)
    torch.testing.assert_close(out[0], expected / expected.norm())
    with pytest.raises(ValueError, match="method 'length' needs synthetic_weights: each output's length score"):
        rao_blackwellise(**question_pair(), config=config)
    monkeypatch.delitem(WEIGHTING_METHODS._entries, "length")
    with pytest.raises(ValueError, match="unknown weighting method 'length'; choose from manual, uniform, bertscore"):
        RaoBlackwellConfig(method="length")


def question_and_keywords() -> dict:
    """Document e1 with a question q = (0.6, 0.8, 0) (cosine 0.6) and keywords e3 (cosine 0)."""
    return dict(unit_vectors=E1[None], unit_to_doc=long(0), synthetic_vectors=torch.stack([unit(0.6, 0.8, 0), E3]),
                synthetic_doc=long(0, 0), synthetic_task=["question", "keywords"])


def test_normalise_within_all_lets_the_scores_move_weight_between_tasks():
    q = unit(0.6, 0.8, 0)
    per_task = rao_blackwellise(**question_and_keywords(),
                                config=RaoBlackwellConfig(method="softmax", doc_weight=0.5, temperature=1.0))
    expected = 0.5 * E1 + 0.25 * q + 0.25 * E3  # one output per task: the softmax has nothing to choose
    torch.testing.assert_close(per_task[0], expected / expected.norm())
    across = rao_blackwellise(**question_and_keywords(), config=RaoBlackwellConfig(
        method="softmax", doc_weight=0.5, temperature=1.0, normalise_within="all"))
    p = math.exp(0.6) / (math.exp(0.6) + 1)
    expected = 0.5 * E1 + 0.5 * (p * q + (1 - p) * E3)
    torch.testing.assert_close(across[0], expected / expected.norm())


def test_min_similarity_drops_outputs_and_a_document_left_with_none_keeps_its_vector():
    q = unit(0.6, 0.8, 0)
    out = rao_blackwellise(**question_and_keywords(), config=RaoBlackwellConfig(doc_weight=0.5, min_similarity=0.5))
    torch.testing.assert_close(out[0], F.normalize(0.5 * E1 + 0.5 * q, dim=0))
    out = rao_blackwellise(**question_and_keywords(), config=RaoBlackwellConfig(doc_weight=0.5, min_similarity=0.9))
    torch.testing.assert_close(out[0], E1)


def test_sentence_level_every_sentence_of_a_document_gets_its_outputs():
    out = rao_blackwellise(unit_vectors=torch.stack([E1, E2, E3]), unit_to_doc=long(0, 0, 1),
                           synthetic_vectors=E3[None], synthetic_doc=long(0), synthetic_task=["question"],
                           config=RaoBlackwellConfig(doc_weight=0.5))
    torch.testing.assert_close(out, torch.stack([unit(1, 0, 1), unit(0, 1, 1), E3]))


def test_similarity_to_unit_or_to_the_whole_document_at_sentence_level():
    sentences = dict(unit_vectors=torch.stack([E1, E2]), unit_to_doc=long(0, 0),
                     synthetic_vectors=torch.stack([E1, E2]), synthetic_doc=long(0, 0),
                     synthetic_task=["question", "keywords"])
    config = dict(method="softmax", doc_weight=0.5, temperature=1.0, normalise_within="all")
    to_unit = rao_blackwellise(**sentences, config=RaoBlackwellConfig(**config))
    p = math.e / (math.e + 1)  # the output equal to the sentence has cosine 1, the other 0
    torch.testing.assert_close(to_unit[0], unit(0.5 + 0.5 * p, 0.5 * (1 - p), 0))
    torch.testing.assert_close(to_unit[1], unit(0.5 * (1 - p), 0.5 + 0.5 * p, 0))
    document = unit(1, 1, 0)[None]
    with pytest.raises(ValueError, match="doc_vectors"):
        rao_blackwellise(**sentences, config=RaoBlackwellConfig(**config, similarity_to="document"))
    to_doc = rao_blackwellise(**sentences, config=RaoBlackwellConfig(**config, similarity_to="document"),
                              doc_vectors=document)
    torch.testing.assert_close(to_doc[0], unit(0.75, 0.25, 0))  # both outputs equally close to the document
    torch.testing.assert_close(to_doc[1], unit(0.25, 0.75, 0))


def test_parent_share_mixes_the_whole_document_into_each_sentence():
    config = RaoBlackwellConfig(doc_weight=0.5, task_weights={"question": 1.0}, parent_share=1.0)
    sentences = dict(unit_vectors=torch.stack([E1, E2]), unit_to_doc=long(0, 1), synthetic_vectors=E2[None],
                     synthetic_doc=long(0), synthetic_task=["question"])
    out = rao_blackwellise(**sentences, config=config, doc_vectors=torch.stack([E3, E3]))
    torch.testing.assert_close(out[0], unit(0.5, 0.25, 0.25))
    torch.testing.assert_close(out[1], unit(0, 0.5, 0.5))  # no outputs: the parent takes all of 1 − w
    with pytest.raises(ValueError, match="doc_vectors"):
        rao_blackwellise(**sentences, config=config)


def random_corpus(seed: int = 0, docs: int = 12, dim: int = 8) -> dict:
    generator = torch.Generator().manual_seed(seed)
    unit_to_doc = torch.sort(torch.randint(0, docs, (30,), generator=generator)).values
    synthetic_doc = torch.randint(0, docs - 2, (25,), generator=generator)  # the last two documents have none
    return dict(unit_vectors=F.normalize(torch.randn(30, dim, generator=generator), dim=-1), unit_to_doc=unit_to_doc,
                synthetic_vectors=F.normalize(torch.randn(25, dim, generator=generator), dim=-1),
                synthetic_doc=synthetic_doc, synthetic_task=torch.randint(0, 2, (25,), generator=generator),
                synthetic_weights=torch.rand(25, generator=generator),
                doc_vectors=F.normalize(torch.randn(docs, dim, generator=generator), dim=-1))


VARIANTS = [dict(method=m) for m in METHODS] + [
    dict(method="softmax", normalise_within="all", min_similarity=-0.2),
    dict(method="bertscore", normalise_within="all", similarity_to="document", min_similarity=0.0),
    dict(method="manual", parent_share=0.5),
    dict(method="manual", count_prior=2.0),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_permuting_synthetic_rows_and_chunking_change_nothing(variant):
    data = random_corpus()
    reference = rao_blackwellise(**data, config=RaoBlackwellConfig(doc_weight=0.3, **variant))
    torch.testing.assert_close(reference.norm(dim=-1), torch.ones(30))
    permutation = torch.randperm(25, generator=torch.Generator().manual_seed(1))
    shuffled = dict(data, **{key: data[key][permutation] for key in
                             ("synthetic_vectors", "synthetic_doc", "synthetic_task", "synthetic_weights")})
    torch.testing.assert_close(rao_blackwellise(**shuffled, config=RaoBlackwellConfig(doc_weight=0.3, **variant)),
                               reference)
    for chunk_size in (1, 5):
        chunked = RaoBlackwellConfig(doc_weight=0.3, chunk_size=chunk_size, **variant)
        torch.testing.assert_close(rao_blackwellise(**data, config=chunked), reference)


def test_documents_without_outputs_and_doc_weight_one_keep_the_input():
    data = random_corpus()
    lonely = data["unit_to_doc"] >= 10
    for method in METHODS:
        out = rao_blackwellise(**data, config=RaoBlackwellConfig(method=method, doc_weight=0.2))
        torch.testing.assert_close(out[lonely], data["unit_vectors"][lonely])
        assert not torch.allclose(out[~lonely], data["unit_vectors"][~lonely])
        if method != "uniform":
            same = rao_blackwellise(**data, config=RaoBlackwellConfig(method=method, doc_weight=1.0))
            torch.testing.assert_close(same, data["unit_vectors"])


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_weights_of_the_unit_outputs_and_parent_sum_to_one(variant):
    """With orthonormal outputs the mix's coordinates are the output weights, so the sum can be read off."""
    docs, per_doc = 3, 4
    vectors = torch.eye(docs * per_doc)
    config = RaoBlackwellConfig(doc_weight=0.3, **variant)
    counts = torch.full((docs,), per_doc)
    outputs = _Outputs(vectors, vectors.norm(dim=-1), torch.tensor([0, 1, 1, 0] * docs), torch.rand(docs * per_doc),
                       torch.arange(docs * per_doc), torch.cumsum(counts, 0) - counts, counts)
    anchors = F.normalize(torch.rand(docs, docs * per_doc) - 0.3, dim=-1)
    own, mix, parent = _mix_for_anchors(torch.arange(docs), anchors, outputs, torch.tensor([0.5, 0.5]), config)
    assert (mix >= 0).all()
    torch.testing.assert_close(own + mix.sum(1) + parent, torch.ones(docs))


def test_task_names_and_codes_agree_and_bad_input_is_named():
    data = three_documents()
    config = RaoBlackwellConfig(doc_weight=0.4)
    by_name = rao_blackwellise(**data, config=config)
    codes = torch.tensor([config.tasks.index(task) for task in data["synthetic_task"]])
    torch.testing.assert_close(rao_blackwellise(**dict(data, synthetic_task=codes), config=config), by_name)
    with pytest.raises(ValueError, match="'title'"):
        rao_blackwellise(**dict(data, synthetic_task=["title"] * 5), config=config)
    with pytest.raises(ValueError, match="L2-normalised"):
        rao_blackwellise(**dict(data, unit_vectors=2 * data["unit_vectors"]), config=config)
    with pytest.raises(ValueError, match="doc_weight"):
        RaoBlackwellConfig(doc_weight=1.5)
    with pytest.raises(ValueError, match="method"):
        RaoBlackwellConfig(method="mean")


def test_count_prior_shrinks_the_synthetic_share_of_documents_with_few_outputs():
    """Doc 0 has 2 outputs, doc 1 has 3: with k = 1 their synthetic shares are (1 − w)·2/3 and (1 − w)·3/4."""
    config = RaoBlackwellConfig(doc_weight=0.5, count_prior=1.0)
    out = rao_blackwellise(**three_documents(), config=config)
    # Doc 0: own 1 − 0.5·2/3 = 2/3, question e2 and keywords e3 1/6 each.
    torch.testing.assert_close(out[0], unit(4, 1, 1))
    # Doc 1: own 1 − 0.5·3/4 = 5/8; question share 3/16 split over e1, e3; keywords 3/16 on e1.
    torch.testing.assert_close(out[1], unit(3 / 32 + 3 / 16, 5 / 8, 3 / 32))
    torch.testing.assert_close(out[2], E3)  # no outputs: its own vector
    off = rao_blackwellise(**three_documents(), config=RaoBlackwellConfig(doc_weight=0.5, count_prior=0.0))
    torch.testing.assert_close(off[0], unit(2, 1, 1))
    with pytest.raises(ValueError, match="count_prior"):
        RaoBlackwellConfig(count_prior=-1.0)
