"""Stopping a run on SIGTERM or SIGINT at a safe point, and the test hook that sends a signal at a chosen point.

Why: SIGTERM is what ``timeout``, SLURM and Kubernetes send and SIGINT is Ctrl-C; a run must then stop with a
non-zero exit code (128 + the signal: 143, 130) and start no later stage. Inside a Lightning loop the signal is
only recorded, and ``callbacks.stop_on_signal`` stops the loop once the batch in flight has been written (part
files are atomic, so the rerun resumes from them); anywhere else the handler raises at once (every stage writes
its files atomically, so nothing half-written is trusted later). A second signal always raises at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(SystemExit):
    """A run stopped by a signal; as a ``SystemExit`` its code (128 + signal number) becomes the exit status."""

    def __init__(self, signum: int, where: str = "") -> None:
        super().__init__(128 + signum)
        self.signum, self.where = signum, where

    def __str__(self) -> str:
        where = f" {self.where}" if self.where else ""
        return (f"interrupted by {signal.Signals(self.signum).name}{where}; finished work is kept: rerun the same "
                "command to resume")


class _State:
    requested: int | None = None  # the first signal received while the handlers were installed
    installed: int = 0  # nesting depth of stop_on_signals (a stage command inside a command)
    deferring: set[int] = set()  # ids of the loop callbacks (StopOnSignal) now running


_state = _State()


def requested() -> int | None:
    """The signal that asked this run to stop, or None."""
    return _state.requested


def raise_if_requested(where: str = "") -> None:
    if _state.requested is not None:
        raise RunInterrupted(_state.requested, where)


def defer(owner: object, on: bool) -> None:
    """While some ``owner`` (a running loop's callback) defers, a first signal is only recorded: the owner stops
    the loop at its next safe point (``raise_if_requested``)."""
    (_state.deferring.add if on else _state.deferring.discard)(id(owner))


def _handle(signum: int, frame: FrameType | None) -> None:
    first = _state.requested is None
    if first:
        _state.requested = signum
    if first and _state.deferring:
        log.warning("received %s: stopping once the batch in flight is written", signal.Signals(signum).name)
        return
    raise RunInterrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Handle SIGTERM and SIGINT as above inside the block (main thread only; the outermost block installs and
    restores the handlers). A ``SystemExit`` after a signal leaves as :class:`RunInterrupted`: Lightning's own
    ``SIGTERMException`` has code None, which exited 0."""
    if _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    _state.requested, _state.installed = None, 1
    try:
        yield
    except SystemExit as exit_:
        if _state.requested is None or isinstance(exit_, RunInterrupted):
            raise
        raise RunInterrupted(_state.requested) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.requested, _state.installed = None, 0


HOOK_ENV = "SIR_SIGNAL_AT"
"""Test hook, ``point:n:SIGNAME``: this process sends itself SIGNAME the n-th time it reaches ``point``. Points:
``batch`` (a predicted batch, before it is written), ``part-tmp`` (its part file written, not yet renamed into
place), ``part`` (the part file in place), each also as ``point@<output file name>`` (``part@stage2.jsonl``), and
``train-batch`` (a training batch done). Tests interrupt a run where they choose, instead of after a delay,
which passes or fails with the machine's load."""
_hits: Counter[str] = Counter()


def signal_point(point: str, detail: str = "") -> None:
    """Where ``HOOK_ENV`` may interrupt this process (a no-op unless the variable names ``point``, or
    ``point@detail``)."""
    spec = os.environ.get(HOOK_ENV)
    if not spec:
        return
    name, count, signame = spec.rsplit(":", 2)
    if name not in (point, f"{point}@{detail}"):
        return
    _hits[name] += 1
    if _hits[name] == int(count):
        os.kill(os.getpid(), signal.Signals[signame])
