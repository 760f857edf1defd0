"""BM25 baseline: Lucene's scoring, Lucene-like analysis, BEIR's identical-id rule, clear config errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from retrieval.bm25 import BM25Config, bm25_search, load_stemmer, tokenize

TINY_BEIR = Path(__file__).resolve().parent / "data" / "tiny_beir"
PLAIN = BM25Config(stemmer=None, stopwords=None)
DOCS = [
    ("d1", "Aspirin reduces the risk of heart attack in adults."),
    ("d2", "Vitamin D levels and bone density in older women."),
    ("d3", "Heart failure outcomes after cardiac surgery."),
    ("d4", "Gut microbiome composition shapes immune responses."),
]


def test_obviously_matching_document_ranks_first() -> None:
    run = bm25_search(DOCS, [("q1", "does aspirin lower heart attack risk"), ("q2", "microbiome and immunity")],
                      PLAIN, progress=False)
    assert max(run["q1"], key=run["q1"].get) == "d1"
    assert max(run["q2"], key=run["q2"].get) == "d4"


def test_scores_are_lucene_bm25() -> None:
    """idf = ln(1 + (N - df + .5) / (df + .5)); tf part = tf / (tf + k1 (1 - b + b dl / avgdl)); summed over terms."""
    docs = [("a", "cat cat dog"), ("b", "dog bird"), ("c", "fish")]
    config = BM25Config(k1=0.9, b=0.4, stemmer=None, stopwords=None)
    run = bm25_search(docs, [("q", "cat dog")], config, progress=False)
    lengths, avgdl, n = {"a": 3, "b": 2}, 2.0, 3

    def term(tf: int, df: int, dl: int) -> float:
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + 0.9 * (1 - 0.4 + 0.4 * dl / avgdl))

    assert run["q"]["a"] == pytest.approx(term(2, 1, lengths["a"]) + term(1, 2, lengths["a"]), rel=1e-5)
    assert run["q"]["b"] == pytest.approx(term(1, 2, lengths["b"]), rel=1e-5)
    assert "c" not in run["q"], "a document sharing no term is left out, as Lucene leaves it out"


def test_identical_ids_ignored_and_k_respected() -> None:
    docs = [("q1", "heart attack"), ("d1", "heart attack aspirin"), ("d2", "heart"), ("d3", "attack risk factors")]
    run = bm25_search(docs, [("q1", "heart attack")], BM25Config(stemmer=None, k=2), progress=False)
    assert list(run["q1"]) == ["d1", "d2"], "the query's own id is dropped and still k results come back"
    kept = bm25_search(docs, [("q1", "heart attack")], PLAIN, ignore_identical_ids=False, progress=False)
    assert max(kept["q1"], key=kept["q1"].get) == "q1"


def test_lucene_like_analysis() -> None:
    config = BM25Config(stemmer=None)
    tokens = tokenize(["The cell's p53 level (3.5 mg, e.g. in U.S.) is a marker of T cells"], config, None, False)
    # Lucene's 33 English stop words go ("the", "is", "a", "of", "in"); the possessive 's goes; one-letter
    # tokens stay; "3.5", "e.g" and "u.s" stay whole as Lucene's StandardTokenizer keeps them.
    assert tokens == [["cell", "p53", "level", "3.5", "mg", "e.g", "u.s", "marker", "t", "cells"]]


def test_query_without_known_terms_returns_nothing() -> None:
    run = bm25_search(DOCS, [("q1", "the of"), ("q2", "zzzz"), ("q3", "")], BM25Config(stemmer=None),
                      progress=False)
    assert run == {"q1": {}, "q2": {}, "q3": {}}


def test_porter_stemming_matches_inflections() -> None:
    pytest.importorskip("Stemmer")
    docs = [("d1", "Patients running daily"), ("d2", "Patients sleep daily")]
    stemmed = bm25_search(docs, [("q", "runs")], BM25Config(stemmer="porter"), progress=False)
    unstemmed = bm25_search(docs, [("q", "runs")], BM25Config(stemmer=None), progress=False)
    assert list(stemmed["q"]) == ["d1"]
    assert unstemmed["q"] == {}


def test_missing_pystemmer_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "Stemmer", None)
    with pytest.raises(ImportError, match=r"bm25.stemmer='porter' needs PyStemmer.*or set bm25.stemmer to null"):
        load_stemmer("porter")


def test_unknown_stemmer_names_the_choices() -> None:
    pytest.importorskip("Stemmer")
    with pytest.raises(ValueError, match=r"bm25.stemmer='klingon' is not a PyStemmer algorithm.*porter"):
        load_stemmer("klingon")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"b": 1.5}, r"bm25.b must lie in \[0, 1\]"),
    ({"k1": -1.0}, "bm25.k1 must be >= 0"),
    ({"k": 0}, "bm25.k must be >= 1"),
    ({"token_pattern": "(unclosed"}, "bm25.token_pattern is not a valid regular expression"),
])
def test_bad_config_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BM25Config(**kwargs)


def test_unknown_stopword_list_names_the_field() -> None:
    with pytest.raises(ValueError, match="bm25.stopwords='klingon'.*not recognized"):
        bm25_search(DOCS, [("q", "heart")], BM25Config(stemmer=None, stopwords="klingon"), progress=False)


def test_tiny_beir_each_judged_query_finds_its_document_first() -> None:
    from datamodules.beir import load_beir

    dataset = load_beir(TINY_BEIR, "test")
    run = bm25_search([(doc_id, dataset.doc_text(doc_id)) for doc_id in dataset.doc_ids],
                      list(dataset.queries.items()), BM25Config(stemmer=None), progress=False)
    for query_id, judged in dataset.qrels.items():
        top = max(run[query_id], key=run[query_id].get)
        assert top in judged, f"{query_id}: top document {top} is not one of the judged {sorted(judged)}"
