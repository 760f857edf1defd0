"""TREC run files: trec_eval's order and ranks, exact scores, depth cut, identical ids, refused ids, read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.io import InputError
from pipeline.config import EvaluateConfig
from pipeline.layout import run_file
from pipeline.run_export import RunExport
from retrieval.metrics import evaluate_run
from retrieval.search import SearchConfig
from retrieval.trec import read_trec_run, trec_order, write_trec_run

pytrec_eval = pytest.importorskip("pytrec_eval")


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_lines_follow_trec_eval_order_with_ranks_and_exact_scores(tmp_path: Path) -> None:
    third = 1 / 3  # repr keeps every digit; "%.4f" would tie it with 0.3333
    run = {"q1": {"a": 0.5, "b": 0.9, "c": 0.5, "d": 0.3333, "e": third}, "q2": {"x": -0.25}}
    assert write_trec_run(tmp_path / "run.trec", run, tag="sys") == 6
    lines = _lines(tmp_path / "run.trec")
    assert [line[2] for line in lines[:5]] == ["b", "c", "a", "e", "d"], "ties by doc id descending, as trec_eval"
    assert [line[3] for line in lines[:5]] == ["1", "2", "3", "4", "5"]
    assert all(line[1] == "Q0" and line[5] == "sys" for line in lines)
    assert read_trec_run(tmp_path / "run.trec") == run, "scores read back to the same floats"


def test_depth_cuts_in_trec_eval_order_and_identical_ids_are_dropped(tmp_path: Path) -> None:
    run = {"q1": {"q1": 0.99, "a": 0.5, "c": 0.5, "b": 0.7}}
    write_trec_run(tmp_path / "run.trec", run, tag="t", depth=2, drop_identical_ids=True)
    assert read_trec_run(tmp_path / "run.trec") == {"q1": {"b": 0.7, "c": 0.5}}
    write_trec_run(tmp_path / "kept.trec", run, tag="t", depth=1)
    assert read_trec_run(tmp_path / "kept.trec") == {"q1": {"q1": 0.99}}


def test_scoring_the_file_with_pytrec_eval_equals_our_metrics(tmp_path: Path) -> None:
    """Heavy ties, a depth cut: what pytrec_eval reads from the file is what our metrics scored."""
    import random

    rng = random.Random(0)
    qrels = {f"q{i}": {f"d{j}": rng.choice([0, 1, 2]) for j in rng.sample(range(60), 8)} for i in range(20)}
    run = {q: {f"d{j}": rng.choice([0.1, 0.2, 0.3, rng.random()]) for j in range(60)} for q in qrels}
    write_trec_run(tmp_path / "run.trec", run, tag="t", depth=30)
    ours = evaluate_run(qrels, read_trec_run(tmp_path / "run.trec"), k_values=[10, 30])
    evaluated = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.30"}).evaluate(
        read_trec_run(tmp_path / "run.trec"))
    assert ours["ndcg@10"] == pytest.approx(sum(v["ndcg_cut_10"] for v in evaluated.values()) / 20, abs=1e-9)
    assert ours["recall@30"] == pytest.approx(sum(v["recall_30"] for v in evaluated.values()) / 20, abs=1e-9)
    full = evaluate_run(qrels, run, k_values=[10, 30])
    assert full["ndcg@10"] == ours["ndcg@10"] and full["recall@30"] == ours["recall@30"], "the cut keeps the top 30"


@pytest.mark.parametrize(("run", "tag", "match"), [
    ({"q 1": {"d": 1.0}}, "t", "query id 'q 1'"),
    ({"q1": {"d\t2": 1.0}}, "t", "document id 'd\\\\t2'"),
    ({"q1": {"d": 1.0}}, "my system", "tag 'my system'"),
    ({"q1": {"d": float("nan")}}, "t", "not finite"),
])
def test_unwritable_runs_are_refused_and_nothing_is_left(tmp_path: Path, run: dict, tag: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_trec_run(tmp_path / "run.trec", run, tag=tag)
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_run_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 high t\n")
    with pytest.raises(InputError, match=r"bad.trec, line 2, field 'score'"):
        read_trec_run(path)
    path.write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(InputError, match=r"line 1: expected 6 columns"):
        read_trec_run(path)


def test_run_export_replaces_the_folder_and_names_files_by_system(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old-row.trec").write_text("stale\n")
    export = RunExport(tmp_path, depth=10, drop_identical_ids=True)
    export("rb-manual-multi-stage1", {"q1": {"d1": 0.5}})
    assert (tmp_path / "runs" / "old-row.trec").is_file(), "the old set stays until the new one is complete"
    assert export.finish() == tmp_path / "runs"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["rb-manual-multi-stage1.trec"]
    assert not (tmp_path / ".runs.partial").exists()
    with pytest.raises(ValueError, match="cannot name a run file"):
        run_file("../escape")


def test_run_depth_deeper_than_what_is_retrieved_is_refused() -> None:
    with pytest.raises(ValueError, match=r"evaluate.run_depth \(1000\) is deeper than evaluate.search.k \(100\)"):
        EvaluateConfig(search=SearchConfig(k=100))
    with pytest.raises(ValueError, match="evaluate.run_depth must be >= 1"):
        EvaluateConfig(run_depth=0)
    assert EvaluateConfig(run_depth=None, search=SearchConfig(k=100)).run_depth is None
    assert trec_order({"a": 1.0, "b": 1.0}) == [("b", 1.0), ("a", 1.0)]
