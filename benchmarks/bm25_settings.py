"""BM25 analysis settings on a BEIR folder, each split, with a paired test against the default (docs/bm25.md).

Why: ``BM25Config``'s defaults copy Pyserini's BEIR flat run instead of being tuned on test scores; this records
what other principled settings give, on the train split too, so the choice can be checked.

    python -m benchmarks.bm25_settings --data ../shared/data/scifact --splits test train \\
        --output benchmarks/results/bm25-settings

Writes ``<output>.json`` (``ratio``: our default's test nDCG@10 over the ``anchor``, Pyserini's published BM25
flat figure) and ``<output>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.beir import load_beir
from retrieval.bm25 import BM25Config, bm25_search
from core.io import write_json_atomic, write_text_atomic
from retrieval.metrics import evaluate_run
from retrieval.significance import paired_compare

BM25S_TOKENS = r"(?u)\b\w\w+\b"  # bm25s' own token pattern: words of two or more characters
SETTINGS: dict[str, dict[str, Any]] = {
    "default (Porter, Lucene-like tokens)": {},
    "stemmer english (Snowball Porter2)": {"stemmer": "english"},
    "stemmer null": {"stemmer": None},
    "bm25s tokeniser (>= 2 characters, no possessive filter)": {"token_pattern": BM25S_TOKENS,
                                                                "strip_possessives": False},
    "k1 1.2, b 0.75 (textbook)": {"k1": 1.2, "b": 0.75},
    "bm25s tokens, no stemmer, no possessive filter (stop words 'en')": {"token_pattern": BM25S_TOKENS,
                                                                     "strip_possessives": False, "stemmer": None},
}
PYSERINI_SCIFACT = {"system": "Pyserini BM25 flat, SciFact test (published, pyserini 2cr/beir.yaml)",
                    "ndcg@10": 0.6789}


def run(data: Path, splits: Sequence[str], output: Path, command: str) -> dict[str, Any]:
    start = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {name: {"config": overrides} for name, overrides in SETTINGS.items()}
    per_split: dict[str, dict[str, int]] = {}
    for split in splits:
        dataset = load_beir(data, split)
        documents = [(doc_id, dataset.doc_text(doc_id)) for doc_id in dataset.doc_ids]
        queries = list(dataset.queries.items())
        per_split[split] = {"queries": len(queries), "documents": len(documents)}
        default = None
        for name, overrides in SETTINGS.items():
            config = dataclasses.replace(BM25Config(), **overrides)
            scores = evaluate_run(dataset.qrels, bm25_search(documents, queries, config, progress=False),
                                  k_values=[10, 100], per_query=True)
            ndcg = {query: values["ndcg@10"] for query, values in scores.per_query.items()}
            entry = {"ndcg@10": scores["ndcg@10"], "recall@100": scores["recall@100"]}
            if default is None:
                default = ndcg
            else:
                entry["vs_default"] = paired_compare(ndcg, default).to_json()
            rows[name][split] = entry
            print(f"{split:6s} {scores['ndcg@10']:.4f}  {name}", flush=True)
    default_test = rows[next(iter(SETTINGS))].get("test", {}).get("ndcg@10")
    return {"name": "bm25-settings", "command": command, "machine": _machine(), "data": str(data),
            "splits": per_split, "anchor": PYSERINI_SCIFACT,
            "ratio": round(default_test / PYSERINI_SCIFACT["ndcg@10"], 4) if default_test else None,
            "rows": rows, "seconds": round(time.perf_counter() - start, 1)}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at the end"


def markdown(result: dict[str, Any]) -> str:
    splits = list(result["splits"])
    head = "| setting | " + " | ".join(f"{s} nDCG@10 | {s} Δ vs default (p_rand, p_t)" for s in splits) + " |"
    lines = [f"# BM25 settings on `{result['data']}`", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; {result['seconds']} s.", "", head,
             "|---|" + "---:|---:|" * len(splits)]
    for name, row in result["rows"].items():
        cells = []
        for split in splits:
            entry = row[split]
            vs = entry.get("vs_default")
            delta = "—" if vs is None else f"{100 * vs['delta']:+.2f} ({_p(vs['p_rand'])}, {_p(vs['p_t'])})"
            cells += [f"{entry['ndcg@10']:.4f}", delta]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Δ: nDCG@10 points (×100) over the default on the same queries; p_rand: paired randomisation test "
              "(10,000 draws, seed 0), p_t: paired t-test, both two-sided.", ""]
    return "\n".join(lines)


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else "< 0.001"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a BEIR folder")
    parser.add_argument("--splits", nargs="+", default=["test", "train"])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bm25-settings"),
                        help="writes <output>.json and <output>.md")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.bm25_settings " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = run(args.data, args.splits, args.output, command)
    write_json_atomic(args.output.with_suffix(".json"), result)
    write_text_atomic(args.output.with_suffix(".md"), markdown(result))
    return result


if __name__ == "__main__":
    main()
