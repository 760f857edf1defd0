"""Exact search benchmark: ours (retrieval.search.search) against BEIR's DenseRetrievalExactSearch, same process.

    python -m benchmarks.bench_search                  # 100,000 x 384 corpus, 1,000 queries, top-100
    python -m benchmarks.bench_search --device cuda    # the same on a GPU (default: the GPU when there is one)

The reference keeps the shape of beir/retrieval/search/dense/exact_search.py (BEIR 2.x): corpus
chunks of 50,000, ``cos_sim`` (which L2-normalises both sides again), NaN scores set to -1,
``torch.topk(k + 1, sorted=False)`` per chunk, ``.tolist()``, then a per-query ``heapq`` merge in
Python. Encoding is replaced by slicing precomputed vectors (both sides get the same ones), and
BEIR's sort of the corpus by text length is skipped (synthetic vectors have no text). Both produce
the same thing: the run ``{query id: {doc id: score}}``.

Agreement: per query the two top-k id sets must be equal, except for documents whose score equals
the k-th score (within 1e-6: the reference re-normalises, which moves scores by float rounding),
where either side may keep a different one of the tied documents. Writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import heapq
import os
import platform
import resource
import shlex
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.io import write_json_atomic
from retrieval.search import SearchConfig, resolve_device, search

Run = dict[str, dict[str, float]]
TIE_TOLERANCE = 1e-6
ENV_RECORDED = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")  # they change the timings, so the command names them


# ---------------------------------------------------------------- the BEIR-style reference
def beir_cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """beir.retrieval.search.dense.util.cos_sim: normalises both sides, then one matrix product."""
    a_norm = torch.nn.functional.normalize(a, p=2, dim=1)
    b_norm = torch.nn.functional.normalize(b, p=2, dim=1)
    return torch.mm(a_norm, b_norm.transpose(0, 1))


def beir_exact_search(query_ids: list[str], query_embeddings: torch.Tensor, corpus_ids: list[str],
                      corpus_embeddings: torch.Tensor, top_k: int, device: torch.device,
                      corpus_chunk_size: int = 50000) -> Run:
    """DenseRetrievalExactSearch.search with encode_queries/encode_corpus replaced by precomputed vectors."""
    results: Run = {qid: {} for qid in query_ids}
    query_embeddings = query_embeddings.to(device)
    result_heaps: dict[str, list[tuple[float, str]]] = {qid: [] for qid in query_ids}
    for corpus_start_idx in range(0, len(corpus_ids), corpus_chunk_size):
        corpus_end_idx = min(corpus_start_idx + corpus_chunk_size, len(corpus_ids))
        sub_corpus_embeddings = corpus_embeddings[corpus_start_idx:corpus_end_idx].to(device)  # "encoding"
        cos_scores = beir_cos_sim(query_embeddings, sub_corpus_embeddings)
        cos_scores[torch.isnan(cos_scores)] = -1
        cos_scores_top_k_values, cos_scores_top_k_idx = torch.topk(
            cos_scores, min(top_k + 1, len(cos_scores[1])), dim=1, largest=True, sorted=False)
        cos_scores_top_k_values = cos_scores_top_k_values.cpu().tolist()
        cos_scores_top_k_idx = cos_scores_top_k_idx.cpu().tolist()
        for query_itr in range(len(query_embeddings)):
            query_id = query_ids[query_itr]
            for sub_corpus_id, score in zip(cos_scores_top_k_idx[query_itr], cos_scores_top_k_values[query_itr]):
                corpus_id = corpus_ids[corpus_start_idx + sub_corpus_id]
                if corpus_id != query_id:
                    if len(result_heaps[query_id]) < top_k:
                        heapq.heappush(result_heaps[query_id], (score, corpus_id))
                    else:
                        heapq.heappushpop(result_heaps[query_id], (score, corpus_id))
    for qid in result_heaps:
        for score, corpus_id in result_heaps[qid]:
            results[qid][corpus_id] = score
    return results


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
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/search.json"))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    docs, queries = synthetic(args.n_docs, args.n_queries, args.dim, args.seed)
    doc_ids = [f"d{i}" for i in range(args.n_docs)]
    query_ids = [f"q{i}" for i in range(args.n_queries)]
    config = SearchConfig(backend="exact", k=args.k, device=str(device))

    def ours() -> Run:
        return search(query_ids, queries, doc_ids, docs, config)

    def reference() -> Run:
        return beir_exact_search(query_ids, queries, doc_ids, docs, args.k, device)

    times: dict[str, list[float]] = {"ours": [], "reference": []}
    memory: dict[str, dict[str, float]] = {}
    runs: dict[str, Run] = {}
    for _ in range(args.warmup):
        reference(), ours()
    for _ in range(args.repeats):  # interleaved, so a busy neighbour slows both alike
        for name, fn in (("reference", reference), ("ours", ours)):
            seconds, runs[name], mem = measure(fn, device)
            times[name].append(seconds)
            memory[name] = {key: max(value, memory.get(name, {}).get(key, 0.0)) for key, value in mem.items()}
            print(f"{name:9s} {seconds:7.3f} s  " + "  ".join(f"{key} {value:.0f}" for key, value in mem.items()),
                  flush=True)
    agreement = compare_runs(runs["ours"], runs["reference"])
    ours_s, reference_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    result = {
        "name": "search",
        "command": " ".join([*(f"{name}={os.environ[name]}" for name in ENV_RECORDED if name in os.environ),
                             "python -m benchmarks.bench_search", shlex.join(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(device),
        "device": str(device),
        "what": f"exact cosine top-{args.k}: {args.n_queries} queries x {args.n_docs} x {args.dim} normalised float32 "
                "documents -> run dict; reference = BEIR DenseRetrievalExactSearch shape",
        "ours_s": round(ours_s, 4),
        "reference_s": round(reference_s, 4),
        "ratio": round(reference_s / ours_s, 3),
        "agree": agreement["agree"],
        "agreement": agreement,
        "times_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "memory_mb": {name: {key: round(value, 1) for key, value in mem.items()} for name, mem in memory.items()},
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "inputs_mb": round((docs.numel() + queries.numel()) * 4 / 2**20, 1),
    }
    print(f"ours {ours_s:.3f} s, reference {reference_s:.3f} s, ratio {result['ratio']:.2f}x, agree {result['agree']} "
          f"({agreement['queries_identical']} identical, {agreement['queries_tie_only']} differ only at tied scores, "
          f"max score difference {agreement['max_score_diff']:.2e})")
    write_json_atomic(args.output, result)
    print(f"written: {args.output}")
    return result


if __name__ == "__main__":
    main()
