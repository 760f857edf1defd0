"""Exact search benchmark: ours (retrieval.search.search) against BEIR's own DenseRetrievalExactSearch, same process.

    python -m benchmarks.bench_search                  # 100,000 x 384 corpus, 1,000 queries, top-100
    python -m benchmarks.bench_search --device cuda    # the same on a GPU (default: the GPU when there is one)

The anchor is BEIR's class itself (``beir.retrieval.search.dense.DenseRetrievalExactSearch``, BEIR 2.2.0,
installed by the script as ``bench_generation`` does): ``search(corpus, queries, top_k, "cos_sim")`` with
its corpus sort by text length, chunks of 50,000, ``cos_sim`` (which L2-normalises both sides again), NaN
scores set to -1, ``torch.topk(k + 1, sorted=False)`` per chunk, ``.tolist()`` and a per-query ``heapq``
merge in Python. Its model is :class:`PrecomputedModel`, which hands back the same precomputed vectors
ours gets (``encode_queries`` the query matrix, ``encode_corpus`` a view of the corpus rows asked for), so
both sides time retrieval, not encoding. Both produce the run ``{query id: {doc id: score}}``.

Agreement: per query the two top-k id sets must be equal, except for documents whose score equals
the k-th score (within 1e-6: BEIR re-normalises, which moves scores by float rounding),
where either side may keep a different one of the tied documents. Writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.record import ENV_RECORDED, anchor, command_line, ensure_beir, load_average  # noqa: F401 (re-exported)
from core.io import write_json_atomic
from retrieval.search import SearchConfig, resolve_device, search

Run = dict[str, dict[str, float]]
TIE_TOLERANCE = 1e-6


# ---------------------------------------------------------------- BEIR's class, fed precomputed vectors
class PrecomputedModel:
    """BEIR's dense model interface (``encode_queries``, ``encode_corpus``) over vectors computed beforehand.

    The corpus dicts carry their row (``"row"``); BEIR passes them back in its own (length-sorted) order, and a
    contiguous run of rows is returned as a view, so "encoding" costs a list comprehension, not a copy.
    """

    def __init__(self, queries: torch.Tensor, docs: torch.Tensor) -> None:
        self.queries, self.docs = queries, docs

    def encode_queries(self, queries: list[str], batch_size: int, **kwargs: Any) -> torch.Tensor:
        if len(queries) != len(self.queries):
            raise ValueError(f"{len(queries)} queries asked for, {len(self.queries)} vectors held")
        return self.queries

    def encode_corpus(self, corpus: list[dict[str, Any]], batch_size: int, **kwargs: Any) -> torch.Tensor:
        rows = [doc["row"] for doc in corpus]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return self.docs[rows[0]: rows[0] + len(rows)]
        return self.docs[torch.tensor(rows)]


def beir_corpus(doc_ids: list[str]) -> dict[str, dict[str, Any]]:
    """BEIR's corpus dict; empty texts, so its stable sort by length keeps the rows in order (a view each chunk)."""
    return {doc_id: {"title": "", "text": "", "row": row} for row, doc_id in enumerate(doc_ids)}


# ---------------------------------------------------------------- measuring
class PeakRSS:
    """Highest resident set size seen while the block runs, sampled every 2 ms from /proc (Linux)."""

    def __init__(self) -> None:
        self.peak = self.start = self._rss()
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: fall back to the (monotonic) process maximum
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def measure(fn: Callable[[], Run], device: torch.device) -> tuple[float, Run, dict[str, float]]:
    """Wall time of one call, its run, and its memory: RSS growth, Python-heap peak (tracemalloc), CUDA peak."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    with PeakRSS() as rss:
        start = time.perf_counter()
        run = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    memory = {"rss_growth_mb": (rss.peak - rss.start) / 2**20, "tracemalloc_peak_mb": python_peak / 2**20}
    if device.type == "cuda":
        memory["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return seconds, run, memory


def compare_runs(ours: Run, reference: Run) -> dict[str, Any]:
    """Same top-k per query, up to which of several documents tied at the k-th score is kept."""
    identical = tie_only = disagree = 0
    max_score_diff = 0.0
    for qid, ref_hits in reference.items():
        our_hits = ours[qid]
        for doc in our_hits.keys() & ref_hits.keys():
            max_score_diff = max(max_score_diff, abs(our_hits[doc] - ref_hits[doc]))
        if our_hits.keys() == ref_hits.keys():
            identical += 1
            continue
        cut = min(ref_hits.values())  # the k-th score
        only_ours, only_ref = our_hits.keys() - ref_hits.keys(), ref_hits.keys() - our_hits.keys()
        at_cut = [our_hits[doc] for doc in only_ours] + [ref_hits[doc] for doc in only_ref]
        if len(only_ours) == len(only_ref) and all(abs(score - cut) <= TIE_TOLERANCE for score in at_cut):
            tie_only += 1
        else:
            disagree += 1
    return {"queries_identical": identical, "queries_tie_only": tie_only, "queries_disagree": disagree,
            "max_score_diff": max_score_diff, "agree": disagree == 0}


def synthetic(n_docs: int, n_queries: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised Gaussian documents; queries are noisy copies of random documents, so each has a clear match."""
    g = torch.Generator().manual_seed(seed)
    docs = torch.nn.functional.normalize(torch.randn(n_docs, dim, generator=g), dim=1)
    picked = torch.randint(0, n_docs, (n_queries,), generator=g)
    queries = torch.nn.functional.normalize(docs[picked] + 0.1 * torch.randn(n_queries, dim, generator=g), dim=1)
    return docs, queries


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} usable cores of {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-docs", type=int, default=100_000)
    parser.add_argument("--n-queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each method, interleaved; the median counts")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each method first (CUDA context, allocator)")
    parser.add_argument("--device", default=None, help="cpu or cuda; default: the GPU when there is one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="where beir is installed if it is not importable")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/search.json"))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    docs, queries = synthetic(args.n_docs, args.n_queries, args.dim, args.seed)
    doc_ids = [f"d{i}" for i in range(args.n_docs)]
    query_ids = [f"q{i}" for i in range(args.n_queries)]
    config = SearchConfig(backend="exact", k=args.k, device=str(device))
    beir_install = ensure_beir(args.work_dir, "beir.retrieval.search.dense")
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    model = PrecomputedModel(queries.to(device), docs.to(device))
    corpus, query_texts = beir_corpus(doc_ids), {qid: "" for qid in query_ids}

    def ours() -> Run:
        return search(query_ids, queries, doc_ids, docs, config)

    def beir() -> Run:
        searcher = DenseRetrievalExactSearch(model, show_progress_bar=False)  # its defaults: chunks of 50,000
        return searcher.search(corpus, query_texts, args.k, "cos_sim")

    times: dict[str, list[float]] = {"ours": [], "beir": []}
    memory: dict[str, dict[str, float]] = {}
    runs: dict[str, Run] = {}
    load_start = load_average()
    for _ in range(args.warmup):
        beir(), ours()
    for _ in range(args.repeats):  # interleaved, so a busy neighbour slows both alike
        for name, fn in (("beir", beir), ("ours", ours)):
            seconds, runs[name], mem = measure(fn, device)
            times[name].append(seconds)
            memory[name] = {key: max(value, memory.get(name, {}).get(key, 0.0)) for key, value in mem.items()}
            print(f"{name:9s} {seconds:7.3f} s  " + "  ".join(f"{key} {value:.0f}" for key, value in mem.items()),
                  flush=True)
    agreement = compare_runs(runs["ours"], runs["beir"])
    ours_s, beir_s = statistics.median(times["ours"]), statistics.median(times["beir"])
    result = {
        "name": "search",
        "command": command_line("benchmarks.bench_search", argv),
        "machine": machine(device),
        "device": str(device),
        "anchor": anchor("beir", f"beir.retrieval.search.dense.DenseRetrievalExactSearch(model).search(corpus, "
                         f"queries, {args.k}, 'cos_sim') with a model returning the same precomputed vectors",
                         beir_install["version"]),
        "what": f"exact cosine top-{args.k}: {args.n_queries} queries x {args.n_docs} x {args.dim} normalised float32 "
                "documents -> run dict; ours = retrieval.search.search (exact backend)",
        "ours_s": round(ours_s, 4),
        "beir_s": round(beir_s, 4),
        "ratio": round(beir_s / ours_s, 3),
        "agree": agreement["agree"],
        "agreement": agreement,
        "times_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "load_average_1m": {"start": load_start, "end": load_average()},
        "memory_mb": {name: {key: round(value, 1) for key, value in mem.items()} for name, mem in memory.items()},
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "inputs_mb": round((docs.numel() + queries.numel()) * 4 / 2**20, 1),
        "beir_install": beir_install,
    }
    print(f"ours {ours_s:.3f} s, BEIR {beir_s:.3f} s, ratio {result['ratio']:.2f}x, agree {result['agree']} "
          f"({agreement['queries_identical']} identical, {agreement['queries_tie_only']} differ only at tied scores, "
          f"max score difference {agreement['max_score_diff']:.2e})")
    write_json_atomic(args.output, result)
    print(f"written: {args.output}")
    return result


if __name__ == "__main__":
    main()
