"""BM25 lexical baseline with bm25s, configured to behave like Pyserini's BEIR "flat" runs.

Why these defaults: the published BM25 figures for BEIR come from Pyserini (Lucene), so the
baseline is only comparable when it scores and analyses text as Lucene does: Lucene's BM25
(idf = ln(1 + (N - df + 0.5) / (df + 0.5)), k1 = 0.9, b = 0.4), Lucene's 33 English stop words,
the original Porter stemmer, English possessives stripped, and a tokeniser that approximates
Lucene's StandardTokenizer (single characters kept, "3.5" and "e.g" held together). Title and
text are one field (BEIR's "title text" join). The remaining differences are in docs/bm25.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import bm25s

# Word characters joined across '.' and apostrophes, as UAX#29 (Lucene's StandardTokenizer) joins
# letters or digits across MidNumLet; unlike bm25s' default, one-character tokens are kept.
LUCENE_TOKEN_PATTERN = r"(?u)\w+(?:[.'’]\w+)*"
# Lucene's EnglishPossessiveFilter: a trailing 's is dropped before stop words and stemming.
_POSSESSIVE = re.compile(r"(?<=\w)['’][sS]\b")

Run = dict[str, dict[str, float]]


@dataclass
class BM25Config:
    """How BM25 analyses text and scores documents (defaults: Pyserini's BEIR flat setting).

    Attributes:
        k1: term-frequency saturation (Pyserini's BEIR runs use 0.9).
        b: document-length normalisation (Pyserini's BEIR runs use 0.4).
        method: bm25s scoring variant; "lucene" is Lucene's BM25 (what Pyserini runs).
        stemmer: a PyStemmer algorithm ("porter" is Lucene's PorterStemFilter, "english" is Porter2/Snowball);
            null indexes unstemmed words.
        stopwords: a bm25s stop-word list name ("en" is Lucene's 33 English stop words); null keeps every word.
        token_pattern: regular expression whose matches are the tokens (after lower-casing).
        strip_possessives: drop a trailing 's before stop words and stemming, as Lucene's English analyzer does.
        k: documents kept per query (those with a positive score; Lucene returns only matching documents).
    """

    k1: float = 0.9
    b: float = 0.4
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stemmer: str | None = "porter"
    stopwords: str | None = "en"
    token_pattern: str = LUCENE_TOKEN_PATTERN
    strip_possessives: bool = True
    k: int = 1000

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"bm25.k1 must be >= 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"bm25.b must lie in [0, 1], got {self.b}")
        if self.k < 1:
            raise ValueError(f"bm25.k must be >= 1, got {self.k}")
        try:
            re.compile(self.token_pattern)
        except re.error as err:
            raise ValueError(f"bm25.token_pattern is not a valid regular expression: {err}") from None


def load_stemmer(name: str | None) -> Any:
    """A PyStemmer stemmer for ``name``, or None; a clear error when PyStemmer or the algorithm is missing."""
    if name is None:
        return None
    try:
        import Stemmer  # here: only a configured stemmer needs it, and a missing one gets this clear error
    except ImportError:
        raise ImportError(f"bm25.stemmer='{name}' needs PyStemmer: `pip install PyStemmer` (a declared dependency "
                          "of this project), or set bm25.stemmer to null to index unstemmed words") from None
    if name not in Stemmer.algorithms():
        raise ValueError(f"bm25.stemmer='{name}' is not a PyStemmer algorithm; choose one of "
                         f"{', '.join(Stemmer.algorithms())} (or null)")
    return Stemmer.Stemmer(name)


def tokenize(texts: Sequence[str], config: BM25Config, stemmer: Any, progress: bool = True) -> list[list[str]]:
    """Lower-case, split, drop stop words and stem ``texts`` as ``config`` says (one token list per text)."""
    if config.strip_possessives:
        texts = [_POSSESSIVE.sub("", text) for text in texts]
    try:
        return bm25s.tokenize(list(texts), lower=True, token_pattern=config.token_pattern,
                              stopwords=config.stopwords, stemmer=stemmer, return_ids=False,
                              show_progress=progress)
    except ValueError as err:
        if "not recognized" in str(err):
            raise ValueError(f"bm25.stopwords='{config.stopwords}': {err}") from None
        raise


def bm25_search(documents: Sequence[tuple[str, str]], queries: Sequence[tuple[str, str]],
                config: BM25Config = BM25Config(), ignore_identical_ids: bool = True,
                progress: bool = True) -> Run:
    """Index ``documents`` ``(doc_id, text)`` and return each query's top-k ``{doc_id: score}``.

    Documents that share no term with a query are left out, as Lucene leaves them out; with
    ``ignore_identical_ids`` a document whose id equals the query id is dropped (BEIR's rule).
    """
    if not documents:
        raise ValueError("BM25 needs at least one document")
    stemmer = load_stemmer(config.stemmer)
    doc_ids = [doc_id for doc_id, _ in documents]
    retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    retriever.index(tokenize([text for _, text in documents], config, stemmer, progress), show_progress=progress)
    query_ids = [query_id for query_id, _ in queries]
    query_tokens = tokenize([text for _, text in queries], config, stemmer, progress)
    # One extra slot so a query's own id (dropped below) does not cost it a result.
    k = min(config.k + int(ignore_identical_ids), len(doc_ids))
    if not query_ids:
        return {}
    indices, scores = retriever.retrieve(query_tokens, k=k, show_progress=progress)
    run: Run = {}
    for query_id, row_indices, row_scores in zip(query_ids, indices.tolist(), scores.tolist()):
        hits = {}
        for index, score in zip(row_indices, row_scores):
            doc_id = doc_ids[index]
            if score <= 0.0 or (ignore_identical_ids and doc_id == query_id):
                continue
            hits[doc_id] = float(score)
            if len(hits) == config.k:
                break
        run[query_id] = hits
    return run
