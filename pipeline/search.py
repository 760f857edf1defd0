"""``train.py search``: queries against a run's index, encoded with the index's own encoder.

    python3 train.py search --index runs/demo/index --query "does vitamin D prevent fractures?"
    python3 train.py search --index runs/demo/index --queries queries.jsonl --qrels qrels/test.tsv \
        --top_k 100 --output run.trec

Everything is checked before a file is written: the index folder against its manifest (sizes, SHA-256,
counts), the encoder against the one that built the index (its fingerprint and dimension), the queries
and qrels files line by line. Queries are embedded the way the embed stage embedded the run's queries
(same encoder, batch size and precision), so a run's query file searched here scores as its results row.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from core.io import InputError, iter_jsonl
from datamodules.beir import read_qrels, read_queries
from lightning_modules.encoder import EncoderModule
from pipeline.embed import embed_texts
from retrieval.index_files import Index, load_index, search_index
from retrieval.metrics import evaluate_run
from retrieval.search import SearchConfig
from retrieval.trec import write_trec_run

log = logging.getLogger(__name__)
METRICS = ("ndcg@10", "mrr@100", "recall@100")


def run_search(index: Path, queries: Path | None = None, query: str | None = None, qrels: Path | None = None,
               top_k: int = 100, output: Path | None = None, encoder: str | None = None, faiss: bool = False,
               device: str | None = None) -> dict[str, dict[str, float]]:
    """Search ``index`` with a queries file or one query; print a ranked table or metrics; write a TREC run.

    Args:
        index: an index folder (``<run_dir>/index``).
        queries: a ``queries.jsonl`` (``{"_id", "text"}`` a line).
        query: one query text, printed as a ranked table (rank, doc id, score, title).
        qrels: judgements (``query-id<TAB>corpus-id<TAB>score``): also print nDCG@10, MRR@100, Recall@100.
        top_k: documents kept per query.
        output: write the run here in TREC format (``qid Q0 docid rank score tag``).
        encoder: the encoder to embed queries with; default the manifest's. Refused unless it is the one
            that built the index.
        faiss: search the index's ``index.faiss`` instead of exact search.
        device: where exact search computes ("cpu", "cuda"); null: the GPU when there is one.
    """
    if (queries is None) == (query is None):
        raise InputError("give either --queries FILE or --query TEXT", field="queries")
    if query is not None and not query.strip():
        raise InputError("the query is empty", field="query")
    if qrels is not None and queries is None:
        raise InputError("--qrels needs --queries (a file whose ids the judgements name)", field="qrels")
    if top_k < 1:
        raise InputError(f"--top_k must be >= 1, got {top_k}", field="top_k")
    built = load_index(index)
    texts = read_queries(queries) if queries is not None else {"query": query}
    judged = _judgements(qrels, texts) if qrels is not None else None
    module = _query_encoder(built, encoder)
    vectors = _embed_queries(built, module, texts, progress=query is None)
    run = search_index(built, list(texts), vectors, SearchConfig(k=top_k, device=device), use_faiss=faiss)
    if output is not None:
        lines = write_trec_run(output, run, built.system)
        print(f"wrote {lines} lines for {len(run)} queries to {output} (TREC run, tag {built.system})")
    if query is not None:
        print(_ranked_table(built, run["query"]))
    if judged is not None:
        metrics = evaluate_run(judged, run, k_values=[10, 100])
        print(f"{built.system} on {len(judged)} judged queries: "
              + ", ".join(f"{name} {metrics[name]:.4f}" for name in METRICS))
    return run


def _judgements(path: Path, queries: dict[str, str]) -> dict[str, dict[str, int]]:
    if not Path(path).is_file():
        raise InputError("file not found", path=path, field="qrels")
    qrels: dict[str, dict[str, int]] = {}
    for judgement in read_qrels(Path(path)):
        qrels.setdefault(judgement.query_id, {})[judgement.doc_id] = judgement.score
    unknown = [qid for qid in qrels if qid not in queries]
    if len(unknown) == len(qrels):
        raise InputError(f"no judged query is in the queries file (e.g. '{unknown[0]}')", path=path,
                         hint="give the queries.jsonl of the same dataset")
    if unknown:
        log.warning("%s: %d judged queries are not in the queries file and are not scored", path, len(unknown))
    return {qid: docs for qid, docs in qrels.items() if qid in queries}


def _query_encoder(index: Index, encoder: str | None) -> EncoderModule:
    """The index's encoder, refused if its files, pooling or dimension are not those that built the index."""
    name = encoder or index.encoder
    try:
        module = EncoderModule(name)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the encoder '{name}' ({err})", path=index.path / "manifest.json",
                         field="encoder", hint="the index records the encoder that built it; give it with --encoder "
                                               "if it moved") from None
    if module.dim != index.dim:
        raise InputError(f"encoder '{name}' gives {module.dim}-dimensional vectors but the index holds {index.dim}",
                         path=index.path / "manifest.json", field="dim", hint="search with the index's own encoder")
    if module.fingerprint() != index.manifest.get("encoder_fingerprint"):
        raise InputError(f"encoder '{name}' is not the one that built this index (fingerprint {module.fingerprint()}, "
                         f"the index's {index.manifest.get('encoder_fingerprint')}: other weights, pooling or "
                         "truncation)", path=index.path / "manifest.json", field="encoder_fingerprint",
                         hint=f"search with {index.manifest.get('encoder')}, or rebuild the index with this encoder")
    return module


def _embed_queries(index: Index, module: EncoderModule, texts: dict[str, str], progress: bool) -> torch.Tensor:
    settings = {"accelerator": "auto", "devices": 1, "precision": index.manifest.get("embedding_precision", "32-true"),
                "logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    with tempfile.TemporaryDirectory(prefix="search-") as tmp:  # nothing is left beside the index
        _, vectors = embed_texts(list(texts.items()), module, Path(tmp) / "queries.safetensors",
                                 batch_size=int(index.manifest.get("query_batch_size", 64)), trainer_kwargs=settings,
                                 progress=progress)
    return vectors


def _ranked_table(index: Index, hits: dict[str, float]) -> str:
    titles = _titles(index, set(hits))
    lines = ["| rank | doc id | score | title |", "|---:|---|---:|---|"]
    lines += [f"| {rank} | {doc_id} | {score:.4f} | {titles.get(doc_id, '')} |"
              for rank, (doc_id, score) in enumerate(hits.items(), start=1)]
    return "\n".join(lines)


def _titles(index: Index, wanted: set[str]) -> dict[str, str]:
    """Titles of ``wanted`` from the corpus the manifest names (read until all are found)."""
    corpus = Path(str(index.manifest.get("corpus", "")))
    if not corpus.is_file():
        print(f"(titles left out: the corpus {corpus} is not there)")
        return {}
    titles: dict[str, str] = {}
    for _, obj in iter_jsonl(corpus):
        doc_id = str(obj.get("_id"))
        if doc_id in wanted:
            titles[doc_id] = " ".join(str(obj.get("title") or obj.get("text", "")[:60]).split())
            if len(titles) == len(wanted):
                break
    return titles
