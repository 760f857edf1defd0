"""What bf16 costs in quality: SciFact embedded in float32 and in bf16-mixed by our embed stage, scored alike.

    python -m benchmarks.bench_precision                  # full SciFact test split, all-MiniLM-L6-v2 (packaged)
    python -m benchmarks.bench_precision --docs 500       # a quick look (first 500 documents, every test query)

The pipeline's ``trainer.precision: auto`` runs bf16 where the CPU or GPU computes it natively
(:mod:`lightning_modules.precision`); it may become the default only if it keeps the vectors (lowest cosine
to float32 >= 0.999) and the ranking quality (nDCG@10 within +-0.002 of float32) of float32. This measures
both, forcing bf16-mixed (which also works, slowly, where bf16 is only emulated), on the same texts,
encoder, truncation and batch: :func:`pipeline.embed.embed_texts` for the corpus (``title + " " + text``)
and the test queries, :func:`retrieval.search.search` (exact cosine, top 100), nDCG@10 / Recall@100 by
:func:`retrieval.metrics.evaluate_run`, and the project's paired tests over the per-query nDCG@10
differences (:func:`retrieval.significance.paired_compare`: sign-flip randomisation, exact when few queries
differ, and the paired t-test). Times of both precisions are kept (bf16 is slower where emulated).

A quality check, not a speed record: the JSON has ``kind: "quality"`` and no ``ratio``. Writes
``benchmarks/results/precision-bf16-scifact.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_embedding import DEFAULT_MODEL, bf16_supported, lowest_cosine
from benchmarks.bench_search import machine
from benchmarks.record import command_line, default_data, load_average
from core.io import write_json_atomic
from datamodules.beir import load_beir
from lightning_modules.encoder import EncoderModule
from pipeline.embed import embed_texts
from retrieval.metrics import evaluate_run
from retrieval.search import SearchConfig, search
from retrieval.significance import paired_compare

NDCG_TOLERANCE = 0.002
COSINE_LIMIT = 0.999
PRECISIONS = {"float32": "32-true", "bf16": "bf16-mixed"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a BEIR folder (default: SciFact, else the demo slice)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--docs", type=int, default=None, help="first N documents only (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/precision-bf16-scifact.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    data = args.data or default_data()
    dataset = load_beir(data, args.split)
    doc_ids = list(dataset.corpus)[: args.docs]
    documents = [(doc_id, dataset.doc_text(doc_id)) for doc_id in doc_ids]
    queries = [(qid, text) for qid, text in dataset.queries.items() if dataset.qrels.get(qid)]
    module = EncoderModule(args.model)
    native, evidence = bf16_supported(device)
    load_start = load_average()
    sides: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for name, precision in PRECISIONS.items():
            settings = {"accelerator": device.type, "devices": 1, "precision": precision}
            start = time.perf_counter()
            _, doc_vectors = embed_texts(documents, module, Path(tmp) / f"{name}-docs.safetensors",
                                         batch_size=args.batch_size, trainer_kwargs=settings)
            _, query_vectors = embed_texts(queries, module, Path(tmp) / f"{name}-queries.safetensors",
                                           batch_size=args.batch_size, trainer_kwargs=settings)
            seconds = time.perf_counter() - start
            run = search([q for q, _ in queries], query_vectors, doc_ids, doc_vectors,
                         SearchConfig(k=100, device=device.type))
            means = evaluate_run(dataset.qrels, run, k_values=[10, 100], per_query=True)
            per_query = {qid: values["ndcg@10"] for qid, values in means.per_query.items()}
            sides[name] = {"doc_vectors": doc_vectors, "query_vectors": query_vectors, "per_query": per_query,
                           "summary": {"precision": precision, "embed_seconds": round(seconds, 1),
                                       "ndcg@10": round(means["ndcg@10"], 5),
                                       "recall@100": round(means["recall@100"], 5),
                                       "load_average_1m_after": load_average()}}
            print(f"{name}: nDCG@10 {means['ndcg@10']:.4f}, Recall@100 {means['recall@100']:.4f}, embedding "
                  f"{seconds:.0f} s", flush=True)
    paired = paired_compare(sides["bf16"]["per_query"], sides["float32"]["per_query"])
    delta = paired.delta
    cosine = {"documents": lowest_cosine(sides["bf16"]["doc_vectors"], sides["float32"]["doc_vectors"]),
              "queries": lowest_cosine(sides["bf16"]["query_vectors"], sides["float32"]["query_vectors"])}
    result = {
        "name": "precision-bf16-scifact",
        "kind": "quality",
        "command": command_line("benchmarks.bench_precision", argv),
        "machine": machine(device),
        "bf16_native": native,
        "bf16_evidence": evidence,
        "what": (f"{len(documents)} documents and {len(queries)} judged {args.split} queries of {data.name}, "
                 f"{args.model}, batch {args.batch_size}, embedded by pipeline.embed.embed_texts at precision "
                 "32-true and bf16-mixed, exact cosine search top 100, nDCG@10 and Recall@100"),
        "float32": sides["float32"]["summary"],
        "bf16": sides["bf16"]["summary"],
        "ndcg@10_difference": round(delta, 5),
        "paired": {**paired.to_json(), "p_t": round(paired.p_t, 4), "p_rand": round(paired.p_rand, 4)},
        "queries_with_changed_ndcg@10": sum(abs(sides["bf16"]["per_query"][q] - value) > 1e-9
                                            for q, value in sides["float32"]["per_query"].items()),
        "lowest_cosine_bf16_vs_float32": cosine,
        "limits": {"ndcg@10": NDCG_TOLERANCE, "cosine": COSINE_LIMIT},
        "passes": abs(delta) <= NDCG_TOLERANCE and min(cosine.values()) >= COSINE_LIMIT,
        "load_average_1m": {"start": load_start, "end": load_average()},
    }
    write_json_atomic(args.output, result)
    print(f"bf16 - float32 nDCG@10 {delta:+.5f} (paired randomisation p {paired.p_rand:.4f}, t-test p "
          f"{paired.p_t:.4f}), lowest cosine {cosine}; "
          f"passes: {result['passes']}; written: {args.output}")
    return result


if __name__ == "__main__":
    main()
