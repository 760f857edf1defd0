"""The extractive stage-1 teacher on the tiny BEIR fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.beir import load_beir
from retrieval.extractive import ExtractiveConfig, candidate_phrases, extractive_records, make_question, \
    tfidf_keyphrases

TINY_BEIR = Path(__file__).parent / "data" / "tiny_beir"


@pytest.fixture(scope="module")
def dataset():
    return load_beir(TINY_BEIR, split="test")


def test_one_question_and_n_keywords_per_document(dataset) -> None:
    records = extractive_records(dataset, ExtractiveConfig(n_keywords=4), progress=False)
    assert [(r.doc_id, r.task) for r in records] == [(d, t) for d in dataset.doc_ids for t in ("question", "keywords")]
    for record in records:
        assert record.text and record.stage == 1 and record.sample_idx == 0 and record.model == "extractive"
        if record.task == "keywords":
            assert len(record.text.split(", ")) == 4
        else:
            assert record.text.endswith("?")
    by_key = {(r.doc_id, r.task): r.text for r in records}
    assert by_key[("d01", "question")] == "What is known about vitamin D supplementation and fracture risk in older adults?"
    # d03 has no title: its question falls back to the first sentence.
    assert by_key[("d03", "question")].startswith("What is known about aspirin taken daily for five years")


def test_lead_questions_and_subset(dataset) -> None:
    records = extractive_records(dataset, ExtractiveConfig(question_from="lead"), doc_ids=["d04"], progress=False)
    assert [r.task for r in records] == ["question", "keywords"]
    assert records[0].text == ("What is known about genome-wide sequencing detected off-target cleavage at sites with "
                               "up to five mismatches?")
    with pytest.raises(KeyError, match="not in the corpus"):
        extractive_records(dataset, ExtractiveConfig(), doc_ids=["nope"], progress=False)


def test_keyphrases_prefer_distinctive_terms_and_skip_overlaps() -> None:
    texts = ["Metformin lowers glucose. Metformin is a drug for diabetes patients. The study of patients.",
             "The study of patients with asthma.", "A study of patients with cancer.",
             "Patients in the study took aspirin."]
    top = tfidf_keyphrases(texts, n=3, progress=False)[0]
    assert top[0] == "Metformin"  # twice in the text, in no other document
    # no phrase repeats a content word of an earlier one ("metformin lowers" would repeat "metformin")
    words = [w.lower() for phrase in top for w in phrase.split()]
    assert len(words) == len(set(words))
    assert all(len(p) for p in top)


def test_candidates_do_not_start_or_end_with_stopwords_or_cross_clauses() -> None:
    keys = {key for key, _ in candidate_phrases("The effect of aspirin, in adults (over 65).", 3)}
    assert "effect of aspirin" in keys and "aspirin" in keys
    assert not any(k.startswith(("the ", "of ")) or k.endswith((" of", " the")) for k in keys)
    assert "aspirin in adults" not in keys and "65" not in keys


@pytest.mark.parametrize(("title", "expected"), [
    ("Effects of statins on LDL.", "What is known about effects of statins on LDL?"),
    ("DNA repair in yeast", "What is known about DNA repair in yeast?"),
    ("Does coffee cause cancer?", "Does coffee cause cancer?"),
])
def test_title_questions(title: str, expected: str) -> None:
    assert make_question(title, "Some text.", ExtractiveConfig()) == (expected, False)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="phrase"):
        ExtractiveConfig(question_template="What about it?")
    with pytest.raises(ValueError, match="n_keywords"):
        ExtractiveConfig(n_keywords=0)
