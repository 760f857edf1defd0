"""nDCG@k, MAP@k, Recall@k, Precision@k and MRR@k with BEIR's numbers (pytrec_eval / trec_eval semantics).

Why not torchmetrics: its retrieval nDCG builds the ideal ranking only from the retrieved candidates,
averages tied scores and scores queries without positives as 0, so it disagrees with published BEIR
figures. This module reproduces trec_eval (which BEIR calls through pytrec_eval) exactly, without
needing it at run time:

- Ranking: score descending; equal scores by document id *descending* in byte order (trec_eval's
  ``strcmp(docno2, docno1)``). Documents are relevant when their grade is >= 1 (trec_eval's default
  ``relevance_level``); unjudged documents count as grade 0.
- nDCG@k (``ndcg_cut``): gain = grade (negative grades count 0), discount log2(rank + 1); the ideal
  DCG is built from *all* judged documents of the query, cut at k.
- MAP@k (``map_cut``): sum of precision at each relevant rank <= k, divided by all relevant documents.
- Recall@k: relevant in the top k / all relevant; Precision@k: relevant in the top k / k, also when
  the run holds fewer than k documents.
- MRR@k: trec_eval's ``recip_rank`` on the run cut at k (1 / rank of the first relevant document,
  0 if none is in the top k). BEIR computes MRR with its own code (Python's stable sort keeps the
  run's insertion order among ties and it divides by all qrels queries), so its MRR can differ
  from ours on tied scores or missing queries; ours follows trec_eval's order like every other metric.
- Mean over the queries that are both judged (at least one qrels line, even if all grades are 0)
  and present in the run (an empty result dict counts, as 0). That is what pytrec_eval evaluates and
  what BEIR averages. ``missing_as_zero`` also counts judged queries absent from the run as 0
  (``trec_eval -c``).
- BEIR's rule ``ignore_identical_ids``: a retrieved document whose id equals the query id is dropped
  before evaluation (the caller's run is not modified). Values are not rounded (BEIR rounds to 5 digits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np

DEFAULT_K = (1, 3, 5, 10, 100, 1000)
METRICS = ("ndcg", "map", "recall", "precision", "mrr")
#: trec_eval's default: grades >= 1 are relevant.
RELEVANCE_LEVEL = 1

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


class Evaluation(dict):
    """The mean of every metric (a plain ``{key: value}`` dict) and, in ``per_query``, each query's values.

    ``per_query`` is ``{query id: {metric key: value}}`` for exactly the queries the means average over,
    so the mean of a column equals the dict's value; paired significance tests read it.
    """

    def __init__(self, means: Mapping[str, float], per_query: dict[str, dict[str, float]] | None = None) -> None:
        super().__init__(means)
        self.per_query = per_query


def evaluate_run(qrels: Qrels, run: Run, k_values: Sequence[int] = DEFAULT_K, ignore_identical_ids: bool = True,
                 per_query: bool = False, missing_as_zero: bool = False) -> Evaluation:
    """Mean of every metric at every k, keys ``"ndcg@10"``, ``"mrr@100"``, ... (see the module docstring).

    With ``per_query`` the result's ``per_query`` holds ``{query id: {metric key: value}}`` for the queries
    averaged (with ``missing_as_zero`` also the judged queries absent from the run, as 0); else it is None.
    """
    ks = _check_k_values(k_values)
    judged = [qid for qid, judgements in qrels.items() if len(judgements) > 0]
    evaluated = [qid for qid in judged if qid in run]
    missing = [qid for qid in judged if qid not in run]
    if not evaluated:
        raise ValueError(f"no judged query appears in the run ({len(judged)} judged queries, {len(run)} in the "
                         f"run): check that both use the same query ids and qrels split")
    values = _per_query_metrics(qrels, run, evaluated, ks, ignore_identical_ids)
    n_counted = len(evaluated) + (len(missing) if missing_as_zero else 0)
    means = {key: float(column.sum() / n_counted) for key, column in values.items()}
    if not per_query:
        return Evaluation(means)
    table = {qid: {key: float(column[row]) for key, column in values.items()} for row, qid in enumerate(evaluated)}
    if missing_as_zero:
        table.update({qid: dict.fromkeys(values, 0.0) for qid in missing})
    return Evaluation(means, table)


def _check_k_values(k_values: Sequence[int]) -> list[int]:
    ks = list(dict.fromkeys(k_values))
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"k_values must be positive integers, got {list(k_values)}")
    return [int(k) for k in ks]


def _per_query_metrics(qrels: Qrels, run: Run, qids: list[str], ks: list[int],
                       ignore_identical_ids: bool) -> dict[str, np.ndarray]:
    """One array per metric key, one entry per query in ``qids``; all arithmetic on flat arrays."""
    rankings = [_without_self(qid, run[qid]) if ignore_identical_ids else run[qid] for qid in qids]
    query_of, pos, grade = _rank_entries(qrels, qids, rankings)
    n = len(qids)
    relevant = grade >= RELEVANCE_LEVEL
    gain_at = np.maximum(grade, 0) / np.log2(pos + 2.0)
    # running count of relevant documents at each rank, restarted per query (entries are query-major)
    hits_so_far = np.cumsum(relevant)
    starts = np.searchsorted(query_of, np.arange(n))
    hits_so_far -= np.concatenate([[0], hits_so_far])[starts][query_of]
    precision_at = hits_so_far / (pos + 1.0)
    first_hit = np.full(n, np.inf)
    np.minimum.at(first_hit, query_of[relevant], pos[relevant])
    n_relevant, ideal_query, ideal_gain_at, ideal_pos = _ideal(qrels, qids)

    def per_query_sum(mask: np.ndarray, weights: np.ndarray | None = None, of: np.ndarray = query_of) -> np.ndarray:
        return np.bincount(of[mask], weights=None if weights is None else weights[mask], minlength=n)

    out: dict[str, np.ndarray] = {}
    safe_relevant = np.maximum(n_relevant, 1)  # queries with no relevant document score 0 everywhere
    for k in ks:
        top = pos < k
        hits = per_query_sum(top & relevant)
        dcg = per_query_sum(top, gain_at)
        ideal = per_query_sum(ideal_pos < k, ideal_gain_at, ideal_query)
        out[f"ndcg@{k}"] = np.divide(dcg, ideal, out=np.zeros(n), where=ideal > 0)
        out[f"map@{k}"] = per_query_sum(top & relevant, precision_at) / safe_relevant
        out[f"recall@{k}"] = hits / safe_relevant
        out[f"precision@{k}"] = hits / k
        out[f"mrr@{k}"] = np.where(first_hit < k, 1.0 / (first_hit + 1.0), 0.0)
    return {f"{name}@{k}": out[f"{name}@{k}"] for name in METRICS for k in ks}


def _without_self(qid: str, ranking: Mapping[str, float]) -> Mapping[str, float]:
    return {doc: score for doc, score in ranking.items() if doc != qid} if qid in ranking else ranking


def _rank_entries(qrels: Qrels, qids: list[str], rankings: list[Mapping[str, float]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten the run into (query index, 0-based rank, grade) arrays in trec_eval's order."""
    lengths = np.fromiter((len(r) for r in rankings), dtype=np.int64, count=len(rankings))
    total = int(lengths.sum())
    query_of = np.repeat(np.arange(len(qids)), lengths)
    docs = list(chain.from_iterable(rankings))
    scores = np.fromiter(chain.from_iterable(r.values() for r in rankings), dtype=np.float64, count=total)
    if np.isnan(scores).any():
        bad = int(np.isnan(scores).argmax())
        raise ValueError(f"run score for query {qids[query_of[bad]]!r}, document {docs[bad]!r} is NaN")
    grade = np.fromiter(chain.from_iterable((qrels[qid].get(doc, 0) for doc in ranking)
                                            for qid, ranking in zip(qids, rankings)), dtype=np.int64, count=total)
    # Python's str order is code-point order, which equals the UTF-8 byte order strcmp uses.
    doc_rank = {doc: i for i, doc in enumerate(sorted(set(docs)))}
    id_order = np.fromiter((doc_rank[doc] for doc in docs), dtype=np.int64, count=total)
    order = np.lexsort((-id_order, -scores, query_of))  # query, then score desc, then id desc
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(total) - starts[query_of]  # query_of is already sorted, so it is unchanged by `order`
    return query_of, pos, grade[order]


def _ideal(qrels: Qrels, qids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: number of relevant documents, and the ideal ranking's (query, discounted gain, rank)."""
    grades = [np.fromiter(qrels[qid].values(), dtype=np.int64, count=len(qrels[qid])) for qid in qids]
    n_relevant = np.array([int((g >= RELEVANCE_LEVEL).sum()) for g in grades], dtype=np.int64)
    lengths = np.array([len(g) for g in grades], dtype=np.int64)
    ideal_query = np.repeat(np.arange(len(qids)), lengths)
    all_grades = np.maximum(np.concatenate(grades), 0)
    order = np.lexsort((-all_grades, ideal_query))
    ideal_pos = np.arange(len(all_grades)) - np.concatenate([[0], np.cumsum(lengths)[:-1]])[ideal_query]
    return n_relevant, ideal_query, all_grades[order] / np.log2(ideal_pos + 2.0), ideal_pos
