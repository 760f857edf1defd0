"""Scale and memory (issue 6): the embedding stage at 20,000 and 200,000 documents, and search over
1,000,000 x 384 float16 vectors on disk.

    python -m benchmarks.bench_scale embedding --sizes 20000 200000   # -> results/embedding-scale.json
    python -m benchmarks.bench_scale search --n-docs 1000000          # -> results/search-scale.json
    python -m benchmarks.bench_generation --scale 20000 200000         # the generation stage (its own script)

Every measured run is a fresh process, so its peak memory is its own. Memory is read from
``/proc/self/status`` every 2 ms while the measured call runs: ``RssAnon`` (heap, tensors: what a run
really allocates) and ``VmRSS`` (that plus file pages mapped in: shared libraries, and for a
memory-mapped vector file the pages of it read or written, which the kernel drops under pressure).
``ru_maxrss`` (the process's whole life, input building included) is reported too. The load average
before and after each run is recorded: the machine may be shared.

* ``embedding``: ``pipeline.embed.embed_texts(..., return_vectors=False)`` as the pipeline's embed stage
  calls it (Trainer.predict, length-sorted batches, per-batch part files, the merge into one float16 file)
  on short synthetic documents (the generation benchmark's corpus: 7 to 24 words) with a tiny random BERT
  (2 layers, hidden 32, MiniLM's WordPiece), 1 thread. The input, a Python list of ``(id, text)`` pairs
  the caller hands in, grows with the corpus whatever the stage does; its size (anonymous memory taken
  by building it) is measured and reported apart. Streaming rule: the larger run's peak VmRSS *minus its
  input* is at most 1.2 x the smaller's (``peak_ratio_beyond_input``); the raw peak ratio and the stage's
  own growth per extra document are reported next to it. ``ratio`` = wall time per document at the
  small size / at the large size (1.0 = linear, higher is better); ``cpu_time_ratio`` the same in CPU
  time of the main thread (the one that computes here: 1 torch thread, no loader workers; the memory
  samplers' threads left out), which a busy shared machine disturbs less.
* ``search``: a float16 vector file written chunk by chunk (``retrieval.vectors``), opened with
  ``mmap=True``: unit vectors drawn from a mixture of ``--clusters`` Gaussians on the sphere (a
  document is its cluster's centre plus isotropic noise of norm ``--spread``, normalised), so that
  neighbourhoods exist as in real embeddings; 1,000 queries are noisy copies of documents (noise of
  norm ``--query-noise``). ``exact_search`` and FAISS (flat, and IVF with ``--nlist``/``--nprobe``),
  top-100: time, memory, recall of the exact top-k, and whether each query's source document ranks
  first. ``ratio`` = the float32 matrix an in-memory search holds (n x d x 4 bytes, as BEIR's exact
  search does) / our exact search's anonymous-memory growth (higher is better). FAISS keeps its own
  float32 copy of every vector in its index (flat and IVF-flat alike): its growth is that index.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_search import ENV_RECORDED, PeakRSS, machine
from core.io import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
RSS_RATIO_LIMIT = 1.2


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


class PeakAnon(PeakRSS):
    """:class:`benchmarks.bench_search.PeakRSS`, sampling ``RssAnon``: memory a memory map's pages do not inflate."""

    @staticmethod
    def _rss() -> int:
        return int(_status_mb("RssAnon") * 2**20)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _measured(run: Any) -> dict[str, Any]:
    """Run ``run()`` and return its seconds, peaks (anonymous, total) and growth over the start, in MB."""
    start_anon, load_before = _status_mb("RssAnon"), _load()
    with PeakAnon() as anon, PeakRSS() as total:
        start, cpu_start, main_start = time.perf_counter(), time.process_time(), time.thread_time()
        extra = run() or {}
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        main_cpu_seconds = time.thread_time() - main_start
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "main_thread_cpu_seconds": round(main_cpu_seconds, 2), "anon_before_mb": round(start_anon, 1),
            "anon_peak_mb": round(anon.peak / 2**20, 1), "anon_growth_mb": round(anon.peak / 2**20 - start_anon, 1),
            "rss_before_mb": round(total.start / 2**20, 1), "rss_peak_mb": round(total.peak / 2**20, 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_average_1min": [load_before, _load()], **extra}


def _child(args: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    completed = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", *args], cwd=REPO, check=True,
                               capture_output=True, text=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


# ----------------------------------------------------------------------------------- embedding
def tiny_encoder(work: Path) -> Path:
    """The tiny random BERT both sizes load, made once (in the parent, so no child pays for making it)."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import make_tiny_bert

    model = work / "tiny-bert"
    if not (model / "config.json").is_file():
        make_tiny_bert(model)
    return model


def embedding_run(count: int, work: Path, batch_size: int) -> dict[str, Any]:
    """One size in this (fresh) process: ``embed_texts`` on ``count`` short documents with a tiny BERT."""
    from benchmarks.bench_generation import synthetic_documents
    from pipeline.embed import embed_texts
    from retrieval.vectors import read_vector_ids

    torch.set_num_threads(1)  # a model this small is fastest on one thread
    model = work / "tiny-bert"
    gc.collect()
    anon_without_input = _status_mb("RssAnon")
    items = [(doc_id, f"{title} {text}") for doc_id, title, text in synthetic_documents(count)]
    gc.collect()
    input_mb = _status_mb("RssAnon") - anon_without_input  # what the caller hands in; the stage cannot shrink it
    output = Path(tempfile.mkdtemp(dir=work, prefix=f"embed-{count}-")) / "documents.safetensors"

    def run() -> dict[str, Any]:
        ids, _ = embed_texts(items, str(model), output, batch_size=batch_size, progress=False, dtype="float16",
                             return_vectors=False)  # as the pipeline's embed stage runs it
        assert ids == read_vector_ids(output)
        return {"file_mb": round(output.stat().st_size / 2**20, 1)}

    result = {"documents": count, "input_mb": round(input_mb, 1), **_measured(run)}
    result["rss_peak_beyond_input_mb"] = round(result["rss_peak_mb"] - input_mb, 1)
    result["ms_per_document"] = round(1000 * result["seconds"] / count, 4)
    result["cpu_ms_per_document"] = round(1000 * result["main_thread_cpu_seconds"] / count, 4)
    return result


def embedding_scale(sizes: list[int], work: Path, batch_size: int, command: str, output: Path) -> dict[str, Any]:
    tiny_encoder(work)
    runs = [_child(["--child", "embedding", str(count), "--work-dir", str(work), "--batch-size", str(batch_size)])
            for count in sizes]
    small, large = runs[0], runs[-1]
    beyond_ratio = large["rss_peak_beyond_input_mb"] / small["rss_peak_beyond_input_mb"]
    extra_documents = large["documents"] - small["documents"]
    per_document = 2**20 * (large["anon_growth_mb"] - small["anon_growth_mb"]) / extra_documents
    input_per_document = 2**20 * (large["input_mb"] - small["input_mb"]) / extra_documents
    rule = (f"streaming = the larger run's peak VmRSS during the stage minus the input list it was handed is at most "
            f"{RSS_RATIO_LIMIT} x the smaller run's (the input, a Python list of (id, text) pairs, is measured as "
            "the anonymous memory building it took, and grows with the corpus whatever the stage does)")
    note = (f"the input list takes {small['input_mb']} MB and {large['input_mb']} MB ({input_per_document:.0f} bytes "
            f"per document); the stage itself grows by {small['anon_growth_mb']} MB and {large['anon_growth_mb']} MB "
            f"of anonymous memory, {per_document:.0f} bytes per extra document (ids: the list returned, the merge's "
            "key index of RankPartWriter, Lightning's predict loop keeping every batch's sample indices); no vector "
            "and no text is held beyond one batch")
    result = {"name": "embedding-scale", "kind": "scale", "command": command,
              "machine": machine(torch.device("cpu")),
              "what": "pipeline.embed.embed_texts(return_vectors=False) (Trainer.predict, sorted batches, part files, "
                      "merge to float16) on synthetic short documents (7 to 24 words), tiny random BERT (2 layers, "
                      f"hidden 32), batch {batch_size}, one process, 1 thread, CPU; each size in a fresh process",
              "time_per_document_ratio": round(small["ms_per_document"] / large["ms_per_document"], 3),
              "cpu_time_ratio": round(small["cpu_ms_per_document"] / large["cpu_ms_per_document"], 3),
              "rule": rule,
              "peak_ratio_beyond_input": round(beyond_ratio, 3), "rss_ratio_limit": RSS_RATIO_LIMIT,
              "streaming": beyond_ratio <= RSS_RATIO_LIMIT,
              "rss_ratio_raw": round(large["rss_peak_mb"] / small["rss_peak_mb"], 3),
              "stage_anon_growth_bytes_per_extra_document": round(per_document),
              "input_bytes_per_document": round(input_per_document),
              "note": note, "runs": runs}
    write_json_atomic(output, result)
    print(f"peak RSS beyond the input x{result['peak_ratio_beyond_input']} (raw x{result['rss_ratio_raw']}) for "
          f"x{large['documents'] / small['documents']:.0f} documents; time per document ratio "
          f"{result['time_per_document_ratio']} (CPU time "
          f"{result['cpu_time_ratio']}); "
          f"written: {output}")
    return result


# ----------------------------------------------------------------------------------- search
def vector_file(path: Path, n_docs: int, dim: int, clusters: int, spread: float, seed: int = 0,
                chunk: int = 65536) -> Path:
    """A float16 file of ``n_docs`` unit vectors from a mixture of ``clusters`` Gaussians on the sphere,
    written chunk by chunk (never all in memory): a cluster's centre plus noise of norm ~``spread``."""
    from core.io import atomic_path
    from retrieval.vectors import create_vector_file

    if path.is_file():
        return path
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    metadata = {"seed": str(seed), "clusters": str(clusters), "spread": str(spread)}
    with atomic_path(path) as tmp:
        rows = create_vector_file(tmp, [f"d{i}" for i in range(n_docs)], dim, "float16", metadata)
        for start in range(0, n_docs, chunk):
            size = min(chunk, n_docs - start)
            cluster = torch.randint(0, clusters, (size,), generator=generator)
            block = centres[cluster] + spread * torch.randn(size, dim, generator=generator) / dim**0.5
            rows[start:start + size] = torch.nn.functional.normalize(block, dim=1).numpy()
        rows.flush()
        del rows
    return path


def queries_for(path: Path, n_queries: int, noise: float, seed: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """Noisy copies of random documents (noise of norm ~``noise``), and the documents they come from."""
    from retrieval.vectors import load_vectors

    _, docs = load_vectors(path, mmap=True)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randint(0, docs.shape[0], (n_queries,), generator=generator).sort().values.numpy()
    base = torch.from_numpy(np.asarray(docs[picked], dtype=np.float32))
    jitter = noise * torch.randn(base.shape, generator=generator) / base.shape[1] ** 0.5
    return torch.nn.functional.normalize(base + jitter, dim=1), picked


def search_run(method: str, path: Path, work: Path, n_queries: int, noise: float, k: int, nlist: int,
               nprobe: int) -> dict[str, Any]:
    """One search in this (fresh) process over the memory-mapped file; top-k indices and scores go to ``work``."""
    from retrieval.search import exact_search, faiss_search
    from retrieval.vectors import load_vectors

    queries, _ = queries_for(path, n_queries, noise)
    found: dict[str, np.ndarray] = {}

    def run() -> None:
        _, docs = load_vectors(path, mmap=True)
        if method == "exact":
            scores, indices = exact_search(queries, docs, k)
        else:
            scores, indices = faiss_search(queries, docs, k, index=method.removeprefix("faiss-"), nlist=nlist,
                                           nprobe=nprobe)
        found["indices"], found["scores"] = indices.numpy(), scores.numpy()

    result = {"method": method, **_measured(run)}
    np.save(work / f"top{k}-{method}.npy", found["indices"])
    np.save(work / f"top{k}-{method}-scores.npy", found["scores"])
    return result


def search_scale(n_docs: int, dim: int, clusters: int, spread: float, n_queries: int, noise: float, k: int,
                 nlist: int, nprobe: int, work: Path, command: str, output: Path) -> dict[str, Any]:
    path = work / f"vectors-{n_docs}x{dim}-c{clusters}-s{spread:g}-float16.safetensors"
    started = time.perf_counter()
    _child(["--child", "build", str(n_docs), "--dim", str(dim), "--clusters", str(clusters), "--spread", str(spread),
            "--vectors", str(path), "--work-dir", str(work)])
    print(f"vector file: {path.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - started:.0f} s", flush=True)
    common = ["--vectors", str(path), "--work-dir", str(work), "--n-queries", str(n_queries), "--query-noise",
              str(noise), "--k", str(k), "--nlist", str(nlist), "--nprobe", str(nprobe)]
    runs = {method: _child(["--child", method, *common]) for method in ("exact", "faiss-flat", "faiss-ivf")}
    exact = np.load(work / f"top{k}-exact.npy")
    _, sources = queries_for(path, n_queries, noise)
    for method in runs:
        top = np.load(work / f"top{k}-{method}.npy")
        runs[method]["source_at_rank_1"] = round(float(np.mean(top[:, 0] == sources)), 4)
        runs[method]["recall_of_exact_top_k"] = round(float(np.mean(
            [len(set(a) & set(b)) / k for a, b in zip(exact, top)])), 4)
        runs[method]["same_top_k_lists"] = int(sum(np.array_equal(a, b) for a, b in zip(exact, top)))
    exact_scores = np.load(work / f"top{k}-exact-scores.npy")
    full_matrix_mb = n_docs * dim * 4 / 2**20
    result = {"name": "search-scale", "kind": "scale", "command": command,
              "machine": machine(torch.device("cpu")),
              "what": f"{n_docs} x {dim} unit vectors from a mixture of {clusters} Gaussians on the sphere (centre + "
                      f"noise of norm {spread}, normalised) in a float16 vector file opened with mmap=True; "
                      f"{n_queries} queries = documents + noise of norm {noise}, normalised; top-{k}; "
                      f"retrieval.search.exact_search and faiss_search (flat; IVF nlist {nlist}, nprobe {nprobe}), "
                      "each in a fresh process, CPU",
              "file_mb": round(path.stat().st_size / 2**20, 1), "float32_matrix_mb": round(full_matrix_mb, 1),
              "memory_ratio_float32_matrix_to_exact_growth":
                  round(full_matrix_mb / max(runs["exact"]["anon_growth_mb"], 1.0), 2),
              "exact_mean_score_at_rank": {str(rank): round(float(exact_scores[:, rank - 1].mean()), 4)
                                           for rank in (1, 2, 10, k) if rank <= exact_scores.shape[1]},
              "runs": runs}
    write_json_atomic(output, result)
    print(f"exact search: {runs['exact']['seconds']} s, anonymous memory +{runs['exact']['anon_growth_mb']} MB "
          f"against a {full_matrix_mb:.0f} MB float32 matrix "
          f"(ratio {result['memory_ratio_float32_matrix_to_exact_growth']}); IVF recall of the exact "
          f"top-{k} {runs['faiss-ivf']['recall_of_exact_top_k']}; written: {output}")
    return result


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("embedding", "search"), help="which benchmark")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="embedding: corpus sizes")
    parser.add_argument("--batch-size", type=int, default=256, help="embedding: texts per batch")
    parser.add_argument("--n-docs", type=int, default=1_000_000, help="search: vectors in the file")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000, help="search: Gaussians in the mixture")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="search: norm of a document's noise around its centre (1.0: cosine ~0.5 between "
                             "documents of one cluster, ~0 across clusters)")
    parser.add_argument("--n-queries", type=int, default=1_000)
    parser.add_argument("--query-noise", type=float, default=0.5,
                        help="search: norm of a query's noise around its source document (0.5: cosine ~0.9)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=1024, help="search: IVF lists (FAISS trains on 256 per list)")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_scale")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/<what>-scale.json")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    parser.add_argument("--vectors", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.child:
        kind, *rest = args.child
        if kind == "embedding":
            result = embedding_run(int(rest[0]), args.work_dir, args.batch_size)
        elif kind == "build":
            vector_file(args.vectors, int(rest[0]), args.dim, args.clusters, args.spread)
            result = {"built": str(args.vectors)}
        else:
            result = search_run(kind, args.vectors, args.work_dir, args.n_queries, args.query_noise, args.k,
                                args.nlist, args.nprobe)
        print(json.dumps(result))
        return result
    if args.what is None:
        parser.error("say which benchmark: embedding or search")
    command = " ".join([*(f"{name}={os.environ[name]}" for name in ENV_RECORDED if name in os.environ),
                        "python -m benchmarks.bench_scale", shlex.join(sys.argv[1:] if argv is None else argv)])
    output = args.output or REPO / "benchmarks" / "results" / f"{args.what}-scale.json"
    if args.what == "embedding":
        return embedding_scale(args.sizes, args.work_dir, args.batch_size, command, output)
    return search_scale(args.n_docs, args.dim, args.clusters, args.spread, args.n_queries, args.query_noise, args.k,
                        args.nlist, args.nprobe, args.work_dir, command, output)


if __name__ == "__main__":
    main()
