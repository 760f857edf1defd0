"""Coverage-neutral Rao-Blackwellisation and the label-free choice of settings (issue 15), on a tiny finished run.

What could go wrong and is checked: a fallback that adds outputs to documents that already have some, or misses
one; a coverage count or top-10 share that does not match the files; pseudo-queries whose text stays mixed into
their own document's vector (a leak that would make every synthetic-heavy setting look best).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import train
from helpers import make_tiny_bert2bert, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from pipeline import layout
from benchmarks.rb_sweep import load_context
from pipeline.coverage import covered, top_k_share, with_fallback
from pipeline.evaluation import Evaluator
from pipeline.selection import Setting, candidate_settings, hold_out, select_label_free, units_for
from retrieval.rao_blackwell import RaoBlackwellConfig
from retrieval.synthetic import read_synthetic

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def test_top_k_share_counts_slots_of_covered_documents() -> None:
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"c": 5.0, "a": 1.0}}
    assert top_k_share(run, {"a"}, k=2) == pytest.approx(2 / 4)  # q1: a, b; q2: c, a
    assert top_k_share(run, {"a"}, k=3) == pytest.approx(2 / 5)
    assert top_k_share(run, {"a", "b", "c"}, k=10) == 1.0
    assert top_k_share({}, {"a"}) == 0.0


@pytest.fixture(scope="module")
def run_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A tiny finished run whose evaluation falls back to stage 1, then to the extractive outputs."""
    model = make_tiny_bert2bert(tmp_path_factory.mktemp("models") / "bert2bert")
    profile = tmp_path_factory.mktemp("profiles") / "tiny.yaml"
    config = tiny_pipeline_profile(FIXTURE, model, evaluate={
        "sweep_doc_weights": [0.5], "k_values": [1, 10, 100], "methods": ["manual"],
        "coverage_fallback": ["stage1", "extractive"], "select": "label-free"})
    profile.write_text(yaml.safe_dump(config))
    args = ["-c", str(profile), "--run_dir", str(tmp_path_factory.mktemp("runs") / "tiny")]
    train.main(["pipeline", *args])
    return args


@pytest.fixture(scope="module")
def run_dir(run_args: list[str]) -> Path:
    return Path(run_args[-1])


@pytest.fixture()
def evaluator(run_args: list[str]) -> Evaluator:
    return Evaluator(load_context(run_args))


def test_results_and_filter_report_say_coverage_units_and_top10_share(run_dir: Path) -> None:
    results = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    diagnostics = results["diagnostics"]
    units = diagnostics["sentence_units"]
    assert units["splitter"] == "sentences" and sum(units["units_per_document"].values()) == 20
    for stage, kept in (("stage1", layout.STAGE1_KEPT), ("stage2", layout.STAGE2_KEPT)):
        docs = {r.doc_id for r in read_synthetic(run_dir / kept) if r.text.strip()}
        assert diagnostics["coverage"][stage] == {"documents": len(docs), "corpus": 20,
                                                  "share": round(len(docs) / 20, 4)}
    assert diagnostics["coverage_fallback"] == ["stage1", "extractive"]
    rb_rows = [row for row in results["rows"] if row["system"].startswith("rb-")]
    assert rb_rows and all(0.0 <= row["covered_top10_share"] <= 1.0 for row in rb_rows)
    assert {row["covered_corpus_share"] for row in rb_rows if row["system"].endswith("stage2")} == {
        diagnostics["coverage"]["stage2"]["share"]}
    report = json.loads((run_dir / layout.FILTER_REPORT).read_text())
    assert report["coverage"]["with_kept"] == report["documents_kept"] == diagnostics["coverage"]["stage1"]["documents"]
    assert len(read_synthetic(run_dir / layout.EXTRACTIVE)) == 40  # a question and a keyword list per document


def test_fallback_fills_only_documents_without_outputs(evaluator: Evaluator) -> None:
    stage1 = evaluator.synthetic("stage1")
    half = torch.zeros(len(evaluator.doc_ids), dtype=torch.bool)
    half[::2] = True  # a stage that covers every other document
    evaluator.combine("half", [("stage1", half[stage1.doc])])
    name = with_fallback(evaluator, "half", ["extractive"])
    combined, extractive = evaluator.synthetic(name), evaluator.synthetic("extractive")
    assert covered(evaluator, name).all()
    from_stage = combined.doc[: int(half[stage1.doc].sum())]
    assert torch.equal(from_stage, stage1.doc[half[stage1.doc]])  # the stage's own outputs come first, all of them
    fallback_docs = set(combined.doc[len(from_stage):].tolist())
    assert fallback_docs == set((~covered(evaluator, "half")).nonzero().flatten().tolist())
    assert len(combined.doc) - len(from_stage) == int((~covered(evaluator, "half"))[extractive.doc].sum())
    assert with_fallback(evaluator, "stage1", ["stage1"]) == "stage1"  # a stage is no fallback of its own


def test_a_fallback_changes_the_vectors_of_uncovered_documents_only(evaluator: Evaluator) -> None:
    evaluator.combine("first-doc", [("stage1", evaluator.synthetic("stage1").doc == 0)])
    plain = evaluator.rao_blackwell("doc", "first-doc", RaoBlackwellConfig(doc_weight=0.5)).vectors
    assert torch.allclose(plain[1:], evaluator.documents[1:])  # uncovered documents keep their vectors
    filled = evaluator.rao_blackwell("doc", with_fallback(evaluator, "first-doc", ["extractive"]),
                                     RaoBlackwellConfig(doc_weight=0.5)).vectors
    assert torch.allclose(filled[0], plain[0]) and not torch.allclose(filled[1:], evaluator.documents[1:])


def test_label_free_selection_holds_its_queries_out_and_picks_the_best_score(evaluator: Evaluator) -> None:
    stage1 = evaluator.synthetic("stage1")
    pseudo = hold_out(evaluator, "stage1", ["stage1", "extractive"])
    questions = {int(d) for d, task in zip(stage1.doc, stage1.task) if task == "question"}
    assert len(pseudo.query_ids) == len(questions) > 0
    held = evaluator.synthetic(pseudo.rename["stage1"])
    for qid, relevant in pseudo.qrels.items():
        (doc_id,) = relevant
        doc = evaluator.doc_index[doc_id]
        row = pseudo.query_ids.index(qid)
        vector = pseudo.vectors[row]
        left = held.vectors[held.doc == doc]
        assert not any(torch.allclose(vector, other) for other in left)  # the query's text is not mixed in
    assert len(held.doc) == len(stage1.doc) - len(pseudo.query_ids)

    settings = candidate_settings(["stage1"], levels=["doc", "multi"], doc_weights=[0.9, 0.3], sentence_weights=[1.0])
    choice = select_label_free(evaluator, settings, RaoBlackwellConfig(), fallbacks=["extractive"])
    scores = [entry["ndcg@10"] for entry in choice["scores"]]
    assert choice["chosen"] == {k: v for k, v in choice["scores"][scores.index(max(scores))].items() if k != "ndcg@10"}
    assert choice["pseudo_queries"] == len(questions)
    # the evaluator scores its own queries again afterwards
    after = evaluator.score_units(units_for(evaluator, settings[0], RaoBlackwellConfig(), ["extractive"]))
    assert set(after.per_query) <= set(evaluator.dataset.qrels)


def test_the_table_marks_the_label_free_choice_with_how_it_was_made(run_dir: Path, evaluator: Evaluator) -> None:
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    selected = rows["rb-selected-label-free"]
    assert selected["chosen_by"].startswith("label-free") and "vs" in selected
    scores = [entry["ndcg@10"] for entry in selected["selection"]]
    best = selected["selection"][scores.index(max(scores))]
    assert selected["setting"] == {k: v for k, v in best.items() if k != "ndcg@10"}
    assert "`rb-selected-label-free` is the setting the pipeline chose, by label-free" in (
        run_dir / layout.RESULTS_MD).read_text()
    # the row's scores are the chosen setting's, rebuilt here from the run's own vectors
    setting = Setting(**selected["setting"])
    again = evaluator.score_units(units_for(evaluator, setting, evaluator.ctx.rao_blackwell, ["stage1", "extractive"]))
    assert again["ndcg@10"] == pytest.approx(selected["ndcg@10"])
