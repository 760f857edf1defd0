"""Every row of the results table as a TREC run file, ``<run_dir>/runs/<system>.trec``.

Why: a table row is a claim; its run file lets trec_eval, pytrec_eval, ranx or pyserini check it, or compare
it with a run made elsewhere, without this project's code. The files are those the metrics were computed
from: the same documents and scores, cut at ``evaluate.run_depth`` in trec_eval's order, with BEIR's
identical-id rule applied when the metrics apply it.

The evaluate stage rewrites the whole table, so the folder is rebuilt beside the old one and swapped in at
the end: a crash leaves the previous complete set, and a row that is no longer in the table leaves no file.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from pipeline.layout import RUNS_DIR, run_file
from retrieval.trec import write_trec_run


class RunExport:
    """Writes each row's run as it is scored (the runs are never all held at once), then swaps the folder in."""

    def __init__(self, run_dir: Path, depth: int, drop_identical_ids: bool) -> None:
        self.run_dir, self.depth, self.drop_identical_ids = Path(run_dir), depth, drop_identical_ids
        self.staging = self.run_dir / f".{RUNS_DIR}.partial"
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a crashed evaluation
        self.written: list[str] = []

    def __call__(self, system: str, run: Mapping[str, Mapping[str, float]]) -> None:
        name = Path(run_file(system)).name
        write_trec_run(self.staging / name, run, tag=system, depth=self.depth,
                       drop_identical_ids=self.drop_identical_ids)
        self.written.append(system)

    def finish(self) -> Path:
        """Replace ``runs/`` by the files written; return the folder."""
        target = self.run_dir / RUNS_DIR
        self.staging.mkdir(parents=True, exist_ok=True)  # a table without rows: an empty folder, not an old one
        shutil.rmtree(target, ignore_errors=True)
        self.staging.rename(target)
        return target
