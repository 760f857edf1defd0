"""TREC run files (``qid Q0 docid rank score tag``): what trec_eval, ranx, pyserini and pytrec_eval read.

Scores are written with every digit (``repr``): rounding would create ties that trec_eval breaks by
document id, so a rounded file would no longer score like the run it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.io import atomic_open

Run = Mapping[str, Mapping[str, float]]


def write_trec_run(path: str | Path, run: Run, tag: str) -> int:
    """Write ``run`` (query id -> {doc id: score}, each query's documents best first) atomically; return the lines."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"a TREC run tag is one word, got {tag!r}")
    lines = 0
    with atomic_open(path, "w") as handle:
        for qid, hits in run.items():
            ranked = sorted(hits.items(), key=lambda hit: -hit[1])  # stable: the run's order among equal scores
            for rank, (doc_id, score) in enumerate(ranked, start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
                lines += 1
    return lines
