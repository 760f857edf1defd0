"""One run per run directory: a second process refuses at once, naming the holder; a dead holder frees it.

The holder is a forked process that takes the lock and waits on a pipe the test controls, so nothing
here races a timer: the refusal is asserted by its message, the release by taking the lock after the
holder ended (closed its pipe, or was SIGKILLed).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import yaml

import train
from helpers import tiny_pipeline_profile
from pipeline import run_lock as run_lock_module
from pipeline.run_lock import JOB_ENV, RunDirectoryInUse, read_holder, run_lock

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"


def _hold(run_dir: Path, job: str | None, ready: Connection, release: Connection) -> None:
    if job is not None:
        os.environ[JOB_ENV] = job
    with run_lock(run_dir, is_global_zero=True):
        ready.send(os.getpid())
        release.recv()  # until the test says so (or kills this process)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[multiprocessing.Process, Connection, Path]]:
    """A forked process holding ``tmp_path / "run"`` (job "job-a") until the test sends on the connection."""
    fork = multiprocessing.get_context("fork")
    run_dir = tmp_path / "run"
    ready_recv, ready_send = fork.Pipe(duplex=False)
    release_recv, release_send = fork.Pipe(duplex=False)
    process = fork.Process(target=_hold, args=(run_dir, "job-a", ready_send, release_recv), daemon=True)
    process.start()
    assert ready_recv.recv() == process.pid  # the lock is taken
    yield process, release_send, run_dir
    if process.is_alive():
        process.kill()
    process.join()


def test_second_process_refuses_naming_the_holder_then_takes_it_once_free(holder) -> None:
    process, release, run_dir = holder
    with pytest.raises(RunDirectoryInUse, match=rf"run directory {run_dir} is in use by PID {process.pid} "
                                                r"\(started \d{4}-\d\d-\d\dT"):
        with run_lock(run_dir, is_global_zero=True):
            pass
    release.send("done")
    process.join()
    with run_lock(run_dir, is_global_zero=True):
        assert read_holder(run_dir)["pid"] == os.getpid()
    assert os.environ.get(JOB_ENV) is None  # the job name is exported only while the lock is held


def test_the_kernel_frees_the_lock_of_a_killed_holder(holder) -> None:
    process, _, run_dir = holder
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    with run_lock(run_dir, is_global_zero=True):
        pass


def test_other_ranks_accept_their_job_and_refuse_another(holder, monkeypatch: pytest.MonkeyPatch) -> None:
    process, _, run_dir = holder
    monkeypatch.setenv(JOB_ENV, "job-a")  # as Lightning's launcher passes rank 0's environment on
    with run_lock(run_dir, is_global_zero=False):  # no second lock: it would refuse its own job
        pass
    monkeypatch.setenv(JOB_ENV, "job-b")
    monkeypatch.setattr(run_lock_module, "RANK_WAIT_S", 0.0)
    with pytest.raises(RunDirectoryInUse, match=f"in use by PID {process.pid}"):
        with run_lock(run_dir, is_global_zero=False):
            pass


def test_one_process_may_nest_its_own_lock(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run", is_global_zero=True):
        with run_lock(tmp_path / "run", is_global_zero=True):  # a stage command inside a pipeline
            pass
        assert read_holder(tmp_path / "run")["pid"] == os.getpid()


def test_pipeline_refuses_before_any_work(holder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    process, _, run_dir = holder
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(tiny_pipeline_profile(FIXTURE, tmp_path / "model-not-needed")))
    for command in ("pipeline", "data", "evaluate"):
        with pytest.raises(SystemExit) as exit_info:
            train.main([command, "-c", str(profile), "--run_dir", str(run_dir)])
        assert exit_info.value.code == 2
        assert f"error: run directory {run_dir} is in use by PID {process.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing read or written


def test_train_py_refuses_before_importing_torch(holder, tmp_path: Path) -> None:
    """The refusal comes before the parser and its imports (10-20 s on a busy machine): a fresh interpreter
    refuses without ever importing torch, whether the run directory comes from a flag or from a -c file."""
    import subprocess
    import sys

    process, _, run_dir = holder
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"run_dir": str(run_dir)}))
    code = ("import sys, train\ntry:\n    train.main(sys.argv[1:])\nexcept SystemExit as exit_:\n"
            "    print('torch imported' if 'torch' in sys.modules else 'torch not imported', exit_.code)")
    root = Path(train.__file__).resolve().parent
    for args in (["pipeline", "--run_dir", str(run_dir)], ["embed", "-c", str(profile)]):
        result = subprocess.run([sys.executable, "-c", code, *args], cwd=root, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(root)})
        assert result.stdout.split() == ["torch", "not", "imported", "2"], result.stderr[-2000:]
        assert f"run directory {run_dir} is in use by PID {process.pid}" in result.stderr


def test_named_run_dir_follows_the_parser_order(tmp_path: Path) -> None:
    from pipeline.commands import named_run_dir

    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"run_dir": "from-file"}))
    assert named_run_dir("pipeline", ["-c", str(profile)]) == "from-file"
    assert named_run_dir("tune", ["-c", str(profile), "--run_dir", "flag"]) == "flag"
    assert named_run_dir("data", ["--run_dir=flag", "--config", str(profile)]) == "from-file"  # the later wins
    assert named_run_dir("pipeline", []) is None and named_run_dir("baselines", ["--output_dir", "x"]) is None
