"""benchmarks/robustness.py: the corpus transform and the reuse of vectors, which must happen only when the encoder
would see the very same word pieces (else the lower-cased corpus would be scored with the original's vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.robustness import reuse_vectors, spaced_lower_case
from retrieval.vectors import load_vectors, read_vector_metadata, save_vectors


def test_spaced_lower_case_spaces_only_sentence_final_stops() -> None:
    assert spaced_lower_case("It rose 1.5 fold. We saw it.") == "it rose 1.5 fold . we saw it ."
    assert spaced_lower_case("e.g. Fig. 2") == "e.g . fig . 2"


def _source(tmp_path: Path, items: list[tuple[str, str]]) -> Path:
    source = tmp_path / "original" / "vectors.safetensors"
    source.parent.mkdir()
    save_vectors(source, [key for key, _ in items], np.eye(len(items), 4, dtype=np.float32))
    (source.parent / f"{source.name}.texts.json").write_text(json.dumps(items))
    return source


def test_vectors_are_reused_only_for_the_same_word_pieces(tmp_path: Path) -> None:
    items = [("d1", "Vitamin D lowered the risk. It was large."), ("d2", "No effect was seen.")]
    source = _source(tmp_path, items)
    same = [(key, spaced_lower_case(text)) for key, text in items]  # MiniLM is uncased and splits off the stop
    target = tmp_path / "lower" / "vectors.safetensors"
    assert reuse_vectors(source, target, same)
    assert read_vector_metadata(target)["reused_from"] == str(source)
    np.testing.assert_array_equal(load_vectors(target)[1], load_vectors(source)[1])
    assert reuse_vectors(source, target, same)  # a rerun finds the copy

    other = tmp_path / "other" / "vectors.safetensors"
    assert not reuse_vectors(source, other, [("d1", "vitamin d raised the risk ."), items[1]])
    assert not other.exists()
    assert not reuse_vectors(source, other, list(reversed(items)))  # other ids (order) never reuse
