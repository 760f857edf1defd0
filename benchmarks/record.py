"""What every benchmark JSON states besides its figures: the anchor it is measured against, the command, the
machine's load while it ran, and the process CPU time of each timed call.

Why: a ratio means nothing without the tool it is a ratio to (``anchor``: package, version, what exactly was
called), and a wall time on a shared machine means little without the load average beside it.
"""

from __future__ import annotations

import importlib
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ENV_RECORDED = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")  # they change the timings, so the command names them
REPO = Path(__file__).resolve().parents[1]
BEIR_VERSION = "2.2.0"
"""The BEIR release every anchor is measured against (``QueryGenerator``, ``DenseRetrievalExactSearch``)."""


def default_data() -> Path:
    """SciFact from ``../shared/data/scifact`` when present, else the committed demo slice (240 documents)."""
    shared = REPO.parent / "shared" / "data" / "scifact"
    return shared if (shared / "corpus.jsonl").is_file() else REPO / "data" / "scifact-demo"


def package_version(package: str) -> str:
    """The installed distribution's version (``importlib.metadata``), else the module's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        module = sys.modules.get(package.replace("-", "_"))
        return str(getattr(module, "__version__", "unknown"))


def anchor(package: str, what: str, version: str | None = None) -> dict[str, str]:
    """The external tool a ratio is measured against: ``{"package", "version", "what"}``."""
    return {"package": package, "version": version or package_version(package), "what": what}


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``ENV=... python -m module args`` as it was run (the environment variables that change timings first)."""
    given = sys.argv[1:] if argv is None else list(argv)
    return " ".join([*(f"{name}={os.environ[name]}" for name in ENV_RECORDED if name in os.environ),
                     f"python -m {module}", shlex.join(given)]).strip()


def load_average() -> float:
    """The 1-minute load average (what ``uptime`` prints first)."""
    return round(os.getloadavg()[0], 2)


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_call(run: Callable[[], T], sync: Callable[[], None] = lambda: None) -> tuple[T, dict[str, float]]:
    """``run()``'s result and ``{"seconds", "cpu_seconds", "load_before", "load_after"}``; ``sync`` waits for a GPU."""
    load_before = load_average()
    sync()
    start, cpu = time.perf_counter(), process_cpu_seconds()
    result = run()
    sync()
    timing = {"seconds": round(time.perf_counter() - start, 3), "cpu_seconds": round(process_cpu_seconds() - cpu, 3),
              "load_before": load_before, "load_after": load_average()}
    return result, timing


def median_summary(calls: list[dict[str, float]]) -> dict[str, Any]:
    """Median wall and CPU seconds of a side's timed calls, every call kept, the load averages seen."""
    import statistics

    return {"seconds": round(statistics.median(c["seconds"] for c in calls), 3),
            "cpu_seconds": round(statistics.median(c["cpu_seconds"] for c in calls), 3),
            "seconds_each": [c["seconds"] for c in calls],
            "load_average_1m": [c["load_before"] for c in calls] + [calls[-1]["load_after"]]}


def ensure_beir(target: Path | None = None, module: str = "beir.generation") -> dict[str, Any]:
    """Import ``module`` of BEIR, installing the pinned ``beir`` wheel (no dependencies) into ``target`` if needed.

    ``--no-deps``: the parts measured need only torch, transformers, tqdm (and ``datasets`` for the search
    package's ``__init__``), all already here. A wheel in ``.whl/`` is used when present (machines without
    network: ``pip download --no-deps beir==2.2.0 -d .whl`` elsewhere, then carry ``.whl``), else PyPI.
    """
    import tempfile

    target = target or Path(tempfile.gettempdir()) / f"beir-{BEIR_VERSION}"
    start = time.perf_counter()
    how = f"already importable (or installed earlier in {target})"
    sys.path.insert(0, str(target))
    try:
        importlib.import_module(module)
    except ImportError:
        wheels = sorted((REPO / ".whl").glob("beir-*.whl"))
        source = ["--no-index", str(wheels[-1])] if wheels else [f"beir=={BEIR_VERSION}"]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--no-deps", "--no-compile",
                        "--target", str(target), *source], check=True)
        importlib.invalidate_caches()
        importlib.import_module(module)
        how = f"pip install --no-deps --target {target} {source[-1]}"
    found = package_version("beir")
    if found != BEIR_VERSION:
        raise RuntimeError(f"beir {found} is importable but the anchor is pinned to {BEIR_VERSION}; remove it from "
                           f"the path or install {BEIR_VERSION}")
    return {"version": found, "how": how, "seconds": round(time.perf_counter() - start, 1)}
