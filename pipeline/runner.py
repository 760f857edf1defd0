"""Run stages in order inside one run directory, skipping those already done for the same configuration.

Why fingerprints: a pipeline run takes hours on a real corpus. A stage is skipped when its
marker records the same fingerprint (the stage's own configuration slice plus the fingerprints
of the stages it reads from) and its outputs still exist; a changed setting therefore reruns
that stage and, through the chained fingerprints, every stage after it, and nothing before.
Settings that do not change results (device count, batch size, progress bars) stay out of the
slice so moving a run to more GPUs does not redo finished work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import interrupt
from core.fingerprint import stable_hash
from core.io import write_json_atomic

log = logging.getLogger(__name__)

MARKER_DIR = ".stages"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    ``settings`` returns the configuration slice whose change must rerun the stage; ``outputs``
    the files (relative to the run directory) whose presence proves it finished; ``depends_on``
    the stages whose outputs it reads.
    """

    name: str
    run: Callable[[], Any]
    settings: Callable[[], Any]
    outputs: Callable[[], Sequence[str]]
    depends_on: Callable[[], Sequence[str]] = field(default=lambda: ())
    collective: bool = False  # every process runs it (Lightning loops); else global rank 0 runs it alone


def fingerprint(settings: Any, upstream: dict[str, str]) -> str:
    """Stable hash of a stage's settings and its upstream fingerprints."""
    return stable_hash({"settings": settings, "upstream": upstream})


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    fingerprint: str


def _marker_path(run_dir: Path, name: str) -> Path:
    return run_dir / MARKER_DIR / f"{name}.json"


def read_marker(run_dir: Path, name: str) -> dict[str, Any] | None:
    path = _marker_path(run_dir, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a marker is written atomically; an unreadable one means "not done"


def is_done(run_dir: Path, stage: Stage, print_: str) -> bool:
    marker = read_marker(run_dir, stage.name)
    if marker is None or marker.get("fingerprint") != print_:
        return False
    return all((run_dir / out).exists() for out in stage.outputs())


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    fingerprint: str
    upstream: dict[str, str]
    action: str  # "run" | "skip"


def plan_stages(stages: Sequence[Stage], run_dir: Path, only: Sequence[str] | None = None,
                force: Sequence[str] = ()) -> list[PlannedStage]:
    """Decide, before anything runs, which stages run and which are skipped.

    Deciding up front matters under DDP: every rank must take the same decisions even though
    rank 0 writes markers while the others are still starting.
    A stage named in ``force`` reruns even when its marker matches. A stage run alone whose
    upstream is neither done nor planned fails with the name of the stage to run first.
    """
    names = [s.name for s in stages]
    unknown = sorted((set(only or ()) | set(force)) - set(names))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {names}")
    prints: dict[str, str] = {}
    ready: set[str] = set()
    planned: list[PlannedStage] = []
    for stage in stages:
        upstream = {dep: prints[dep] for dep in stage.depends_on()}
        print_ = fingerprint(stage.settings(), upstream)
        prints[stage.name] = print_
        done = stage.name not in force and is_done(run_dir, stage, print_)
        if done:
            ready.add(stage.name)
        if only and stage.name not in only:
            continue
        if not done:
            missing = [dep for dep in stage.depends_on() if dep not in ready]
            if missing:
                raise RuntimeError(f"stage '{stage.name}' needs the outputs of stage '{missing[0]}', which are missing "
                                   f"or were made with another configuration: run `train.py {missing[0]}` (or "
                                   "`pipeline`) first")
            ready.add(stage.name)
        planned.append(PlannedStage(stage, print_, upstream, "skip" if done else "run"))
    return planned


def wait_for_marker(run_dir: Path, name: str, print_: str, poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    """Block until global rank 0 has finished stage ``name`` (its marker holds ``print_``)."""
    start = time.monotonic()
    while (read_marker(run_dir, name) or {}).get("fingerprint") != print_:
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"stage '{name}' did not finish on rank 0 within {timeout_s:.0f} s")
        time.sleep(poll_s)


def execute_plan(planned: Sequence[PlannedStage], run_dir: Path, is_global_zero: bool = True) -> list[StageOutcome]:
    """Run the planned stages; only the global-zero process writes markers.

    Under DDP every process executes the same plan: collective stages (Lightning loops) run
    everywhere; the others run on global rank 0 while the rest wait for its marker, so files
    are written once and read by all after they are complete.
    """
    outcomes: list[StageOutcome] = []
    for item in planned:
        stage = item.stage
        interrupt.raise_if_requested(f"before stage '{stage.name}'")  # a signal the stage before finished under
        if item.action == "skip":
            log.info("stage %s: done for this configuration (%s), skipped", stage.name, item.fingerprint)
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0, item.fingerprint))
            continue
        if is_global_zero:
            _marker_path(run_dir, stage.name).unlink(missing_ok=True)
        log.info("stage %s: running (%s)", stage.name, item.fingerprint)
        start = time.perf_counter()
        try:
            if stage.collective or is_global_zero:
                stage.run()
            else:
                wait_for_marker(run_dir, stage.name, item.fingerprint)
        except SystemExit:  # RunInterrupted, or Lightning's SIGTERMException (code None)
            signum = interrupt.requested()
            if signum is None:
                raise
            raise interrupt.RunInterrupted(signum, f"during stage '{stage.name}'") from None
        seconds = time.perf_counter() - start
        if is_global_zero:
            missing = [out for out in stage.outputs() if not (run_dir / out).exists()]
            if missing:
                raise RuntimeError(f"stage '{stage.name}' finished without writing {missing}")
            write_json_atomic(_marker_path(run_dir, stage.name), {
                "stage": stage.name, "fingerprint": item.fingerprint, "upstream": item.upstream,
                "seconds": round(seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "outputs": list(stage.outputs())})
        outcomes.append(StageOutcome(stage.name, "ran", seconds, item.fingerprint))
    return outcomes

