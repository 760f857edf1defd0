"""Metrics equal pytrec_eval (what BEIR calls) to 1e-6: random runs with heavy ties, hand cases, real BM25 runs."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

pytrec_eval = pytest.importorskip("pytrec_eval")

from retrieval.metrics import DEFAULT_K, METRICS, evaluate_run  # noqa: E402

TINY_BEIR = Path(__file__).parent / "data" / "tiny_beir"
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
TREC_NAMES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}


def trec_order(ranking: dict[str, float]) -> list[str]:
    """trec_eval's ranking: score descending, then document id descending."""
    return sorted(ranking, key=lambda doc: (ranking[doc], doc), reverse=True)


def pytrec_reference(qrels: dict, run: dict, ks: list[int]) -> dict[str, dict[str, float]]:
    """Per-query metrics from pytrec_eval, keyed like ours; MRR@k = recip_rank on the run cut at k."""
    measures = {f"{name}.{','.join(map(str, ks))}" for name in TREC_NAMES.values()}
    evaluated = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    table = {}
    for qid, values in evaluated.items():
        row = {f"{ours}@{k}": values[f"{trec}_{k}"] for ours, trec in TREC_NAMES.items() for k in ks}
        for k in ks:
            cut = {qid: {doc: run[qid][doc] for doc in trec_order(run[qid])[:k]}}
            row[f"mrr@{k}"] = pytrec_eval.RelevanceEvaluator({qid: qrels[qid]}, {"recip_rank"}).evaluate(cut)[qid][
                "recip_rank"]
        table[qid] = row
    return table


def assert_equals_pytrec(qrels: dict, run: dict, ks: list[int], ignore_identical_ids: bool = False) -> None:
    """Ours equals pytrec_eval per query and on the mean; with ``ignore_identical_ids`` the reference gets
    the run with each query's own id removed, as BEIR removes it before calling pytrec_eval."""
    ours_mean = evaluate_run(qrels, run, ks, ignore_identical_ids=ignore_identical_ids, per_query=True)
    ours = ours_mean.per_query
    if ignore_identical_ids:
        run = {qid: {doc: score for doc, score in hits.items() if doc != qid} for qid, hits in run.items()}
    reference = pytrec_reference(qrels, run, ks)
    assert set(ours) == set(reference), "the same queries are evaluated"
    for qid, row in reference.items():
        for key, value in row.items():
            assert ours[qid][key] == pytest.approx(value, abs=1e-6), (qid, key)
    for key in ours_mean:
        mean = sum(row[key] for row in reference.values()) / len(reference)
        assert ours_mean[key] == pytest.approx(mean, abs=1e-6), key
        own_mean = sum(row[key] for row in ours.values()) / len(ours)  # the per-query values average to the mean
        assert ours_mean[key] == pytest.approx(own_mean, abs=1e-12), key


def random_case(rng: random.Random) -> tuple[dict, dict]:
    """Few distinct scores (heavy ties), grades -1/0/1/2 (trec_eval counts negative gains as 0), ids that sort differently as strings and numbers,
    non-ASCII ids, queries judged but not run, run but not judged, judged with only grade 0, empty results."""
    pool = [f"d{i}" for i in range(25)] + ["9", "10", "100", "B", "b", "é", "z", "q0"]
    qrels, run = {}, {}
    for q in range(rng.randint(1, 8)):
        qid = f"q{q}"
        if rng.random() < 0.85:
            qrels[qid] = {doc: rng.choice([-1, 0, 0, 1, 1, 2]) for doc in rng.sample(pool, rng.randint(1, 8))}
        if rng.random() < 0.85:
            docs = rng.sample(pool, rng.randint(0, len(pool)))
            run[qid] = {doc: rng.choice([0.5, 1.0, 1.5, -2.0, 3.25]) for doc in docs}
    if qrels and not any(qid in run for qid in qrels):
        run[next(iter(qrels))] = {}  # an empty result list still counts (as 0)
    return qrels, run


@pytest.mark.parametrize("seed", range(4))
def test_random_tied_runs_equal_pytrec_eval(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        qrels, run = random_case(rng)
        if not qrels:
            continue
        for ignore_identical_ids in (False, True):  # the pool holds "q0": query id == document id happens
            assert_equals_pytrec(qrels, run, [1, 2, 3, 5, 10, 100, 1000], ignore_identical_ids)  # k > run length


def test_ties_are_broken_by_document_id_descending() -> None:
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "top": 2.0}}
    result = evaluate_run(qrels, run, [1, 3, 4])
    # trec_eval ranks top, c, b, a: the only relevant document comes 4th
    assert result["mrr@3"] == 0.0 and result["mrr@4"] == pytest.approx(0.25)
    assert result["precision@3"] == 0.0 and result["recall@4"] == 1.0
    assert result["ndcg@4"] == pytest.approx(1 / math.log2(5))


def test_ideal_dcg_uses_every_judged_document_and_short_runs_keep_k_as_denominator() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 1, "unretrieved": 2, "non": 0}}
    run = {"q": {"a": 0.9, "x": 0.8, "b": 0.7}}
    result = evaluate_run(qrels, run, [3, 10])
    dcg = 2 + 1 / math.log2(4)
    ideal = 2 + 2 / math.log2(3) + 1 / math.log2(4)
    assert result["ndcg@3"] == pytest.approx(dcg / ideal)
    assert result["map@10"] == pytest.approx((1 / 1 + 2 / 3) / 4), "MAP divides by all 4 relevant documents"
    assert result["recall@10"] == pytest.approx(2 / 4)
    assert result["precision@10"] == pytest.approx(2 / 10)


def test_which_queries_are_averaged() -> None:
    qrels = {"judged": {"a": 1}, "only_zero": {"a": 0}, "not_run": {"a": 1}, "empty_qrels": {}}
    run = {"judged": {"a": 1.0}, "only_zero": {"a": 1.0}, "empty_qrels": {"a": 1.0}, "unjudged": {"a": 1.0}}
    means = evaluate_run(qrels, run, [10], per_query=True)
    table = means.per_query
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    assert set(table) == set(reference) == {"judged", "only_zero"}, "grade-0-only queries count (as 0), like pytrec_eval"
    assert means["ndcg@10"] == pytest.approx(0.5)
    zero_means = evaluate_run(qrels, run, [10], per_query=True, missing_as_zero=True)
    zero_table = zero_means.per_query
    assert zero_means["ndcg@10"] == pytest.approx(1 / 3) and zero_table["not_run"]["ndcg@10"] == 0.0
    assert list(means) == [f"{name}@10" for name in METRICS]
    with pytest.raises(ValueError, match="no judged query appears in the run"):
        evaluate_run(qrels, {"unjudged": {"a": 1.0}})


def test_identical_ids_are_ignored_without_touching_the_run() -> None:
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 5.0, "d1": 1.0}}
    assert evaluate_run(qrels, run, [1])["ndcg@1"] == 1.0
    assert evaluate_run(qrels, run, [1], ignore_identical_ids=False)["ndcg@1"] == 0.0
    assert "q1" in run["q1"], "the caller's run is left as it was"
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1"}).evaluate({"q1": {"d1": 1.0}})
    assert reference["q1"]["ndcg_cut_1"] == 1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k_values must be positive integers"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, [10, 0])
    with pytest.raises(ValueError, match="run score for query 'q', document 'a' is NaN"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": float("nan")}})


def bm25_run(dataset, query_ids: list[str]) -> dict[str, dict[str, float]]:
    from retrieval.bm25 import BM25Config, bm25_search

    documents = [(doc_id, dataset.doc_text(doc_id)) for doc_id in dataset.doc_ids]
    queries = [(qid, dataset.queries[qid]) for qid in query_ids]
    return bm25_search(documents, queries, BM25Config(k=1000, stemmer=None), progress=False)


def test_real_bm25_run_on_tiny_beir_equals_pytrec_eval(tmp_path: Path) -> None:
    from datamodules.beir import load_beir

    dataset = load_beir(TINY_BEIR, "test", cache_dir=tmp_path)
    run = bm25_run(dataset, list(dataset.queries))  # every query, also unjudged ones, as BEIR runs them
    assert_equals_pytrec(dataset.qrels, run, list(DEFAULT_K) + [2, 20])


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="the shared SciFact copy is not on this machine")
def test_real_bm25_run_on_scifact_equals_pytrec_eval(tmp_path: Path) -> None:
    from datamodules.beir import load_beir

    dataset = load_beir(SCIFACT, "test", cache_dir=tmp_path)
    run = bm25_run(dataset, list(dataset.qrels))
    assert_equals_pytrec(dataset.qrels, run, list(DEFAULT_K))
    assert 0.6 < evaluate_run(dataset.qrels, run)["ndcg@10"] < 0.75, "BM25 on SciFact is near the published 0.68"
