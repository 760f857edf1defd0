"""Sentence splitting for sentence-level vectors (a document scores by its best sentence).

Splitter: BlingFire (``blingfire``, pip, offline, a compiled finite-state model), chosen over pySBD
for keeping abbreviations and decimals together, leaving fewer fragments and speed (the comparison on
SciFact: ``benchmarks/results/notes/docstring-measurements.md``). Its remaining fragments are mostly
section labels ("Results.") and list numbers ("1."); pieces of fewer than ``MIN_WORDS`` words are
joined to the next sentence so no unit is a lone label.
"""

from __future__ import annotations

import blingfire

from core.record_key import SENTENCE, RecordKey

MIN_WORDS = 3


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace normalised); short fragments joined to their neighbour."""
    flat = " ".join(text.split())
    if not flat:
        return []
    pieces = [piece.strip() for piece in blingfire.text_to_sentences(flat).split("\n") if piece.strip()]
    sentences: list[str] = []
    carry = ""
    for piece in pieces:
        piece = f"{carry} {piece}" if carry else piece
        if len(piece.split()) < MIN_WORDS:
            carry = piece
            continue
        sentences.append(piece)
        carry = ""
    if carry:  # a short tail joins the previous sentence (or stands alone if it is all there is)
        if sentences:
            sentences[-1] = f"{sentences[-1]} {carry}"
        else:
            sentences.append(carry)
    return sentences


def sentence_units(doc_id: str, title: str, text: str) -> list[tuple[str, str]]:
    """``[(RecordKey(doc_id, "sentence", i).encode(), title + " " + sentence), ...]``: the units embedded for
    sentence-level search.

    The title is prepended to every sentence (the reference figures in the data README used
    this). A document without text gets one unit, its title; one without either gets none.
    """
    title = " ".join((title or "").split())
    sentences = split_sentences(text or "")
    if not sentences:
        return [(RecordKey(doc_id, SENTENCE, 0).encode(), title)] if title else []
    return [(RecordKey(doc_id, SENTENCE, i).encode(), f"{title} {sentence}" if title else sentence)
            for i, sentence in enumerate(sentences)]
