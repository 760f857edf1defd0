"""``python train.py downsample``: write a seeded slice of a BEIR folder (and of a synthetic file made for it)."""

from __future__ import annotations

import logging
from pathlib import Path

from core.io import InputError, iter_jsonl, require_field, write_jsonl_atomic
from datamodules.beir import QRELS_DIR, load_beir, write_beir
from datamodules.downsample import DownsampleConfig, downsample

log = logging.getLogger(__name__)


def _filter_synthetic(path: Path, doc_ids: set[str], out_path: Path) -> tuple[int, int]:
    """Copy the synthetic records of kept documents; return (records written, documents covered)."""
    kept, covered = [], set()
    for line, record in iter_jsonl(path):
        doc_id = require_field(record, "doc_id", path, line)
        if doc_id in doc_ids:
            kept.append(record)
            covered.add(doc_id)
    return write_jsonl_atomic(out_path, kept), len(covered)


def downsample_command(source: Path, output: Path, split: str = "test", n_queries: int | None = None,
                       corpus_size: int | None = None, seed: int = 0, restrict_to: Path | None = None,
                       synthetic: Path | None = None) -> None:
    """Write a smaller BEIR folder: seeded queries, every document they judge, seeded others.

    Args:
        source: BEIR folder to read (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
        output: folder to write the slice to (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); not ``source``.
        split: qrels split whose queries are sampled; the only split written.
        n_queries: judged queries to keep (all that qualify if omitted).
        corpus_size: documents to keep: every judged one plus seeded others (all if omitted).
        seed: the same seed gives the same slice.
        restrict_to: file of document ids, one a line: the corpus is cut to these first, and a query is
            kept only if all its judged documents are among them.
        synthetic: JSONL of synthetic records (doc_id, task, text, sample_idx, stage, model); the records of
            kept documents go to output/synthetic/<same file name>.
    """
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise InputError("output is the source folder; choose another folder", path=output)
    config = DownsampleConfig(n_queries=n_queries, corpus_size=corpus_size, seed=seed, restrict_to=restrict_to)
    dataset = downsample(load_beir(source, split), config)
    stale = [p.name for p in (output / QRELS_DIR).glob("*.tsv") if p.stem != split]
    if stale:
        log.warning("%s holds other qrels (%s) that may name documents this slice drops", output / QRELS_DIR,
                    ", ".join(stale))
    write_beir(dataset, output)
    summary = (f"wrote {output}: {len(dataset.corpus)} documents, {len(dataset.queries)} queries, "
               f"{dataset.num_judgements} judgements in qrels/{split}.tsv")
    if synthetic is not None:
        synthetic = Path(synthetic)
        records, covered = _filter_synthetic(synthetic, set(dataset.corpus), output / "synthetic" / synthetic.name)
        summary += f"; {records} synthetic records for {covered} documents in synthetic/{synthetic.name}"
    print(summary)
