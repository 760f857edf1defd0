"""The extractive stage-1 teacher: questions from titles (or leading sentences), keywords by TF-IDF.

Why it exists: the offline profile's model is an encoder-decoder warm-started from MiniLM whose
decoder has never been trained, so it cannot follow an instruction zero-shot and the paper's
stage 1 ("the model writes its own training data") has nothing to start from. This teacher
writes the first synthetic set from the documents themselves, without any model: the title is
what an author would search for, and a document's top TF-IDF keyphrases are the words that
set it apart from the rest of the corpus. The filter then treats these records like any other.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS
from scipy import sparse
from tqdm.auto import tqdm

from retrieval.sentences import split_sentences
from retrieval.synthetic import SyntheticRecord

if TYPE_CHECKING:
    from datamodules.beir import BeirDataset

log = logging.getLogger(__name__)

STOPWORDS = frozenset(STOPWORDS_EN_PLUS)  # NLTK's 179 English stop words, shipped with bm25s
# A word: letters/digits, joined across inner hyphens, dots, apostrophes, slashes and digit commas
# ("IFN-gamma", "3.5", "5,000-fold").
_WORD = re.compile(r"\w+(?:(?:[-.'’/]|(?<=\d),(?=\d))\w+)*")
# Phrases never cross punctuation that ends a clause or a list item.
_CLAUSE_BREAK = re.compile(r"[,;:](?=\s|$)|[()\[\]{}!?\"“”]|\.(?=\s|$)")


@dataclass
class ExtractiveConfig:
    """How the extractive teacher writes questions and keywords.

    Attributes:
        question_from: "title" turns the title into a question (an author's title is the query a reader
            would type); "lead" uses the text's first sentence. A document without a title uses its
            first sentence either way (counted in the log). "lead" questions are copies by design; the
            filter's copy rule lets most pass (the template's words are not in the passage: a 15-word
            sentence scores 0.73 against the default 0.9).
        question_template: wraps the phrase into question form so the filter's question-form rule and
            the model both see a question; "{phrase}" is the title or sentence without its final period.
        n_keywords: keyphrases per document (5, as the stage-1 teacher prompt asks): candidate n-grams inside a
            clause, not starting or ending with a stop word, scored by term frequency times smoothed inverse
            document frequency over the corpus.
        max_ngram: longest keyphrase, in words.
        min_phrase_count: a phrase of several words must occur this often in the corpus (in one document
            or several) to count, so one-off word spans do not crowd out real terms.
        model_name: written into each record's ``model`` field so outputs say where they came from.
    """

    question_from: Literal["title", "lead"] = "title"
    question_template: str = "What is known about {phrase}?"
    n_keywords: int = 5
    max_ngram: int = 3
    min_phrase_count: int = 2
    model_name: str = "extractive"

    def __post_init__(self) -> None:
        if "{phrase}" not in self.question_template:
            raise ValueError(f"extractive.question_template must contain '{{phrase}}', got {self.question_template!r}")
        if self.n_keywords < 1:
            raise ValueError(f"extractive.n_keywords must be >= 1, got {self.n_keywords}")
        if self.max_ngram < 1:
            raise ValueError(f"extractive.max_ngram must be >= 1, got {self.max_ngram}")


def _lower_first(phrase: str) -> str:
    """Lower-case a capitalised first word ("Effects of" -> "effects of") but keep acronyms ("DNA", "IFN-g")."""
    first, _, rest = phrase.partition(" ")
    if len(first) > 1 and first[0].isupper() and first[1:] == first[1:].lower():
        first = first[0].lower() + first[1:]
    return f"{first} {rest}".strip()


def make_question(title: str, text: str, config: ExtractiveConfig) -> tuple[str, bool]:
    """The question for one document, and whether it had to fall back to the first sentence."""
    source = title.strip() if config.question_from == "title" else ""
    fell_back = config.question_from == "title" and not source
    if not source:
        sentences = split_sentences(text)
        source = sentences[0] if sentences else ""
    if not source:
        return "", fell_back
    if source.endswith("?"):
        return source, fell_back
    phrase = _lower_first(source.rstrip(" .!;:"))
    return config.question_template.format(phrase=phrase), fell_back


def candidate_phrases(text: str, max_ngram: int) -> list[tuple[str, str]]:
    """``(key, surface)`` for every candidate keyphrase occurrence in ``text``.

    A candidate is an n-gram (n <= max_ngram) inside one clause whose first and last words are not
    stop words, numbers or single characters; ``key`` is its lower-cased form used for counting.
    """
    out = []
    for clause in _CLAUSE_BREAK.split(text):
        words = _WORD.findall(clause)
        lowered = [w.lower() for w in words]
        edge_ok = [len(w) > 1 and w not in STOPWORDS and not w.replace(".", "").isdigit() for w in lowered]
        for start in range(len(words)):
            if not edge_ok[start]:
                continue
            for n in range(1, max_ngram + 1):
                end = start + n
                if end > len(words):
                    break
                if edge_ok[end - 1]:
                    out.append((" ".join(lowered[start:end]), " ".join(words[start:end])))
    return out


def _content_words(key: str) -> set[str]:
    return {w for w in key.split() if w not in STOPWORDS}


def tfidf_keyphrases(texts: Sequence[str], n: int, max_ngram: int = 3, min_phrase_count: int = 2,
                     progress: bool = True) -> list[list[str]]:
    """The top ``n`` keyphrases of every text by TF-IDF over ``texts``, without near-repeats.

    idf = ln((1 + N) / (1 + df)) + 1 (smoothed, as scikit-learn's default). A phrase of several words
    counts only if it occurs at least ``min_phrase_count`` times in the corpus. A phrase sharing a
    content word with one already chosen is skipped, so "ketogenic diet" and "diet" are not both
    listed. Each phrase is shown in its most frequent original casing ("GATA-3", not "gata-3").
    """
    vocab: dict[str, int] = {}
    rows, cols, counts = [], [], []
    surfaces: list[dict[str, str]] = []
    for row, text in enumerate(tqdm(texts, desc="keyphrase candidates", unit="doc", disable=not progress)):
        occurrences = candidate_phrases(text, max_ngram)
        tf = Counter(key for key, _ in occurrences)
        forms = Counter(occurrences)
        surfaces.append({key: surface for (key, surface), _ in reversed(forms.most_common())})
        for key, count in tf.items():
            rows.append(row)
            cols.append(vocab.setdefault(key, len(vocab)))
            counts.append(count)
    matrix = sparse.csr_matrix((np.asarray(counts, dtype=np.float64), (rows, cols)), shape=(len(texts), len(vocab)))
    df = np.bincount(matrix.indices, minlength=len(vocab))
    idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
    keys = np.array(list(vocab), dtype=object)
    # A word sequence seen once in the whole corpus is a chance span ("efficiency was largely"), not a term.
    multiword = np.array([" " in key for key in keys], dtype=bool)
    recurring = np.asarray(matrix.sum(axis=0)).ravel() >= min_phrase_count
    idf = np.where(multiword & ~recurring, 0.0, idf)
    matrix = matrix.multiply(idf[None, :]).tocsr()
    result = []
    for row in range(len(texts)):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        scores, idx = matrix.data[start:end], matrix.indices[start:end]
        # Highest score first; on a tie the longer phrase ("caesarean section" always occurring where
        # "caesarean" does), then alphabetical order, so the result is deterministic.
        order = sorted(range(len(idx)), key=lambda i: (-scores[i], -keys[idx[i]].count(" "), keys[idx[i]]))
        chosen: list[str] = []
        used: set[str] = set()
        for i in order:
            if scores[i] <= 0:
                break
            key = keys[idx[i]]
            words = _content_words(key)
            if words & used:
                continue
            chosen.append(surfaces[row][key])
            used |= words
            if len(chosen) == n:
                break
        result.append(chosen)
    return result


def extractive_records(dataset: BeirDataset, config: ExtractiveConfig,
                       doc_ids: Sequence[str] | None = None, progress: bool = True) -> list[SyntheticRecord]:
    """One question and one keyword list per document (``doc_ids``, default every document).

    Keyword IDF is computed over the whole corpus even when ``doc_ids`` is a subset, so a phrase
    common in the corpus never counts as distinctive. A document with no usable text gets an
    empty record, which the filter's ``empty`` rule drops and counts.
    """
    all_ids = list(dataset.doc_ids)
    wanted = list(all_ids if doc_ids is None else doc_ids)
    missing = [d for d in wanted if d not in dataset.corpus]
    if missing:
        raise KeyError(f"{len(missing)} requested documents are not in the corpus (e.g. {missing[:5]})")
    # The title ends a clause, so no keyphrase runs from the title into the text.
    texts = [". ".join(p for p in (dataset.corpus[d].title, dataset.corpus[d].text) if p) for d in all_ids]
    keyphrases = dict(zip(all_ids, tfidf_keyphrases(texts, config.n_keywords, config.max_ngram,
                                                                config.min_phrase_count, progress)))
    records, fallbacks = [], 0
    for doc_id in wanted:
        doc = dataset.corpus[doc_id]
        question, fell_back = make_question(doc.title, doc.text, config)
        fallbacks += fell_back
        records.append(SyntheticRecord(doc_id, "question", question, 0, 1, config.model_name))
        records.append(SyntheticRecord(doc_id, "keywords", ", ".join(keyphrases[doc_id]), 0, 1, config.model_name))
    if fallbacks:
        log.info("extractive teacher: %d of %d documents have no title; their question uses the first sentence",
                 fallbacks, len(wanted))
    return records

