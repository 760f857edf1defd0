"""Sentence splitting on scientific prose, and the sentence units embedded for sentence-level search."""

from __future__ import annotations

import pytest

from core.record_key import RecordKey
from retrieval.sentences import sentence_units, split_sentences


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
