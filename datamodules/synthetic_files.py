"""Synthetic files made elsewhere, as records: our JSONL, or BEIR GenQ output (the ``file`` stage-1 source).

Why here and not beside the record format (``retrieval.synthetic``): GenQ's pairs are a BEIR qrels file,
read with the BEIR reader's checks (``datamodules.beir.read_qrels``).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

from core.io import InputError, iter_jsonl, require_field
from datamodules.beir import read_qrels
from retrieval.synthetic import SyntheticRecord, UnknownDocPolicy, check_corpus_ids, read_synthetic

FileFormat = Literal["jsonl", "beir-genq"]


def _genq_qrels_path(queries_path: Path) -> Path:
    """GenQ writes ``<prefix>-queries.jsonl`` beside ``<prefix>-qrels/train.tsv``."""
    name = queries_path.name
    if not name.endswith("-queries.jsonl"):
        raise InputError("cannot find the qrels of a BEIR GenQ file whose name does not end in '-queries.jsonl'",
                         path=queries_path, hint="pass qrels_path explicitly")
    return queries_path.parent / f"{name[: -len('-queries.jsonl')]}-qrels" / "train.tsv"


def read_beir_gen_queries(queries_path: Path, qrels_path: Path | None = None,
                          corpus_ids: Collection[str] | None = None, on_unknown_doc: UnknownDocPolicy = "fail",
                          model: str = "beir-genq") -> list[SyntheticRecord]:
    """Import BEIR GenQ output (``QueryGenerator.save``) as stage-1 ``question`` records.

    GenQ writes ``<prefix>-queries.jsonl`` (``{"_id": "genQ1", "text": ..., "metadata": {}}``) and
    ``<prefix>-qrels/train.tsv`` (``query-id``, ``corpus-id``, ``score``; one row per query). Each
    positive qrels row becomes one record; a document's questions are numbered in qrels order.
    """
    queries_path = Path(queries_path)
    qrels_path = Path(qrels_path) if qrels_path is not None else _genq_qrels_path(queries_path)
    queries: dict[str, str] = {}
    for line, obj in iter_jsonl(queries_path):
        query_id = require_field(obj, "_id", queries_path, line)
        queries[query_id] = require_field(obj, "text", queries_path, line, allow_empty=True).strip()
    if not qrels_path.is_file():
        raise InputError("file not found", path=qrels_path,
                         hint="BEIR GenQ writes <prefix>-qrels/train.tsv beside <prefix>-queries.jsonl; "
                              "pass qrels_path if it lives elsewhere")
    records: list[SyntheticRecord] = []
    next_sample: dict[str, int] = {}
    for judgement in read_qrels(qrels_path):
        if judgement.score <= 0:  # a zero score marks a non-relevant pair in BEIR qrels
            continue
        if judgement.query_id not in queries:
            raise InputError(f"query '{judgement.query_id}' is not in {queries_path}", path=qrels_path,
                             line=judgement.line, field="query-id",
                             hint="do the qrels and queries files come from different GenQ runs?")
        doc_id = judgement.doc_id
        sample_idx = next_sample.get(doc_id, 0)
        next_sample[doc_id] = sample_idx + 1
        records.append(SyntheticRecord(doc_id, "question", queries[judgement.query_id], sample_idx, 1, model))
    if not records:
        raise InputError("no positive (query, document) pairs", path=qrels_path,
                         hint="is this the qrels folder GenQ wrote?")
    return check_corpus_ids(records, corpus_ids, queries_path, on_unknown_doc)


def load_file_source(path: Path, format: FileFormat = "jsonl", corpus_ids: Collection[str] | None = None,
                     on_unknown_doc: UnknownDocPolicy = "fail") -> list[SyntheticRecord]:
    """The `file` stage-1 source: synthetic texts made elsewhere, in our JSONL or BEIR GenQ form."""
    if format == "jsonl":
        return read_synthetic(path, corpus_ids, on_unknown_doc)
    if format == "beir-genq":
        return read_beir_gen_queries(path, corpus_ids=corpus_ids, on_unknown_doc=on_unknown_doc)
    raise ValueError(f"unknown synthetic file format '{format}'; expected 'jsonl' or 'beir-genq'")
