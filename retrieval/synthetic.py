"""Synthetic queries as records: the JSONL format every stage reads and writes, validated on read.

Why validated on read: a synthetic file may come from our own generation stage, from another
tool, or from BEIR's GenQ. A wrong task name, a missing id or a file made for another corpus
would otherwise pass silently into the filter and the self-instruct set; here each problem is
reported with its file, line and field.

Empty ``text`` is accepted on purpose: a generator that wrote nothing for a document is a fact
the filter's ``empty`` rule counts in its report, not a reason to abort a run of hours.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from core.io import InputError, iter_jsonl, require_field, write_jsonl_atomic
from core.record_key import RecordKey
from core.tasks import TASKS

log = logging.getLogger(__name__)

UnknownDocPolicy = Literal["fail", "warn"]


@dataclass(frozen=True)
class SyntheticRecord:
    """One generated text for one document: a question or a keyword list (docs/architecture.md contract)."""

    doc_id: str
    task: str
    text: str
    sample_idx: int = 0
    stage: int = 1
    model: str = ""

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.doc_id, self.task, self.sample_idx)

    def to_json(self) -> dict:
        return asdict(self)


def write_synthetic(path: Path, records: Iterable[SyntheticRecord]) -> int:
    """Write records in the contract's JSONL form, atomically; return how many were written."""
    return write_jsonl_atomic(path, (record.to_json() for record in records))


def _optional_int(obj: dict, field: str, default: int | None, path: Path, line: int) -> int | None:
    value = obj.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"expected a non-negative integer, got {value!r}", path=path, line=line, field=field)
    return value


def _parse_record(obj: dict, path: Path, line: int, next_sample: dict[tuple[str, str], int]) -> SyntheticRecord:
    doc_id = require_field(obj, "doc_id", path, line)
    task = require_field(obj, "task", path, line)
    if task not in TASKS:
        raise InputError(f"unknown task '{task}'", path=path, line=line, field="task",
                         hint=f"expected one of {', '.join(TASKS)}")
    text = require_field(obj, "text", path, line, allow_empty=True)
    sample_idx = _optional_int(obj, "sample_idx", None, path, line)
    if sample_idx is None:  # files made elsewhere may omit it: number a document's texts in file order
        sample_idx = next_sample.get((doc_id, task), 0)
    next_sample[(doc_id, task)] = max(next_sample.get((doc_id, task), 0), sample_idx + 1)
    stage = _optional_int(obj, "stage", 1, path, line)
    model = obj.get("model") or ""
    if not isinstance(model, str):
        raise InputError(f"expected str, got {type(model).__name__}", path=path, line=line, field="model")
    return SyntheticRecord(doc_id, task, text.strip(), sample_idx, stage, model)


def check_corpus_ids(records: list[SyntheticRecord], corpus_ids: Collection[str] | None, path: Path,
                     on_unknown_doc: UnknownDocPolicy) -> list[SyntheticRecord]:
    """Drop (``warn``) or refuse (``fail``) records whose document is not in the corpus."""
    if corpus_ids is None:
        return records
    unknown = [r for r in records if r.doc_id not in corpus_ids]
    if not unknown:
        return records
    examples = ", ".join(sorted({r.doc_id for r in unknown})[:5])
    message = (f"{len(unknown)} of {len(records)} records name documents that are not in the corpus "
               f"(e.g. {examples})")
    if on_unknown_doc == "fail":
        raise InputError(message, path=path, field="doc_id",
                         hint="was the file made for another corpus or a downsampled subset? set "
                              "on_unknown_doc='warn' to drop these records and go on")
    log.warning("%s: %s; they are dropped", path, message)
    return [r for r in records if r.doc_id in corpus_ids]


def read_synthetic(path: Path, corpus_ids: Collection[str] | None = None,
                   on_unknown_doc: UnknownDocPolicy = "fail") -> list[SyntheticRecord]:
    """Read a synthetic JSONL file in our format, validating every line.

    ``sample_idx``, ``stage`` and ``model`` are optional (files made elsewhere may lack them);
    a missing ``sample_idx`` numbers a document's texts of one task in file order. The same
    ``(doc_id, task, sample_idx)`` twice is an error naming both lines (usually a part file merged
    twice). ``corpus_ids`` checks every ``doc_id`` against the corpus.
    """
    path = Path(path)
    records: list[SyntheticRecord] = []
    seen: dict[RecordKey, int] = {}
    next_sample: dict[tuple[str, str], int] = {}
    for line, obj in iter_jsonl(path):
        record = _parse_record(obj, path, line, next_sample)
        key = record.key
        if key in seen:
            raise InputError(f"document '{record.doc_id}', task '{record.task}', sample {record.sample_idx} "
                             f"already appeared on line {seen[key]}", path=path, line=line, field="sample_idx",
                             hint="each (doc_id, task, sample_idx) must be unique; was a part file merged twice?")
        seen[key] = line
        records.append(record)
    return check_corpus_ids(records, corpus_ids, path, on_unknown_doc)


def expansion_texts(documents: Iterable[tuple[str, str]], records: Iterable[SyntheticRecord]) -> list[tuple[str, str]]:
    """docTTTTTquery-style expansion: each ``(doc_id, text)`` with its synthetic questions appended."""
    questions: dict[str, list[str]] = {}
    for record in records:
        if record.task == "question":
            questions.setdefault(record.doc_id, []).append(record.text)
    return [(doc_id, " ".join([text, *questions.get(doc_id, [])])) for doc_id, text in documents]
