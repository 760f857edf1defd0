"""One run per run directory: an advisory ``flock`` on ``R/.lock``, held for the whole run.

Why: two pipelines on one run directory both resume the same part files, merge each other's halves, delete
each other's parts and both tune; the second must refuse at once, before it reads or writes anything. The
kernel releases a ``flock`` when its holder dies (``SIGKILL`` and power loss of a local disk included), so a
crash never leaves a stale lock to clear by hand. The file keeps the holder's PID and start time for the
refusal message and is never deleted (deleting it would let a third process lock a new file while the
second still waits on the old one).

Under DDP a job holds one lock: global rank 0 takes it and names the job in it; the other ranks do not lock
again (they would refuse their own job) but check that the file names their job: ``SIR_RUN_LOCK``, which
rank 0 exports before Lightning starts the other ranks (they inherit it), or the launcher's job id
(``TORCHELASTIC_RUN_ID`` under torchrun, ``SLURM_JOB_ID`` under srun).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
JOB_ENV = "SIR_RUN_LOCK"
RANK_WAIT_S = 300.0
"""How long a rank other than 0 waits for rank 0 to lock (torchrun starts every rank at once)."""


class RunDirectoryInUse(RuntimeError):
    """Another process (or another job) holds the run directory."""


_held: dict[Path, int] = {}  # run directories this process holds -> nesting depth (a stage inside a stage)


def job_id() -> str | None:
    """The job this process belongs to, as rank 0 or the launcher names it (None: started by neither)."""
    if os.environ.get(JOB_ENV):
        return os.environ[JOB_ENV]
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return os.environ["TORCHELASTIC_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):  # the step too: two pipelines in one allocation are two steps
        return f"{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}"
    return None


def read_holder(run_dir: Path) -> dict[str, Any]:
    """What ``R/.lock`` says about its (last) holder; empty if absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _in_use(run_dir: Path, holder: dict[str, Any]) -> RunDirectoryInUse:
    return RunDirectoryInUse(f"run directory {run_dir} is in use by PID {holder.get('pid', '?')} (started "
                             f"{holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to end, "
                             "or choose another --run_dir")


def check_free(run_dir: str | os.PathLike) -> None:
    """Refuse now if another job holds ``run_dir``: ``train.py`` asks before importing torch (10-20 s on a busy
    machine), so a second run refuses within a second; :func:`run_lock` still takes the lock itself later."""
    run_dir = Path(run_dir)
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file (or not readable): run_lock decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(run_dir)
        if job_id() is None or holder.get("job") != job_id():  # a rank of the holder's own job passes
            raise _in_use(run_dir, holder) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, is_global_zero: bool | None = None) -> Iterator[None]:
    """Hold ``run_dir`` for the block: refuse at once (:class:`RunDirectoryInUse`) if another process holds it.

    ``is_global_zero`` None: as Lightning reads this process's rank from the launcher's environment."""
    run_dir = Path(run_dir)
    if is_global_zero is None:
        from lightning.pytorch.utilities import rank_zero_only  # here: train.py imports this module for its error

        is_global_zero = rank_zero_only.rank == 0
    if not is_global_zero:
        _check_job(run_dir)
        yield
        return
    key = run_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(run_dir, read_holder(run_dir)) from None
    job = job_id() or f"{os.getpid()}-{time.time_ns()}"
    previous_env = os.environ.get(JOB_ENV)
    os.environ[JOB_ENV] = job  # the ranks that Lightning starts inherit it
    holder = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "job": job,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    _held[key] = 1
    failed = True
    try:
        yield
        failed = False
    finally:
        del _held[key]
        if previous_env is None:
            os.environ.pop(JOB_ENV, None)
        if failed and created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()  # a run that failed before writing anything leaves no folder behind
            run_dir.rmdir()
        os.close(fd)  # releases the lock


def _check_job(run_dir: Path) -> None:
    """On a rank other than 0: wait until ``R/.lock`` names this job (rank 0 took it); else refuse."""
    job = job_id()
    if job is None:
        raise RunDirectoryInUse(f"this process is a rank other than 0 but names no job ({JOB_ENV}, "
                                "TORCHELASTIC_RUN_ID or SLURM_JOB_ID): start it through Lightning, torchrun or srun")
    deadline = time.monotonic() + RANK_WAIT_S
    while (holder := read_holder(run_dir)).get("job") != job:
        if time.monotonic() > deadline:
            raise _in_use(run_dir, holder) if holder else RunDirectoryInUse(
                f"rank 0 did not lock run directory {run_dir} within {RANK_WAIT_S:.0f} s")
        time.sleep(0.5)
