"""SIGTERM and SIGINT stop the pipeline with exit 143/130 and start no later stage; the rerun resumes and ends
equal to an uninterrupted run. A second pipeline on a run directory in use refuses, naming the holder.

Each interrupted run is a process forked from the test that signals itself at a point the test names
(``core.interrupt.HOOK_ENV``): at the 2nd training batch of the tuning stage, at the 2nd part file of stage-2
generation. Nothing waits for a delay, so the outcome does not depend on the machine's load.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import yaml

import train
from core.interrupt import HOOK_ENV
from helpers import make_tiny_bert, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from pipeline import layout
from pipeline.runner import MARKER_DIR

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
STAGES = ["data", "stage1", "filter", "tune", "stage2", "filter2", "embed", "evaluate"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_tiny_bert(tmp_path_factory.mktemp("models") / "bert")
    warm_start = {"class_path": "lightning_modules.seq2seq.Seq2SeqModule",
                  "init_args": {"warm_start_encoder": str(model), "decoder_layers": 1, "max_input_length": 64}}
    config = {**tiny_pipeline_profile(FIXTURE, model), "model": warm_start}
    config["generation"]["batch_size"] = 2  # several stage-2 part files, so the signal lands mid-stage
    path = tmp_path_factory.mktemp("profiles") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _args(profile: Path, run_dir: Path) -> list[str]:
    return ["pipeline", "-c", str(profile), "--run_dir", str(run_dir)]


def _main_with_hook(args: list[str], spec: str | None) -> None:
    if spec is not None:
        os.environ[HOOK_ENV] = spec  # in the forked child only
    train.main(args)


def _fork(args: list[str], spec: str | None) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(target=_main_with_hook, args=(args, spec), daemon=True)
    process.start()
    return process


def _run(args: list[str], spec: str | None = None) -> int | None:
    process = _fork(args, spec)
    process.join()
    return process.exitcode


def _done(run_dir: Path) -> list[str]:
    return [name for name in STAGES if (run_dir / MARKER_DIR / f"{name}.json").is_file()]


def _records(path: Path) -> list[dict[str, object]]:
    """The synthetic records without ``model`` (the tuned model's path, which names the run directory)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "model"} for record in records]


def _metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    rows = json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]
    return {row["system"]: {key: value for key, value in row.items() if "@" in key} for row in rows}


def test_signals_stop_the_run_and_the_rerun_equals_an_uninterrupted_one(profile: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _run(_args(profile, reference)) == 0

    run_dir = tmp_path / "run"
    assert _run(_args(profile, run_dir), "train-batch:2:SIGTERM") == 128 + signal.SIGTERM
    assert _done(run_dir) == ["data", "stage1", "filter"]  # tuning stopped, nothing after it started
    assert not (run_dir / layout.STAGE2).exists()

    assert _run(_args(profile, run_dir), "part@stage2.jsonl:2:SIGINT") == 128 + signal.SIGINT
    assert _done(run_dir) == ["data", "stage1", "filter", "tune"]
    parts = list(Path(f"{run_dir / layout.STAGE2}.parts").glob("*/rank*.jsonl"))
    assert len(parts) == 2 and not (run_dir / layout.STAGE2).exists()  # both written parts kept for the resume

    assert _run(_args(profile, run_dir)) == 0
    assert _done(run_dir) == STAGES
    assert _records(run_dir / layout.STAGE2) == _records(reference / layout.STAGE2)
    assert all(_metrics(reference).values()) and _metrics(run_dir) == _metrics(reference)


def test_a_second_pipeline_on_a_run_directory_in_use_refuses(profile: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    first = _fork(_args(profile, run_dir), "part:1:SIGSTOP")  # stops itself mid-stage, holding the lock
    _, status = os.waitpid(first.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    try:
        with pytest.raises(SystemExit) as exit_info:
            train.main(_args(profile, run_dir))
        assert exit_info.value.code == 2
        assert f"error: run directory {run_dir} is in use by PID {first.pid} (started " in capsys.readouterr().err
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.join()
    assert _done(run_dir) == ["data", "stage1"]  # the refused run changed nothing; the killed one left its lock,
    outcomes = train.main(["data", *_args(profile, run_dir)[1:]])  # which the kernel released: this run starts
    assert [o.status for o in outcomes] == ["skipped"]
