"""Seeded downsampling of a BEIR split, and the ``data:`` configuration section (``train.py downsample``: pipeline.downsample).

The paper downsampled SCIDOCS and GermanQuAD: keep some test queries, every document they
judge, and random others up to a corpus size. Why a keyed hash instead of a random generator:
each id is ranked by ``blake2b(seed, stream, id)`` and the lowest ranks are kept, so the choice
depends on nothing but the seed and the ids: not on library versions, platform, or file order.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from dataclasses import dataclass
from pathlib import Path

from core.io import InputError, decode_utf8_line, write_text_atomic
from datamodules.beir import EXAMPLES_SHOWN, BeirDataset, EmptyDocuments, UnknownIds, load_beir

log = logging.getLogger(__name__)

KEPT_QUERIES_FILE = Path("data") / "kept-queries.txt"
KEPT_DOCS_FILE = Path("data") / "kept-docs.txt"


@dataclass
class DownsampleConfig:
    """How to cut a split down.

    Args:
        n_queries: judged queries to keep, chosen by seeded hash (all that qualify if None).
        corpus_size: documents to keep: every document the kept queries judge plus seeded others
            (the whole corpus, after ``restrict_to``, if None).
        seed: the same seed over the same ids gives the same slice.
        restrict_to: file of document ids, one a line: the corpus is cut to these first, and a
            query is kept only if all the documents it judges survive.
    """

    n_queries: int | None = None
    corpus_size: int | None = None
    seed: int = 0
    restrict_to: Path | None = None


@dataclass
class DataConfig:
    """The ``data:`` section of every pipeline profile.

    Args:
        path: BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
        split: qrels split to evaluate on.
        unknown_ids: what a judgement naming an absent query or document does: drop it with a
            warning ("warn": scores then differ from BEIR's and pytrec_eval's), keep it and score it as
            BEIR does ("keep": a judged document missing from the corpus is relevant and never retrieved),
            or stop ("fail").
        downsample: optional seeded downsampling applied after loading.
        cache_dir: the ``datasets`` cache (default: ``HF_DATASETS_CACHE``).
        empty_documents: a document whose title and text are both empty: "keep" it as BEIR does (every
            stage then sees an empty text), "drop" it, or stop ("error"); kept or dropped with a warning.
    """

    path: Path
    split: str = "test"
    unknown_ids: UnknownIds = "warn"
    downsample: DownsampleConfig | None = None
    cache_dir: Path | None = None
    empty_documents: EmptyDocuments = "keep"


def _hash_rank(seed: int, stream: str, item_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{stream}\0{item_id}".encode("utf-8"), digest_size=8).digest()


def seeded_choice(ids: list[str], n: int, seed: int, stream: str) -> set[str]:
    """The ``n`` ids of lowest keyed hash; ``stream`` keeps query and document choices independent."""
    return set(heapq.nsmallest(n, ids, key=lambda item_id: _hash_rank(seed, stream, item_id)))


def read_id_list(path: Path) -> dict[str, int]:
    """Ids of a one-id-a-line file, mapped to the line each first appears on; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, hint="restrict_to names a file of document ids, one a line")
    ids: dict[str, int] = {}
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            item_id = decode_utf8_line(raw, path, line).strip()
            if item_id:
                ids.setdefault(item_id, line)
    if not ids:
        raise InputError("no ids: the file is empty", path=path)
    return ids


def _restrict(dataset: BeirDataset, path: Path) -> tuple[dict, dict]:
    allowed = read_id_list(path)
    unknown = [(doc_id, line) for doc_id, line in allowed.items() if doc_id not in dataset.corpus]
    if unknown:
        examples = ", ".join(f"'{doc_id}' on line {line}" for doc_id, line in unknown[:EXAMPLES_SHOWN])
        raise InputError(f"{len(unknown)} id(s) are not in the corpus of {dataset.root} (e.g. {examples})", path=path,
                         hint="the list must name documents of the dataset being restricted")
    corpus = {doc_id: doc for doc_id, doc in dataset.corpus.items() if doc_id in allowed}
    # a judged document outside the whole corpus (unknown_ids: keep) cannot survive the cut and does not count
    qrels = {qid: docs for qid, docs in dataset.qrels.items()
             if all(doc_id in corpus or doc_id not in dataset.corpus for doc_id in docs)}
    if not qrels and dataset.qrels:
        raise InputError(f"no query of split '{dataset.split}' has all its judged documents in this list", path=path)
    log.info("restricted to %d documents of %s; %d of %d queries have all judged documents in it",
             len(corpus), path, len(qrels), len(dataset.qrels))
    return corpus, qrels


def downsample(dataset: BeirDataset, config: DownsampleConfig) -> BeirDataset:
    """A smaller copy of ``dataset``: restricted, then seeded queries, their judged documents and others.

    Pure and deterministic: the same dataset and config give the same ids, in the dataset's order.
    """
    corpus, qrels = dataset.corpus, dataset.qrels
    if config.restrict_to is not None:
        corpus, qrels = _restrict(dataset, config.restrict_to)
    if config.n_queries is not None:
        if not 1 <= config.n_queries <= len(qrels):
            raise InputError(f"asked for {config.n_queries} queries but {len(qrels)} judged queries qualify",
                             field="n_queries", hint="choose a number between 1 and the number that qualify")
        kept = seeded_choice(list(qrels), config.n_queries, config.seed, "queries")
        qrels = {qid: docs for qid, docs in qrels.items() if qid in kept}
    if config.corpus_size is not None:
        judged = {doc_id for docs in qrels.values() for doc_id in docs if doc_id in corpus}
        if not len(judged) <= config.corpus_size <= len(corpus):
            raise InputError(f"corpus_size {config.corpus_size} must lie between the {len(judged)} documents the "
                             f"kept queries judge and the {len(corpus)} available", field="corpus_size")
        others = [doc_id for doc_id in corpus if doc_id not in judged]
        kept_docs = judged | seeded_choice(others, config.corpus_size - len(judged), config.seed, "documents")
        corpus = {doc_id: doc for doc_id, doc in corpus.items() if doc_id in kept_docs}
    return BeirDataset(root=dataset.root, split=dataset.split, corpus=dict(corpus),
                       queries={qid: text for qid, text in dataset.queries.items() if qid in qrels},
                       qrels={qid: dict(docs) for qid, docs in qrels.items()})


def record_kept_ids(dataset: BeirDataset, run_dir: Path) -> None:
    """Write the ids a run used to ``run_dir/data/``, so a result can be traced to its exact slice."""
    write_text_atomic(Path(run_dir) / KEPT_QUERIES_FILE, "".join(f"{qid}\n" for qid in dataset.queries))
    write_text_atomic(Path(run_dir) / KEPT_DOCS_FILE, "".join(f"{doc_id}\n" for doc_id in dataset.corpus))


def load_dataset_from_config(config: DataConfig, run_dir: Path | None = None) -> BeirDataset:
    """Load, restrict and downsample as configured; record the kept ids only once all of it succeeded."""
    dataset = load_beir(config.path, config.split, config.unknown_ids, config.cache_dir, config.empty_documents)
    if config.downsample is not None:
        dataset = downsample(dataset, config.downsample)
    if run_dir is not None:
        record_kept_ids(dataset, run_dir)
    return dataset
