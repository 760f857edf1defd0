"""Sentence splitting for sentence-level vectors (a document scores by its best sentence).

Splitter: BlingFire (``blingfire``, pip, offline, a compiled finite-state model), chosen over pySBD
for keeping abbreviations and decimals together, leaving fewer fragments and speed (the comparison on
SciFact: ``benchmarks/results/notes/docstring-measurements.md``). Its remaining fragments are mostly
section labels ("Results.") and list numbers ("1."); pieces of fewer than ``MIN_WORDS`` words are
joined to the next sentence so no unit is a lone label.

Why a fallback by length: BlingFire needs sentence case and punctuation. On lower-cased text with
" . " separators it returns the whole abstract as one "sentence", and the sentence and multi levels then
add nothing, silently (issue 15). So the splitter is chosen per corpus (:func:`plan_units`): when most
long documents come back as a single sentence, every document is cut into overlapping windows of
``window`` words instead (MaxP/FirstP style passages, Dai & Callan 2019), and the choice and the
distribution of units per document are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import blingfire

from core.record_key import SENTENCE, RecordKey

log = logging.getLogger(__name__)

MIN_WORDS = 3
SPLITTERS = ("auto", "sentences", "windows")


@dataclass
class UnitConfig:
    """How documents are cut into the units of the sentence and multi levels.

    Attributes:
        splitter: ``sentences`` (BlingFire), ``windows`` (overlapping word windows) or ``auto``: windows when
            more than ``fallback_share`` of the documents longer than ``window`` words come back from the
            sentence splitter as one unit (unpunctuated or lower-cased text), else sentences.
        window: words per window.
        stride: words between the starts of consecutive windows (``stride < window`` overlaps them).
        fallback_share: ``auto`` only: the share of long single-unit documents above which windows are used.
    """

    splitter: Literal["auto", "sentences", "windows"] = "auto"
    window: int = 32
    stride: int = 16
    fallback_share: float = 0.5

    def __post_init__(self) -> None:
        if self.splitter not in SPLITTERS:
            raise ValueError(f"embed.units.splitter must be one of {SPLITTERS}, got {self.splitter!r}")
        if self.window < 1 or not 1 <= self.stride <= self.window:
            raise ValueError(f"embed.units needs window >= 1 and 1 <= stride <= window, got window {self.window} "
                             f"and stride {self.stride}")
        if not 0.0 <= self.fallback_share <= 1.0:
            raise ValueError(f"embed.units.fallback_share must lie in [0, 1], got {self.fallback_share}")


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


def word_windows(text: str, window: int, stride: int) -> list[str]:
    """Windows of ``window`` words starting every ``stride`` words; the last one ends at the text's end."""
    words = text.split()
    if len(words) <= window:
        return [" ".join(words)] if words else []
    starts = list(range(0, len(words) - window, stride)) + [len(words) - window]
    return [" ".join(words[start:start + window]) for start in starts]


def choose_splitter(texts: Iterable[str], config: UnitConfig) -> tuple[str, dict[str, int]]:
    """The splitter for this corpus and why: how many documents are longer than a window, and how many of
    those the sentence splitter leaves as one unit."""
    if config.splitter != "auto":
        return config.splitter, {}
    long_docs = single = 0
    for text in texts:
        if len(text.split()) > config.window:
            long_docs += 1
            single += len(split_sentences(text)) <= 1
    chosen = "windows" if long_docs and single > config.fallback_share * long_docs else "sentences"
    return chosen, {"long_documents": long_docs, "long_single_sentence": single}


def unit_histogram(counts: Iterable[int]) -> dict[str, int]:
    """Documents with 1, 2-5 and more than 5 units (0: a document with neither title nor text)."""
    histogram = {"0": 0, "1": 0, "2-5": 0, ">5": 0}
    for count in counts:
        histogram["0" if count == 0 else "1" if count == 1 else "2-5" if count <= 5 else ">5"] += 1
    return histogram


def plan_units(documents: Iterable[tuple[str, str, str]], config: UnitConfig) -> tuple[list[tuple[str, str]],
                                                                                        dict[str, Any]]:
    """The units of every ``(doc_id, title, text)`` and a report: the splitter chosen for the corpus, why,
    and the documents with 1, 2-5 and more units. Logs a warning when most documents have one unit."""
    documents = list(documents)
    splitter, reason = choose_splitter((text or "" for _, _, text in documents), config)
    units: list[tuple[str, str]] = []
    counts: list[int] = []
    for doc_id, title, text in documents:
        mine = sentence_units(doc_id, title, text, splitter=splitter, config=config)
        units.extend(mine)
        counts.append(len(mine))
    histogram = unit_histogram(counts)
    report = {"splitter": splitter, "configured": config.splitter, "window": config.window, "stride": config.stride,
              **reason, "documents": len(documents), "units": len(units), "units_per_document": histogram}
    report["mostly_one_unit"] = histogram["1"] > len(documents) / 2
    log.info("sentence units: %s, %d units for %d documents (1 unit: %d, 2-5: %d, >5: %d)", splitter, len(units),
             len(documents), histogram["1"], histogram["2-5"], histogram[">5"])
    if report["mostly_one_unit"]:
        log.warning("%d of %d documents have a single sentence unit: the sentence and multi levels add little here; "
                    "set embed.units.splitter: windows (and a smaller embed.units.window)", histogram["1"],
                    len(documents))
    return units, report


def sentence_units(doc_id: str, title: str, text: str, splitter: str = "sentences",
                   config: UnitConfig | None = None) -> list[tuple[str, str]]:
    """``[(RecordKey(doc_id, "sentence", i).encode(), title + " " + sentence), ...]``: the units embedded for
    sentence-level search.

    The title is prepended to every sentence (the reference figures in the data README used
    this). A document without text gets one unit, its title; one without either gets none.
    ``splitter``: ``sentences`` or ``windows`` (of ``config.window`` words, every ``config.stride``).
    """
    title = " ".join((title or "").split())
    if splitter == "windows":
        config = config or UnitConfig()
        sentences = word_windows(text or "", config.window, config.stride)
    elif splitter == "sentences":
        sentences = split_sentences(text or "")
    else:
        raise ValueError(f"sentence_units: splitter must be 'sentences' or 'windows' (choose 'auto' per corpus "
                         f"with plan_units), got {splitter!r}")
    if not sentences:
        return [(RecordKey(doc_id, SENTENCE, 0).encode(), title)] if title else []
    return [(RecordKey(doc_id, SENTENCE, i).encode(), f"{title} {sentence}" if title else sentence)
            for i, sentence in enumerate(sentences)]
