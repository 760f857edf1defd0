"""benchmarks/robustness.py: the corpus transform and the reuse of vectors, which must happen only when the encoder
would see the very same word pieces (else the lower-cased corpus would be scored with the original's vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.robustness import PARTIAL_SHARE, reuse_vectors, spaced_lower_case, stage2_records
from pipeline import layout
from retrieval.synthetic import SyntheticRecord, write_synthetic
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


def test_partial_stage2_keeps_a_run_s_outputs_for_a_tenth_of_the_documents_that_have_any(tmp_path: Path) -> None:
    doc_ids = [f"d{i}" for i in range(40)]
    with_outputs = doc_ids[::2] + ["elsewhere"]  # 20 of the slice's documents, and one outside it
    records = [SyntheticRecord(doc, task, f"{task} of {doc}", sample_idx=s, stage=2)
               for doc in with_outputs for task in ("question", "keywords") for s in range(2)]
    write_synthetic(tmp_path / "run" / layout.STAGE2_KEPT, records)

    kept = stage2_records(tmp_path / "run", doc_ids)
    chosen = {r.doc_id for r in kept}
    assert len(chosen) == round(PARTIAL_SHARE * len(doc_ids)) == 4 and chosen <= set(doc_ids[::2])
    assert len(kept) == 4 * len(chosen)  # every kept output of a chosen document, both tasks, both samples
    assert stage2_records(tmp_path / "run", doc_ids) == kept  # seeded: the same documents on a rerun

    with pytest.raises(SystemExit, match="kept outputs for 2 of the slice's documents; the variant needs 4"):
        stage2_records(tmp_path / "run", doc_ids[:4] + [f"x{i}" for i in range(36)])
    with pytest.raises(SystemExit, match="not found: the partial-stage2 variant needs a finished covered-subset"):
        stage2_records(tmp_path / "missing", doc_ids)
