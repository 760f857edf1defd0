"""The results table: results.json schema, results.md table, merging rows from reruns, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.io import InputError
from retrieval.results import ResultRow, format_table, read_results, update_results, write_results

BM25 = ResultRow("bm25", {"ndcg@10": 0.67804, "mrr@100": 0.641, "recall@100": 0.92533, "map@10": 0.63},
                 {"wall_s": 2.5})
DENSE = ResultRow("dense", {"ndcg@10": 0.64508, "mrr@100": 0.6, "recall@100": 0.925})


def test_results_json_schema_and_markdown_table(tmp_path: Path) -> None:
    write_results(tmp_path, "scifact", "test", [BM25, DENSE])
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload == {"dataset": "scifact", "split": "test", "rows": [
        {"system": "bm25", "ndcg@10": 0.67804, "mrr@100": 0.641, "recall@100": 0.92533, "map@10": 0.63,
         "wall_s": 2.5},
        {"system": "dense", "ndcg@10": 0.64508, "mrr@100": 0.6, "recall@100": 0.925}]}
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0] == "# scifact (test)"
    assert lines[2] == "| system | ndcg@10 | mrr@100 | recall@100 |"
    assert lines[4] == "| bm25 | 0.6780 | 0.6410 | 0.9253 |"
    assert lines[5] == "| dense | 0.6451 | 0.6000 | 0.9250 |"
    assert not list(tmp_path.glob(".*tmp")), "no temporary files left behind"


def test_format_table_chosen_columns_and_missing_metric() -> None:
    table = format_table([BM25, DENSE], columns=("map@10", "ndcg@10"))
    assert table.splitlines()[2:] == ["| bm25 | 0.6300 | 0.6780 |", "| dense | — | 0.6451 |"]


def test_read_results_round_trip_keeps_metrics_and_extra(tmp_path: Path) -> None:
    write_results(tmp_path, "nfcorpus", "test", [BM25, DENSE])
    dataset, split, rows = read_results(tmp_path / "results.json")
    assert (dataset, split) == ("nfcorpus", "test")
    assert rows == [BM25, DENSE]


def test_update_replaces_same_system_keeps_order_and_appends(tmp_path: Path) -> None:
    write_results(tmp_path, "scifact", "test", [BM25, DENSE])
    new_bm25 = ResultRow("bm25", {"ndcg@10": 0.5})
    rb = ResultRow("rb-manual-doc-stage1", {"ndcg@10": 0.7})
    merged = update_results(tmp_path, "scifact", "test", [rb, new_bm25])
    assert [row.system for row in merged] == ["bm25", "dense", "rb-manual-doc-stage1"]
    _, _, rows = read_results(tmp_path / "results.json")
    assert rows == [new_bm25, DENSE, rb]
    assert "| rb-manual-doc-stage1 | 0.7000 |" in (tmp_path / "results.md").read_text()


def test_update_refuses_another_dataset_and_leaves_file(tmp_path: Path) -> None:
    write_results(tmp_path, "scifact", "test", [BM25])
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(InputError, match=r"results.json: holds results for scifact \(test\), not scifact \(train\)"):
        update_results(tmp_path, "scifact", "train", [DENSE])
    assert (tmp_path / "results.json").read_text() == before


def test_duplicate_systems_rejected_before_anything_is_written(tmp_path: Path) -> None:
    write_results(tmp_path, "scifact", "test", [BM25])
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match="duplicate system names.*dense"):
        write_results(tmp_path, "scifact", "test", [DENSE, DENSE])
    assert (tmp_path / "results.json").read_text() == before


@pytest.mark.parametrize(("metrics", "extra", "message"), [
    ({"nDCG@10": 0.5}, {}, "lower-case name@k"),
    ({"ndcg10": 0.5}, {}, "lower-case name@k"),
    ({"ndcg@10": 0.5}, {"system": "x"}, "look like 'system' or a metric"),
    ({"ndcg@10": 0.5}, {"recall@5": 1.0}, "look like 'system' or a metric"),
])
def test_bad_rows_rejected(metrics: dict, extra: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResultRow("bm25", metrics, extra)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"dataset": "d", "split": "test"}', "field 'rows': missing"),
    ('{"dataset": "d", "split": "test", "rows": [{"ndcg@10": 1}]}', r"field 'rows\[0\]': expected an object"),
    ('{"dataset": "d", "split": "test", "rows": [{"system": "s", "ndcg@10": "high"}]}',
     r"field 'rows\[0\].ndcg@10': metric must be a number"),
])
def test_malformed_results_file_names_the_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_results(path)
