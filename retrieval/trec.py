"""TREC run files (``qid Q0 docid rank score tag``): what trec_eval, pytrec_eval, ranx and pyserini exchange.

Why one writer: the evaluate stage exports every row of the results table and the ``search`` command
writes its results; both must produce files that another tool scores exactly as this project does.
Three choices make that hold:

* lines are in trec_eval's own order (score descending, equal scores by document id *descending*, as
  ``strcmp(docno2, docno1)``), so the ``rank`` column is the rank trec_eval evaluates, and a cut at
  ``depth`` keeps exactly the documents trec_eval would have ranked first;
* scores are written as ``repr(float)``, which reads back to the same number: rounding them (``%.4f``)
  would create ties that reorder documents and change the metrics;
* ids and the tag are checked for whitespace (the format's separator), so a file always parses back.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from core.io import InputError, atomic_open

Run = Mapping[str, Mapping[str, float]]
_WHITESPACE = re.compile(r"\s")


def trec_order(hits: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(doc id, score)`` pairs in the order trec_eval ranks them: score descending, then doc id descending."""
    return sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)


def _check_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or _WHITESPACE.search(value):
        raise ValueError(f"{what} {value!r} cannot be written to a TREC run: ids and tags must be non-empty "
                         f"and hold no whitespace (the format's separator)")
    return value


def trec_lines(run: Run, tag: str, depth: int | None = None, drop_identical_ids: bool = False) -> Iterable[str]:
    """The run's lines, queries in the run's order, each cut at ``depth`` documents (None: all).

    ``drop_identical_ids``: leave out a document whose id equals its query's (BEIR's rule), so the file
    holds what was scored.
    """
    _check_token(tag, "tag")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1 or None, got {depth}")
    for qid, hits in run.items():
        _check_token(qid, "query id")
        ranked = [(doc, score) for doc, score in trec_order(hits) if not (drop_identical_ids and doc == qid)]
        for rank, (doc, score) in enumerate(ranked[:depth], start=1):
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"query {qid!r}, document {doc!r}: score {score} is not finite")
            yield f"{qid} Q0 {_check_token(doc, 'document id')} {rank} {score!r} {tag}\n"


def write_trec_run(path: str | os.PathLike, run: Run, tag: str, depth: int | None = None,
                   drop_identical_ids: bool = False) -> int:
    """Write ``run`` (query id -> {doc id: score}) as a TREC run file, atomically; return the lines written.

    ``tag`` names the system (the last column); ``depth`` and ``drop_identical_ids`` as in :func:`trec_lines`.
    """
    count = 0
    with atomic_open(path) as handle:
        for line in trec_lines(run, tag, depth, drop_identical_ids):
            handle.write(line)
            count += 1
    return count


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A TREC run file back as query id -> {doc id: score}; a malformed line names its file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, hint="a TREC run: lines 'qid Q0 docid rank score tag'")
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise InputError(f"expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}",
                                 path=path, line=number)
            qid, _, doc, _, score, _ = fields
            try:
                value = float(score)
            except ValueError:
                raise InputError(f"score {score!r} is not a number", path=path, line=number, field="score") from None
            hits = run.setdefault(qid, {})
            if doc in hits:
                raise InputError(f"document {doc!r} listed twice for query {qid!r}", path=path, line=number,
                                 field="docid")
            hits[doc] = value
    return run
