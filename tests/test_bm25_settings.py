"""The BM25 settings study runs on a BEIR folder and tests every setting against the default per query."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bm25_settings import SETTINGS, main

TINY_BEIR = Path(__file__).parent / "data" / "tiny_beir"


def test_every_setting_is_scored_and_compared_with_the_default(tmp_path: Path) -> None:
    result = main(["--data", str(TINY_BEIR), "--splits", "test", "train", "--output", str(tmp_path / "bm25")])
    saved = json.loads((tmp_path / "bm25.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert list(saved["rows"]) == list(SETTINGS) and set(saved["splits"]) == {"test", "train"}
    default, *others = saved["rows"].values()
    assert "vs_default" not in default["test"]
    for row in others:
        for split in ("test", "train"):
            vs = row[split]["vs_default"]
            assert abs(vs["delta"] - (row[split]["ndcg@10"] - default[split]["ndcg@10"])) < 1e-12
            assert vs["queries"] == saved["splits"][split]["queries"] and 0 < vs["p_rand"] <= 1
    assert saved["ratio"] == round(default["test"]["ndcg@10"] / saved["anchor"]["ndcg@10"], 4)
    assert "| default (Porter, Lucene-like tokens) |" in (tmp_path / "bm25.md").read_text()
