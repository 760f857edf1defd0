"""Index benchmark: the index loop's build rate and the written index's search latency and throughput.

    python -m benchmarks.bench_index                    # 100,000 documents x 384, multi level, exact + FAISS
    python -m benchmarks.bench_index --n-docs 2000      # a quick check

Inputs are synthetic, in the embed stage's files (``vectors/documents``, ``synthetic-stage2``, ``sentences``):
normalised Gaussian documents, ``--synthetic-per-doc`` outputs and ``--sentences-per-doc`` sentences per document,
each a noisy copy of its document. What is timed:

* **build**: the index stage's loop as ``pipeline.index.build_index`` runs it (``IndexInputsDataModule`` ->
  ``IndexModule`` -> ``IndexWriter``: ``Trainer.predict``, rank-part merge, ids, offsets, manifest), in
  documents/s; beside it, ``rao_blackwell_level`` over the whole corpus in memory (what the evaluator computes:
  the loop's overhead), and each FAISS index's build (``retrieval.index_files.build_faiss``);
* **search** of the written index (``retrieval.index_files.search_index``, what ``train.py search`` calls):
  single queries one at a time (p50/p99 latency) and batches (queries/s), exact and with ``index.faiss``
  (flat, IVF, HNSW), each with its peak RSS growth and how often each query's source document (the one it
  is a noisy copy of) ranks first and in the top 10; beyond that document the scores are noise, so agreement
  with the exact ranking is compared at rank 1 only.

Anchor (``ratio``): FAISS's own exact search, ``faiss.IndexFlatIP(d).search(queries, k)`` over the same unit
vectors in memory, against ours (exact ``search_index``, which also takes each document's best unit and reads the
vectors from the mapped file). Writes ``benchmarks/results/index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_search import PeakRSS, machine
from benchmarks.record import anchor, command_line, load_average, package_version
from core.io import write_json_atomic
from core.record_key import RecordKey
from retrieval.index_files import build_faiss, load_index, search_index, write_index_files
from retrieval.rao_blackwell import RaoBlackwellConfig, rao_blackwell_level
from retrieval.search import SearchConfig
from retrieval.vectors import save_vectors

TASKS = ("question", "keywords")


def _noisy(base: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(base + scale * torch.randn(base.shape, generator=generator), dim=1)


def write_inputs(folder: Path, n_docs: int, dim: int, synthetic_per_doc: int, sentences_per_doc: int,
                 seed: int) -> dict[str, Path]:
    """The embed stage's three files for a synthetic corpus; returns their paths."""
    g = torch.Generator().manual_seed(seed)
    docs = torch.nn.functional.normalize(torch.randn(n_docs, dim, generator=g), dim=1)
    doc_ids = [f"d{i}" for i in range(n_docs)]
    paths = {"documents": folder / "documents.safetensors", "synthetic": folder / "synthetic-stage2.safetensors",
             "sentences": folder / "sentences.safetensors"}
    save_vectors(paths["documents"], doc_ids, docs)
    owner = torch.arange(n_docs).repeat_interleave(synthetic_per_doc)
    keys = [RecordKey(doc_ids[d], TASKS[j % 2], j // 2).encode()
            for d in range(n_docs) for j in range(synthetic_per_doc)]
    save_vectors(paths["synthetic"], keys, _noisy(docs[owner], 0.5, g))
    owner = torch.arange(n_docs).repeat_interleave(sentences_per_doc)
    keys = [RecordKey(doc_ids[d], "sentence", j).encode() for d in range(n_docs) for j in range(sentences_per_doc)]
    save_vectors(paths["sentences"], keys, _noisy(docs[owner], 0.7, g))
    return paths


def build(paths: dict[str, Path], index_dir: Path, level: str, batch_size: int) -> dict[str, Any]:
    """The index loop, set up as ``pipeline.index.build_index`` sets it up; seconds and peak RSS growth."""
    from lightning.pytorch import Trainer

    from callbacks.index_writer import IndexWriter
    from datamodules.index_inputs import IndexInputsDataModule
    from lightning_modules.index_module import IndexModule
    from retrieval.index_files import unit_keys

    with PeakRSS() as rss:
        start = time.perf_counter()
        data = IndexInputsDataModule(paths["documents"], paths["synthetic"],
                                     paths["sentences"] if level != "doc" else None, batch_size=batch_size)
        order = unit_keys(level, data.doc_ids, data.sentence_keys())
        writer = IndexWriter(index_dir, order, data.doc_ids, level, {"system": f"rb-manual-{level}-stage2"})
        trainer = Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_checkpointing=False,
                          enable_model_summary=False, enable_progress_bar=False, callbacks=[writer],
                          default_root_dir=str(index_dir))
        trainer.predict(IndexModule(level, RaoBlackwellConfig()), datamodule=data, return_predictions=False)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "documents_per_s": round(len(data.doc_ids) / seconds, 1),
            "units": len(order), "rss_growth_mb": round((rss.peak - rss.start) / 2**20, 1),
            "index_mb": round(sum(p.stat().st_size for p in index_dir.iterdir() if p.is_file()) / 2**20, 1)}


def in_memory(paths: dict[str, Path], level: str) -> float:
    """Seconds of ``rao_blackwell_level`` over the whole corpus at once (the evaluator's in-memory path)."""
    from datamodules.index_inputs import IndexInputsDataModule

    data = IndexInputsDataModule(paths["documents"], paths["synthetic"], paths["sentences"] if level != "doc" else None)
    batch = data.predict_dataloader().collate_fn(list(range(len(data.doc_ids))))
    start = time.perf_counter()
    rao_blackwell_level(level, batch["documents"], batch["synthetic"], batch["synthetic_doc"], batch["synthetic_task"],
                        RaoBlackwellConfig(), sentence_vectors=batch["sentences"], sentence_doc=batch["sentence_doc"])
    return round(time.perf_counter() - start, 3)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_search(index_dir: Path, queries: torch.Tensor, sources: list[str], k: int, n_single: int, repeats: int,
                   use_faiss: bool, exact_run: dict | None = None) -> tuple[dict[str, Any], dict]:
    """Single-query latency (ms) and batch throughput (queries/s) of ``search_index``; how often each query's
    source document is ranked first and in the top 10, and (``exact_run``) how often the top 1 is exact's."""
    index = load_index(index_dir, verify_checksums=False)
    config = SearchConfig(k=k, device="cpu")
    ids = [f"q{i}" for i in range(len(queries))]
    search_index(index, ids[:1], queries[:1], config, use_faiss=use_faiss)  # warm-up: maps the file, loads FAISS
    latencies = []
    for i in range(n_single):
        start = time.perf_counter()
        search_index(index, ids[i:i + 1], queries[i:i + 1], config, use_faiss=use_faiss)
        latencies.append((time.perf_counter() - start) * 1000)
    batch_seconds, run = [], {}
    with PeakRSS() as rss:
        for _ in range(repeats):
            start = time.perf_counter()
            run = search_index(index, ids, queries, config, use_faiss=use_faiss)
            batch_seconds.append(time.perf_counter() - start)
    seconds = statistics.median(batch_seconds)
    result: dict[str, Any] = {
        "single_query_ms": {"p50": round(_percentile(latencies, 50), 2), "p99": round(_percentile(latencies, 99), 2),
                            "n": n_single},
        "batch": {"queries": len(queries), "seconds": round(seconds, 3), "queries_per_s": round(len(queries) / seconds, 1),
                  "seconds_each": [round(s, 3) for s in batch_seconds]},
        "rss_growth_mb": round((rss.peak - rss.start) / 2**20, 1)}
    ranked = [list(run[q]) for q in ids]  # search_index returns each query's documents best first
    result["source_at_1"] = round(float(np.mean([r[:1] == [s] for r, s in zip(ranked, sources)])), 4)
    result["source_in_top_10"] = round(float(np.mean([s in r[:10] for r, s in zip(ranked, sources)])), 4)
    if exact_run is not None:  # beyond the source document the synthetic scores are noise: only the top 1 is compared
        result["top_1_as_exact"] = round(float(np.mean([r[:1] == list(exact_run[q])[:1]
                                                        for q, r in zip(ids, ranked)])), 4)
    return result, run


def faiss_anchor(index_dir: Path, queries: torch.Tensor, k: int, repeats: int) -> float:
    """Median seconds of ``faiss.IndexFlatIP.search`` over the index's unit vectors held in memory."""
    import faiss

    index = load_index(index_dir, verify_checksums=False)
    flat = faiss.IndexFlatIP(index.dim)
    flat.add(np.ascontiguousarray(index.vectors, dtype=np.float32))
    q = np.ascontiguousarray(queries.numpy(), dtype=np.float32)
    flat.search(q[:1], k)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        flat.search(q, k)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--synthetic-per-doc", type=int, default=2, help="one question and one keyword list")
    parser.add_argument("--sentences-per-doc", type=int, default=4)
    parser.add_argument("--level", choices=["doc", "sentence", "multi"], default="multi")
    parser.add_argument("--batch-size", type=int, default=256, help="documents per batch of the index loop")
    parser.add_argument("--n-queries", type=int, default=1_000, help="queries per batch")
    parser.add_argument("--n-single", type=int, default=100, help="single queries timed for the latency percentiles")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed batch calls of each backend; the median counts")
    parser.add_argument("--faiss", nargs="*", default=["flat", "ivf", "hnsw"], help="FAISS kinds (none: skip)")
    parser.add_argument("--faiss-nlist", type=int, default=None,
                        help="IVF lists; default: index.faiss_nlist's (about 4 * sqrt(units), trained on 256 per list)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the inputs and the index go (a temp dir)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/index.json"))
    args = parser.parse_args(argv)
    load_start = load_average()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        folder = Path(tmp)
        print(f"writing inputs: {args.n_docs} documents x {args.dim}", flush=True)
        paths = write_inputs(folder, args.n_docs, args.dim, args.synthetic_per_doc, args.sentences_per_doc, args.seed)
        index_dir = folder / "index"
        built = build(paths, index_dir, args.level, args.batch_size)
        print(f"build: {built['seconds']} s, {built['documents_per_s']} documents/s, {built['units']} units", flush=True)
        built["in_memory_s"] = in_memory(paths, args.level)
        g = torch.Generator().manual_seed(args.seed + 1)
        picked = torch.randint(0, args.n_docs, (args.n_queries,), generator=g)
        from retrieval.vectors import load_vectors

        docs = torch.from_numpy(np.asarray(load_vectors(paths["documents"], mmap=True)[1][picked.numpy()]))
        queries = _noisy(docs, 0.1, g)
        sources = [f"d{i}" for i in picked.tolist()]
        search: dict[str, Any] = {}
        search["exact"], exact_run = measure_search(index_dir, queries, sources, args.k, args.n_single,
                                                           args.repeats, False)
        print(f"exact: {search['exact']}", flush=True)
        faiss_build: dict[str, float] = {}
        manifest = json.loads((index_dir / "manifest.json").read_text())
        doc_ids = json.loads((index_dir / "ids.json").read_text())
        for kind in args.faiss:
            start = time.perf_counter()
            build_faiss(index_dir, kind, nlist=args.faiss_nlist)
            faiss_build[kind] = round(time.perf_counter() - start, 3)
            write_index_files(index_dir, doc_ids, args.level, {**manifest, "faiss": kind})
            search[f"faiss-{kind}"], _ = measure_search(index_dir, queries, sources, args.k, args.n_single,
                                                        args.repeats, True, exact_run)
            search[f"faiss-{kind}"]["index_faiss_mb"] = round((index_dir / "index.faiss").stat().st_size / 2**20, 1)
            print(f"faiss-{kind}: build {faiss_build[kind]} s, {search[f'faiss-{kind}']}", flush=True)
        built["faiss_build_s"] = faiss_build
        anchor_s = faiss_anchor(index_dir, queries, args.k, args.repeats)
    ours_s = search["exact"]["batch"]["seconds"]
    result = {
        "name": "index",
        "command": command_line("benchmarks.bench_index", argv),
        "machine": machine(torch.device("cpu")),
        "device": "cpu",
        "anchor": anchor("faiss-cpu", f"faiss.IndexFlatIP({args.dim}).search(queries, {args.k}) over the index's "
                         f"{built['units']} unit vectors in memory (no per-document max)", package_version("faiss-cpu")),
        "what": f"{args.n_docs} documents x {args.dim}, level {args.level} ({args.sentences_per_doc} sentences and "
                f"{args.synthetic_per_doc} synthetic outputs per document, synthetic); build = the index loop "
                f"(Trainer.predict, batch {args.batch_size}); search = retrieval.index_files.search_index top-{args.k} "
                f"of the written files; ours = exact search_index batch of {args.n_queries} queries",
        "ours_s": round(ours_s, 4),
        "anchor_s": round(anchor_s, 4),
        "ratio": round(anchor_s / ours_s, 3),
        "build": built,
        "search": search,
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "load_average_1m": {"start": load_start, "end": load_average()},
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"build {built['documents_per_s']} documents/s; exact search {search['exact']['batch']['queries_per_s']} "
          f"queries/s, p50 {search['exact']['single_query_ms']['p50']} ms; FAISS flat anchor {anchor_s:.3f} s vs "
          f"ours {ours_s:.3f} s (ratio {result['ratio']})")
    write_json_atomic(args.output, result)
    print(f"written: {args.output}")
    return result


if __name__ == "__main__":
    main()
