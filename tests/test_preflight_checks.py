"""Paths, models and keys checked before any stage runs (issue 17): each error names the config key, and the
YAML file and line that set it, in one line; ``baselines`` checks everything before computing anything and
keeps each row as soon as it is computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import command_fails, make_tiny_t5, tiny_pipeline_profile
from retrieval.results import read_results

TINY = Path(__file__).parent / "data" / "tiny_beir"


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preflight")
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline_profile(TINY, make_tiny_t5(root / "t5"))))
    return path


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``train.py argv`` exits 2 with a short message (not the usage) and no traceback; return it on one line."""
    return command_fails(capsys, *argv, max_lines=3)


def pipeline_fails_at_once(capsys, profile: Path, run_dir: Path, *extra: str) -> str:
    message = fails(capsys, "pipeline", "-c", str(profile), "--run_dir", str(run_dir), *extra)
    assert not (run_dir / ".stages").exists(), "a stage ran before the check"
    return message


@pytest.mark.parametrize("key", ["embed.encoder", "filter.encoder"])
def test_encoder_folder_without_config_json_is_refused_before_any_stage(capsys, profile: Path, tmp_path: Path,
                                                                        key: str) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("no model here")
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", f"--{key}", str(folder))
    assert f"{key}: model folder '{folder}' has no config.json" in message


def test_encoder_hub_name_offline_is_refused_before_any_stage(capsys, profile: Path, tmp_path: Path) -> None:
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "--embed.encoder", "nobody/no-such-model")
    assert "embed.encoder: model 'nobody/no-such-model' is not available locally" in message
    assert "huggingface-cli download" in message


@pytest.mark.parametrize("skip_tuning", [False, True])
def test_trainer_key_typo_names_the_yaml_file_and_a_close_key(capsys, profile: Path, tmp_path: Path,
                                                              skip_tuning: bool) -> None:
    fragment = tmp_path / "trainer.yaml"
    fragment.write_text("trainer:\n  devices: 1\n  acelerator: cpu\n")
    extra = ["--fit.skip", "true"] if skip_tuning else []
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "-c", str(fragment), *extra)
    assert f"{fragment}, line 3, field 'trainer.acelerator': not an argument of lightning.pytorch.Trainer " \
           "(did you mean 'accelerator'?)" in message


def test_fit_trainer_key_typo_on_the_command_line(capsys, profile: Path, tmp_path: Path) -> None:
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "--fit.trainer", '{"max_epoch": 1}')
    assert "field 'fit.trainer.max_epoch'" in message and "did you mean 'max_epochs'?" in message


def test_trainer_key_typo_in_a_fit_fragment_is_found_before_any_stage(capsys, profile: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "fit.yaml"
    fragment.write_text("trainer:\n  max_epochs: 1\n  gradient_clip_vale: 1.0\n")
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "--fit.configs",
                                     f"[configs/fit/selfinstruct.yaml, {fragment}]")
    assert f"{fragment}, line 3, field 'trainer.gradient_clip_vale'" in message
    assert "did you mean 'gradient_clip_val'?" in message
    missing = tmp_path / "no-such.yaml"
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "--fit.configs", f"[{missing}]")
    assert f"{missing}: file not found (fit.configs lists" in message


def test_config_file_typo_is_one_line_with_the_file_line_and_key(capsys, profile: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "typo.yaml"
    fragment.write_text("embed:\n  dtype: float16\n  batchsize: 8\n")
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "-c", str(fragment))
    assert message.startswith(f"error: {fragment}, line 3, field 'embed.batchsize':")
    assert "did you mean 'embed.batch_size'?" in message and "usage:" not in message
    fragment.write_text("embed:\n  dtype: float8\n")
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "-c", str(fragment))
    assert f"{fragment}, line 2, field 'embed.dtype'" in message and "float8" in message
    message = pipeline_fails_at_once(capsys, profile, tmp_path / "run", "--embed.dtype", "float8")
    assert "error: field 'embed.dtype'" in message and "float8" in message and "usage:" not in message


# ----------------------------------------------------------------------------------- baselines
def test_baselines_check_trainer_and_encoder_before_computing(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    message = fails(capsys, "baselines", "--data.path", str(TINY), "--output_dir", str(out),
                    "--trainer", '{"acelerator": "cpu"}')
    assert "field 'trainer.acelerator'" in message and "did you mean 'accelerator'?" in message
    message = fails(capsys, "baselines", "--data.path", str(TINY), "--output_dir", str(out),
                    "--encoder", str(tmp_path))
    assert f"encoder: model folder '{tmp_path}' has no config.json" in message
    assert not out.exists()


def test_baselines_keep_the_bm25_row_when_the_dense_row_fails(monkeypatch, tmp_path: Path) -> None:
    from datamodules.downsample import DataConfig
    from pipeline import baselines

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while embedding")

    monkeypatch.setattr(baselines, "embed_texts", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        baselines.run_baselines(DataConfig(path=TINY), output_dir=tmp_path)
    _, _, table = read_results(tmp_path / "results.json")
    assert [row.system for row in table] == ["bm25"] and table[0].metrics["mrr@100"] == 1.0
    assert json.loads((tmp_path / "results.json").read_text())["dataset"] == "tiny_beir"


def test_fit_command_typo_names_the_yaml_file_not_the_usage(capsys, tmp_path: Path) -> None:
    fragment = tmp_path / "fit.yaml"
    fragment.write_text("trainer:\n  max_epochs: 1\n  acelerator: cpu\n")
    message = fails(capsys, "fit", "-c", "configs/fit/selfinstruct.yaml", "-c", str(fragment))
    assert f"{fragment}, line 3, field 'trainer.acelerator': Subcommand 'fit' does not accept option" in message
    assert "usage:" not in message


def test_where_set_reads_files_inline_yaml_and_long_inline_json(tmp_path: Path) -> None:
    from pipeline.config_errors import where_set

    fragment = tmp_path / "a.yaml"
    fragment.write_text("embed:\n  batch_size: 8\n")
    inline = json.dumps({"embed": {"dtype": "float16"}, "padding": "x" * 5000})  # longer than a file name may be
    args = ["-c", str(fragment), "-c", inline, "--embed.sentences", "false"]
    assert where_set(args, "embed.batch_size") == (str(fragment), 2)
    assert where_set(args, "embed.dtype") == ("-c text", 1)
    assert where_set(args, "embed.sentences") == ("the command line", None)
    assert where_set(args, "embed.encoder") is None
