"""Reading synthetic records (our JSONL and BEIR GenQ output) with errors that say file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.io import InputError
from datamodules.synthetic_files import load_file_source, read_beir_gen_queries
from retrieval.synthetic import SyntheticRecord, expansion_texts, read_synthetic, write_synthetic


def _write_lines(path: Path, objects: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


def test_round_trip_of_our_format(tmp_path: Path) -> None:
    records = [SyntheticRecord("d1", "question", "What is X?", 0, 1, "m"),
               SyntheticRecord("d1", "keywords", "x, y, z", 0, 1, "m"),
               SyntheticRecord("d2", "question", "", 1, 2, "m")]
    path = tmp_path / "s.jsonl"
    assert write_synthetic(path, records) == 3
    assert read_synthetic(path, corpus_ids={"d1", "d2"}) == records


def test_optional_fields_default_and_sample_idx_counts_in_file_order(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "s.jsonl", [
        {"doc_id": "d1", "task": "question", "text": " first? "},
        {"doc_id": "d1", "task": "question", "text": "second?"},
        {"doc_id": "d1", "task": "keywords", "text": "a, b"},
    ])
    records = read_synthetic(path)
    assert [(r.sample_idx, r.stage, r.model, r.text) for r in records] == [
        (0, 1, "", "first?"), (1, 1, "", "second?"), (0, 1, "", "a, b")]


@pytest.mark.parametrize(("obj", "field", "message"), [
    ({"task": "question", "text": "q?"}, "doc_id", "missing"),
    ({"doc_id": "d1", "task": "summary", "text": "q?"}, "task", "unknown task 'summary'"),
    ({"doc_id": "d1", "task": "question"}, "text", "missing"),
    ({"doc_id": "d1", "task": "question", "text": 3}, "text", "expected str"),
    ({"doc_id": "d1", "task": "question", "text": "q?", "sample_idx": -1}, "sample_idx", "non-negative"),
    ({"doc_id": "d1", "task": "question", "text": "q?", "sample_idx": True}, "sample_idx", "non-negative"),
    ({"doc_id": "d1", "task": "question", "text": "q?", "model": 5}, "model", "expected str"),
])
def test_bad_line_names_file_line_and_field(tmp_path: Path, obj: dict, field: str, message: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [{"doc_id": "d0", "task": "question", "text": "fine?"}, obj])
    with pytest.raises(InputError) as info:
        read_synthetic(path)
    text = str(info.value)
    assert str(path) in text and "line 2" in text and f"field '{field}'" in text and message in text


def test_repeated_key_names_both_lines(tmp_path: Path) -> None:
    row = {"doc_id": "d1", "task": "question", "text": "q?", "sample_idx": 0}
    path = _write_lines(tmp_path / "s.jsonl", [row, {**row, "task": "keywords"}, row])
    with pytest.raises(InputError, match=r"line 3.*already appeared on line 1"):
        read_synthetic(path)


def test_unknown_documents_fail_or_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_lines(tmp_path / "s.jsonl", [
        {"doc_id": "d1", "task": "question", "text": "q?"},
        {"doc_id": "zz9", "task": "question", "text": "q?"},
        {"doc_id": "zz8", "task": "keywords", "text": "k"},
    ])
    with pytest.raises(InputError, match=r"2 of 3 records name documents that are not in the corpus \(e.g. zz8, zz9\)"):
        read_synthetic(path, corpus_ids={"d1"})
    kept = read_synthetic(path, corpus_ids={"d1"}, on_unknown_doc="warn")
    assert [r.doc_id for r in kept] == ["d1"]
    assert "2 of 3 records" in caplog.text


def _genq_folder(tmp_path: Path) -> Path:
    """What BEIR's QueryGenerator.save writes with prefix 'gen-3'."""
    queries = _write_lines(tmp_path / "gen-3-queries.jsonl", [
        {"_id": "genQ1", "text": "what lowers fracture risk", "metadata": {}},
        {"_id": "genQ2", "text": "vitamin d and hip fractures", "metadata": {}},
        {"_id": "genQ3", "text": "does aspirin prevent cancer", "metadata": {}},
    ])
    (tmp_path / "gen-3-qrels").mkdir()
    (tmp_path / "gen-3-qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\ngenQ1\td01\t1\ngenQ2\td01\t1\ngenQ3\td03\t1\n", encoding="utf-8")
    return queries


def test_beir_gen_queries_import(tmp_path: Path) -> None:
    records = read_beir_gen_queries(_genq_folder(tmp_path), corpus_ids={"d01", "d03"})
    assert records == [SyntheticRecord("d01", "question", "what lowers fracture risk", 0, 1, "beir-genq"),
                       SyntheticRecord("d01", "question", "vitamin d and hip fractures", 1, 1, "beir-genq"),
                       SyntheticRecord("d03", "question", "does aspirin prevent cancer", 0, 1, "beir-genq")]
    assert load_file_source(tmp_path / "gen-3-queries.jsonl", format="beir-genq") == records


def test_beir_gen_queries_errors(tmp_path: Path) -> None:
    queries = _genq_folder(tmp_path)
    with pytest.raises(InputError, match="not in the corpus"):
        read_beir_gen_queries(queries, corpus_ids={"d01"})
    qrels = tmp_path / "other.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\ngenQ1\td01\t1\ngenQ7\td02\t1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"other.tsv, line 3, field 'query-id': query 'genQ7'"):
        read_beir_gen_queries(queries, qrels_path=qrels)
    renamed = tmp_path / "queries.jsonl"
    renamed.write_text(queries.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(InputError, match="pass qrels_path"):
        read_beir_gen_queries(renamed)


def test_expansion_appends_a_documents_questions_only() -> None:
    records = [SyntheticRecord("d1", "question", "Why?"), SyntheticRecord("d1", "keywords", "a, b"),
               SyntheticRecord("d1", "question", "How?", 1)]
    assert expansion_texts([("d1", "Text one."), ("d2", "Text two.")], records) == [
        ("d1", "Text one. Why? How?"), ("d2", "Text two.")]
