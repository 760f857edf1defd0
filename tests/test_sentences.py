"""Sentence splitting on scientific prose, and the sentence units embedded for sentence-level search."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from core.record_key import RecordKey
from retrieval.sentences import UnitConfig, plan_units, sentence_units, split_sentences, unit_histogram, word_windows


def key(doc_id: str, index: int) -> str:
    return RecordKey(doc_id, "sentence", index).encode()


HARD_CASES = [
    ("Drugs such as aspirin, e.g. in high doses, reduce risk. This was shown in trials.", 2),
    ("As shown by Smith et al. in 2010, the effect is large. We confirm it here.", 2),
    ("Results are in Fig. 2 and Table 1. The effect was 1.5 times higher.", 2),
    ("The difference was significant (P < 0.05). No other effects were seen.", 2),
    ("The odds ratio was 2.1 (95% CI, 1.4-3.2; P = .001). Mortality fell sharply.", 2),
    ("Patients (n = 17) were included. The study found no effect at all.", 2),
]


@pytest.mark.parametrize(("text", "count"), HARD_CASES)
def test_abbreviations_and_decimals_do_not_end_sentences(text: str, count: int) -> None:
    sentences = split_sentences(text)
    assert len(sentences) == count, sentences
    assert " ".join(sentences) == text  # nothing lost or reordered


def test_whitespace_is_normalised_and_empty_text_has_no_sentences() -> None:
    assert split_sentences("First sentence is here.\n\n  Second one   follows now.") == [
        "First sentence is here.", "Second one follows now."]
    assert split_sentences("   \n ") == []


def test_short_fragments_join_their_neighbour() -> None:
    # a section label and a list number are not sentences of their own
    assert split_sentences("Results. The drug lowered blood pressure. 1. Patients improved quickly.") == [
        "Results. The drug lowered blood pressure.", "1. Patients improved quickly."]
    assert split_sentences("The drug lowered blood pressure. Done.") == ["The drug lowered blood pressure. Done."]
    assert split_sentences("Yes.") == ["Yes."]


def test_sentence_units_prefix_the_title_and_number_sentences() -> None:
    units = sentence_units("d1", "A  title", "One sentence is here. Another sentence is there.")
    assert units == [(key("d1", 0), "A title One sentence is here."), (key("d1", 1), "A title Another sentence is there.")]


def test_sentence_units_without_text_or_title() -> None:
    assert sentence_units("d2", "Only a title", "") == [(key("d2", 0), "Only a title")]
    assert sentence_units("d3", "", "Text without a title here.") == [(key("d3", 0), "Text without a title here.")]
    assert RecordKey.decode(sentence_units("doc#1|x", "T", "")[0][0]).doc_id == "doc#1|x"  # any id survives
    assert sentence_units("d4", "", "  ") == []


# --- units on any text (issue 15): windows where the sentence splitter fails ------------------------------------

TINY_CORPUS = Path(__file__).resolve().parent / "data" / "tiny_beir" / "corpus.jsonl"
SMALL = UnitConfig(window=8, stride=4)  # the tiny fixture's texts are 25-40 words long


def spaced_lower_case(text: str) -> str:
    """The shape of the collections in issue 15: lower case, full stops spaced off their words."""
    return re.sub(r"\.(\s|$)", r" .\1", text.lower())


def tiny_documents(transform: Callable[[str], str] = lambda text: text) -> list[tuple[str, str, str]]:
    records = [json.loads(line) for line in TINY_CORPUS.read_text().splitlines()]
    return [(r["_id"], transform(r.get("title", "")), transform(r["text"])) for r in records]


def test_word_windows_overlap_and_cover_every_word() -> None:
    words = [f"w{i}" for i in range(20)]
    windows = word_windows(" ".join(words), window=8, stride=4)
    assert windows[0].split() == words[:8] and windows[1].split() == words[4:12]
    assert windows[-1].split() == words[-8:]  # the last window ends at the text's end
    assert all(len(window.split()) == 8 for window in windows)
    assert set(" ".join(windows).split()) == set(words)
    assert word_windows("only four words here", window=8, stride=4) == ["only four words here"]
    assert word_windows("  ", window=8, stride=4) == []


def test_sentence_splitter_fails_on_the_lower_cased_fixture() -> None:
    """The failure the fallback exists for, reproduced: one 'sentence' per document."""
    original = tiny_documents()
    lowered = tiny_documents(spaced_lower_case)
    assert sum(len(split_sentences(text)) > 1 for _, _, text in original) > len(original) / 2
    assert sum(len(split_sentences(text)) == 1 for _, _, text in lowered) > len(lowered) / 2


def test_auto_keeps_sentences_on_punctuated_text_and_falls_back_to_windows_on_lower_case() -> None:
    units, report = plan_units(tiny_documents(), SMALL)
    assert report["splitter"] == "sentences"
    assert units == [unit for doc in tiny_documents() for unit in sentence_units(*doc)]

    units, report = plan_units(tiny_documents(spaced_lower_case), SMALL)
    assert report["splitter"] == "windows" and report["long_single_sentence"] > report["long_documents"] / 2
    histogram = report["units_per_document"]
    assert histogram["1"] < report["documents"] / 2 and not report["mostly_one_unit"]
    assert sum(histogram.values()) == report["documents"] == 20 and report["units"] == len(units)
    first_doc = [text for key_, text in units if RecordKey.decode(key_).doc_id == "d01"]
    title = tiny_documents(spaced_lower_case)[0][1]
    assert len(first_doc) > 1 and all(text.startswith(title) for text in first_doc)


def test_a_forced_splitter_that_leaves_one_unit_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="retrieval.sentences"):
        _, report = plan_units(tiny_documents(spaced_lower_case), UnitConfig(splitter="sentences", window=8, stride=4))
    assert report["splitter"] == "sentences" and report["mostly_one_unit"]
    assert report["units_per_document"]["1"] > 10
    assert "single sentence unit" in caplog.text and "embed.units.splitter" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retrieval.sentences"):
        plan_units(tiny_documents(spaced_lower_case), SMALL)
    assert "single sentence unit" not in caplog.text


def test_unit_histogram_and_bad_settings() -> None:
    assert unit_histogram([0, 1, 1, 2, 5, 6]) == {"0": 1, "1": 2, "2-5": 2, ">5": 1}
    with pytest.raises(ValueError, match="stride"):
        UnitConfig(window=8, stride=9)
    with pytest.raises(ValueError, match="splitter"):
        UnitConfig(splitter="paragraphs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="auto"):
        sentence_units("d1", "t", "some text", splitter="auto")
