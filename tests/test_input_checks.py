"""Real-world BEIR folders that are not quite BEIR (issue 17): each gets a message that says what is there
and what to do, or is read as BEIR reads it (a byte-order mark, another header, empty documents)."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import pytest

from core.io import InputError
from datamodules.beir import load_beir
from helpers import command_fails
from retrieval.metrics import evaluate_run

TINY = Path(__file__).parent / "data" / "tiny_beir"
BOM = b"\xef\xbb\xbf"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A private copy of the tiny BEIR fixture."""
    return Path(shutil.copytree(TINY, tmp_path / "beir"))


def load(root: Path, **kwargs):
    return load_beir(root, cache_dir=root.parent / "hf-cache", **kwargs)


def fails(root: Path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        load(root, **kwargs)
    return str(info.value)


def cli_fails(capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path, *extra: str) -> str:
    """``train.py baselines`` (BM25 only) on ``root`` exits 2 with one message, no traceback, nothing written."""
    out = tmp_path / "out"
    message = command_fails(capsys, "baselines", "--data.path", str(root), "--systems", "[bm25]", "--output_dir",
                            str(out), *extra)
    assert not out.exists()
    return message


# ----------------------------------------------------------------------------- read as BEIR reads them
def test_utf8_byte_order_mark_is_accepted_in_every_file(data: Path, tmp_path: Path) -> None:
    plain = load(Path(shutil.copytree(data, tmp_path / "plain")))
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        path = data / name
        path.write_bytes(BOM + path.read_bytes())
    marked = load(data)
    assert marked.corpus == plain.corpus and marked.queries == plain.queries and marked.qrels == plain.qrels


def test_qrels_header_with_other_column_names_is_read_as_a_header(data: Path, caplog) -> None:
    qrels = data / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text().replace("query-id\tcorpus-id\tscore", "qid\tdocid\trel"))
    with caplog.at_level(logging.WARNING):
        dataset = load(data)
    assert dataset.num_judgements == 8
    assert "line 1 read as a header with other column names (qid, docid, rel)" in caplog.text


def test_qrels_header_in_another_order_is_refused(data: Path) -> None:
    qrels = data / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text().replace("query-id\tcorpus-id\tscore", "corpus-id\tquery-id\tscore"))
    message = fails(data)
    assert "test.tsv, line 1: header columns in another order (corpus-id, query-id, score)" in message
    assert "reorder them" in message


def test_trec_qrels_get_a_conversion_hint(data: Path) -> None:
    (data / "qrels" / "test.tsv").write_text("q1 0 d01 1\nq2 0 d04 1\n")
    message = fails(data)
    assert "test.tsv, line 1: expected 3 tab-separated columns" in message
    assert "looks like TREC qrels" in message and "awk" in message


# ----------------------------------------------------------------------------- the wrong kind of file
def test_directory_in_place_of_the_queries_file(capsys, data: Path, tmp_path: Path) -> None:
    (data / "queries.jsonl").unlink()
    (data / "queries.jsonl").mkdir()
    message = cli_fails(capsys, data, tmp_path)
    assert f"{data / 'queries.jsonl'}: is a directory, not a file" in message and "a BEIR folder holds" in message


def test_qrels_split_file_that_is_a_directory(capsys, data: Path, tmp_path: Path) -> None:
    (data / "qrels" / "test.tsv").unlink()
    (data / "qrels" / "test.tsv").mkdir()
    message = cli_fails(capsys, data, tmp_path)
    assert f"{data / 'qrels' / 'test.tsv'}: is a directory, not a file" in message
    assert "not found" not in message


def test_pretty_printed_json_array_in_place_of_json_lines(capsys, data: Path, tmp_path: Path) -> None:
    corpus = data / "corpus.jsonl"
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    corpus.write_text(json.dumps(records, indent=2))
    message = cli_fails(capsys, data, tmp_path)
    assert f"{corpus}, line 1: the file is a JSON array, not JSON Lines" in message
    assert f"convert with: jq -c '.[]' {corpus}" in message
    corpus.write_text(json.dumps(records))  # the same array on one line
    message = cli_fails(capsys, data, tmp_path)
    assert f"{corpus}, line 1: expected a JSON object, got list (the file is one JSON array" in message


def test_pretty_printed_json_object_per_record(data: Path) -> None:
    queries = data / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "text": "a question"}, indent=2))
    message = fails(data)
    assert "queries.jsonl, line 1: the file is one pretty-printed JSON object over several lines" in message
    assert "jq -c ." in message


def test_a_lone_gzip_file(capsys, data: Path, tmp_path: Path) -> None:
    corpus = data / "corpus.jsonl"
    with gzip.open(f"{corpus}.gz", "wb") as handle:
        handle.write(corpus.read_bytes())
    corpus.unlink()
    message = cli_fails(capsys, data, tmp_path)
    assert f"{corpus}: file not found, but corpus.jsonl.gz is here (decompress it first: gunzip -k {corpus}.gz)" \
        in message


# ----------------------------------------------------------------------------- empty documents
def _add_empty_documents(root: Path) -> None:
    """Two documents with neither title nor text (lines 21 and 23), the first judged relevant for q1."""
    with open(root / "corpus.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "e1", "title": "", "text": ""}) + "\n")
        handle.write(json.dumps({"_id": "fine", "title": "A title", "text": ""}) + "\n")
        handle.write(json.dumps({"_id": "e2", "text": "  "}) + "\n")
    with open(root / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q1\te1\t1\n")


def test_empty_documents_are_kept_by_default_with_a_warning(data: Path, caplog) -> None:
    _add_empty_documents(data)
    with caplog.at_level(logging.WARNING):
        dataset = load(data)
    assert "2 empty document(s), 'title' and 'text' both blank (line 21, line 23); 1 of them judged" in caplog.text
    assert "kept them as BEIR does" in caplog.text
    assert dataset.doc_text("e1") == dataset.doc_text("e2") == "" and dataset.qrels["q1"] == {"d01": 1, "e1": 1}


def test_empty_documents_dropped_or_refused_on_request(data: Path, caplog) -> None:
    _add_empty_documents(data)
    with caplog.at_level(logging.WARNING):
        dataset = load(data, empty_documents="drop")
    assert "e1" not in dataset.corpus and "e2" not in dataset.corpus and "fine" in dataset.corpus
    assert "dropped them (data.empty_documents: drop); their judgements now name unknown documents" in caplog.text
    assert dataset.qrels["q1"] == {"d01": 1}  # unknown_ids: warn drops the judgement of the dropped document
    message = fails(data, empty_documents="error")
    assert "corpus.jsonl, line 21, field 'text': empty document" in message and "data.empty_documents" in message
    with pytest.raises(ValueError, match="empty_documents must be one of 'keep', 'drop', 'error'"):
        load(data, empty_documents="skip")


# ----------------------------------------------------------------------------- unknown ids
def test_unknown_documents_in_qrels_warn_that_scores_differ_from_beir_or_are_kept(data: Path, caplog) -> None:
    with open(data / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q1\tgone\t1\n")
    with caplog.at_level(logging.WARNING):
        dropped = load(data)
    assert "1 judgement names unknown documents (e.g. 'gone' on line 10); dropped them" in caplog.text
    assert "no longer comparable with BEIR and pytrec_eval" in caplog.text and "'keep'" in caplog.text
    kept = load(data, unknown_ids="keep")
    assert dropped.qrels["q1"] == {"d01": 1} and kept.qrels["q1"] == {"d01": 1, "gone": 1}
    run = {qid: {doc_id: float(grade) for doc_id, grade in docs.items() if doc_id in kept.corpus}
           for qid, docs in kept.qrels.items()}
    # every known judged document retrieved in grade order: perfect once dropped, less as pytrec_eval scores it
    assert evaluate_run(dropped.qrels, run)["ndcg@10"] == 1.0
    assert evaluate_run(kept.qrels, run)["ndcg@10"] < 1.0
