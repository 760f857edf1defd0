"""Record the README's demo as committed evidence: its table, timings and filter reports, and the machine's load.

    nice -n 19 python -m benchmarks.record_demo          # from the repository root; ~4-10 min on 2 cores

Why: ``runs/`` is ignored, so the README's demo table and wall time had no artifact behind them (issue 13).
This runs the README's first command (``python3 train.py pipeline -c configs/profiles/demo.yaml``) in a fresh
run directory, then once more (every stage skipped), and copies what the README cites into
``benchmarks/results/demo/``: ``results.md``/``results.json``/``per_query.json``, ``timings.json`` (the stage
times of the first call), ``filter_report.json``/``filter2_report.json``, the printed tables
(``console.md``) and ``record.json`` (command, commit, machine, wall times, load averages before and after).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.record import REPO, load_average
from core.io import write_json_atomic, write_text_atomic
from pipeline import layout

PROFILE = "configs/profiles/demo.yaml"
COPIED = {layout.RESULTS_MD: "results.md", layout.RESULTS_JSON: "results.json", "per_query.json": "per_query.json",
          layout.TIMINGS: "timings.json", layout.FILTER_REPORT: "filter_report.json",
          layout.STAGE2_FILTER_REPORT: "filter2_report.json"}


def machine() -> dict[str, Any]:
    """CPU model, cores and memory: what a wall time depends on besides the load."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").is_file() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(memory) / 2**20, 1) if memory else None,
            "python": platform.python_version()}


def timed_pipeline(command: list[str]) -> dict[str, Any]:
    """Run ``command``; its printed tables (progress bars left out), wall seconds and the load around it."""
    load_before, start = load_average(), time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds, load_after = round(time.perf_counter() - start, 1), load_average()
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the demo failed with exit code {done.returncode}: {' '.join(command)}")
    tables = [line for line in done.stdout.splitlines() if line.startswith(("|", "Results on"))]
    return {"seconds": seconds, "load_average_1m": [load_before, load_after], "tables": tables}


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, default=Path("runs/demo-record"),
                        help="a fresh run directory (removed first)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/demo"))
    args = parser.parse_args(argv)
    run_dir = REPO / args.run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "train.py", "pipeline", "-c", PROFILE, "--run_dir", str(args.run_dir)]
    commit = git_commit()  # before the run: what ran, whatever is edited meanwhile
    print(f"running the demo into {args.run_dir} (progress is not shown; a few minutes) ...", flush=True)
    first = timed_pipeline(command)
    print(f"first call: {first['seconds']} s; the second call (every stage skipped) ...", flush=True)
    second = timed_pipeline(command)
    output = REPO / args.output
    output.mkdir(parents=True, exist_ok=True)
    for source, name in COPIED.items():
        if (run_dir / source).is_file():
            shutil.copyfile(run_dir / source, output / name)
        else:
            (output / name).unlink(missing_ok=True)
    shown = "python3 train.py pipeline -c " + PROFILE + f" --run_dir {args.run_dir}"
    write_text_atomic(output / "console.md", f"# Console tables of the first call\n\n`{shown}`\n\n"
                      + "\n".join(first.pop("tables")) + "\n")
    second.pop("tables")
    record = {"name": "demo", "command": "python -m benchmarks.record_demo " + " ".join(argv or sys.argv[1:]),
              "demo_command": shown, "commit": commit, "machine": machine(),
              "first_call": first, "second_call": second,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(output / "record.json", record)
    print(f"first call {first['seconds']} s (load {first['load_average_1m']}), second call {second['seconds']} s; "
          f"written to {args.output}")
    return record


if __name__ == "__main__":
    main()
