"""BEIR loading: BEIR's rules on the tiny fixture, robustness to real-world quirks, and one
test per bad input checking that the message names file, line and field."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from core.io import InputError
from datamodules import beir
from datamodules.beir import BeirDataset, Document, load_beir, write_beir

TINY = Path(__file__).parent / "data" / "tiny_beir"
HEADER = "query-id\tcorpus-id\tscore\n"

DOCS = [{"_id": "d1", "title": "Sleep", "text": "Sleep clears amyloid.", "metadata": {}},
        {"_id": "d2", "title": "Coral", "text": "Acid water slows coral growth.", "metadata": {}},
        {"_id": "d3", "title": "Vaccines", "text": "Measles erases immune memory.", "metadata": {}},
        {"_id": "d4", "title": "Solar", "text": "Perovskite cells degrade in heat.", "metadata": {}}]
QUERIES = [{"_id": "q1", "text": "Does sleep clear amyloid?"},
           {"_id": "q2", "text": "Coral and acidity."},
           {"_id": "q3", "text": "Measles and memory."}]
QRELS = HEADER + "q1\td1\t1\nq2\td2\t1\nq3\td3\t1\n"


def _line(item: dict | str | bytes) -> bytes:
    if isinstance(item, dict):
        return (json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8")
    text = item if isinstance(item, bytes) else item.encode("utf-8")
    return text if text.endswith(b"\n") else text + b"\n"


def make_beir(root: Path, docs=DOCS, queries=QUERIES, qrels: str | bytes | None = QRELS,
              train: str | None = None) -> Path:
    """A small BEIR folder; a list item may be a dict (one JSON line) or raw str/bytes."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(b"".join(_line(d) for d in docs))
    (root / "queries.jsonl").write_bytes(b"".join(_line(q) for q in queries))
    if qrels is not None:
        (root / "qrels" / "test.tsv").write_bytes(_line(qrels))
    if train is not None:
        (root / "qrels" / "train.tsv").write_text(train)
    return root


def load(root: Path, **kwargs) -> BeirDataset:
    return load_beir(root, cache_dir=root.parent / "hf-cache", **kwargs)


def fails(root: Path, pattern: str, **kwargs) -> InputError:
    with pytest.raises(InputError, match=pattern) as info:
        load(root, **kwargs)
    return info.value


# ----------------------------------------------------------------------------- happy path

def test_tiny_fixture_follows_beir_rules(tmp_path):
    data = load_beir(TINY, cache_dir=tmp_path)
    assert len(data.corpus) == 20 and data.doc_ids[:3] == ["d01", "d02", "d03"]
    assert data.query_ids == ["q1", "q2", "q3", "q4", "q5", "q6"]  # q9 unjudged, train queries dropped
    assert data.qrels["q3"] == {"d08": 2, "d09": 1}
    assert data.num_judgements == 8
    assert data.corpus["d03"].title == ""  # no title key
    assert data.doc_text("d03") == data.corpus["d03"].text
    assert data.doc_text("d07") == data.corpus["d07"].text  # empty title: no leading space
    assert data.doc_text("d01").startswith("Vitamin D supplementation and fracture risk in older adults Vitamin D")
    assert "amyloid-β" in data.queries["q3"]

    train = load_beir(TINY, split="train", cache_dir=tmp_path)
    assert train.qrels == {"q7": {"d02": 1}, "q8": {"d11": 1, "d20": 1}}


def test_metadata_of_varying_shape_across_chunks_loads(tmp_path, monkeypatch):
    # Real BEIR metadata changes shape between documents; with a small chunk the json builder meets
    # a struct in one chunk and a string or list in the next, which breaks arrow's inference.
    monkeypatch.setattr(beir, "JSON_CHUNK_BYTES", 1024)
    shapes = [{}, {"url": "https://x.org", "year": 2020}, "free text", [1, "a"], {"authors": [{"n": "A"}]}, None]
    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": "word " * 40, "metadata": shapes[i % len(shapes)]}
            for i in range(60)]
    docs += [{"_id": "d60", "title": "No metadata key", "text": "x"}]
    data = load(make_beir(tmp_path / "b", docs=docs, qrels=HEADER + "q1\td59\t1\n"))
    assert len(data.corpus) == 61 and data.corpus["d59"] == Document("Title 59", "word " * 40)


def test_numeric_ids_extra_fields_blank_lines_and_empty_text_with_title(tmp_path):
    docs = [{"_id": 1, "title": "Only a title", "text": "", "url": "a"},  # BEIR allows empty text with a title
            "\n",
            {"_id": 2, "title": None, "text": "No title.", "url": "b"},
            {"_id": 3, "text": '"Wholly in quotes."', "url": "c"}]
    queries = [{"_id": 7, "text": "numeric query id"}, "\n\n"]
    data = load(make_beir(tmp_path / "b", docs=docs, queries=queries, qrels="7\t1\t1\n7\t3\t0\n"))
    assert data.doc_ids == ["1", "2", "3"] and data.qrels == {"7": {"1": 1, "3": 0}}
    assert data.doc_text("1") == "Only a title" and data.doc_text("2") == "No title."
    assert data.doc_text("3") == '"Wholly in quotes."'


def test_clean_file_with_a_quoted_title_skips_the_line_scan(tmp_path, monkeypatch):
    # The slow per-line scan must stay off the happy path, even for a title wholly in quotes.
    def no_scan(*args):
        raise AssertionError("line scan ran on a clean file")

    monkeypatch.setattr(beir, "_scan_for_problem", no_scan)
    docs = [DOCS[0], {"_id": "d2", "title": '"Quoted headline"', "text": "1999"}, *DOCS[2:]]
    assert load(make_beir(tmp_path / "b", docs=docs)).corpus["d2"] == Document('"Quoted headline"', "1999")


@pytest.mark.parametrize("docs, pattern", [
    # The builder JSON-encodes a field that changes type ('"d1"'); the scan must catch it.
    ([DOCS[0], {"_id": 7, "text": "numeric"}], r"line 2, field '_id': id is a number here but a string on line 1"),
    ([DOCS[0], {"_id": "d7", "title": 1999, "text": "x"}], r"line 2, field 'title': expected str, got int"),
    ([DOCS[0], {"_id": "d7", "text": ["a", "b"]}], r"line 2, field 'text': expected str, got list"),
])
def test_field_changing_type_is_named_not_json_encoded(tmp_path, docs, pattern):
    fails(make_beir(tmp_path / "b", docs=docs), pattern)


def test_blank_line_that_breaks_the_json_reader_is_named(tmp_path):
    # A field changing type (string, then object) sends the builder down a path that cannot skip blank lines.
    docs = [{"_id": "d1", "text": "a", "url": "a"}, {"_id": "d2", "text": "b", "url": {"nested": True}}, "\n", DOCS[2]]
    fails(make_beir(tmp_path / "b", docs=docs), r"corpus\.jsonl, line 3: blank line \(the datasets json reader")


def test_qrels_header_is_optional_and_crlf_is_accepted(tmp_path):
    with_header = load(make_beir(tmp_path / "a"))
    without = load(make_beir(tmp_path / "b", qrels=QRELS.replace(HEADER, "").replace("\n", "\r\n")))
    assert with_header.qrels == without.qrels and len(without.qrels) == 3


def test_repeated_identical_judgement_warns_and_counts_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = load(make_beir(tmp_path / "b", qrels=QRELS + "q1\td1\t1\n"))
    assert data.qrels["q1"] == {"d1": 1} and data.num_judgements == 3
    assert "1 judgement(s) repeat an earlier line" in caplog.text


def test_changed_file_is_read_again_not_served_from_cache(tmp_path):
    root = make_beir(tmp_path / "b")
    assert load(root).corpus["d1"].text == "Sleep clears amyloid."
    corpus = root / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("Sleep clears amyloid.", "Edited text."))
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load(root).corpus["d1"].text == "Edited text."
    assert any((tmp_path / "hf-cache").rglob("*.arrow"))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("missing, pattern", [
    ("corpus.jsonl", r"corpus\.jsonl: file not found \(a BEIR folder holds"),
    ("queries.jsonl", r"queries\.jsonl: file not found"),
])
def test_missing_file(tmp_path, missing, pattern):
    root = make_beir(tmp_path / "b")
    (root / missing).unlink()
    fails(root, pattern)


def test_missing_folder(tmp_path):
    fails(tmp_path / "nowhere", r"nowhere: BEIR folder not found")


def test_missing_split_lists_existing_ones(tmp_path):
    root = make_beir(tmp_path / "b", train=HEADER + "q1\td1\t1\n")
    fails(root, r"qrels/dev\.tsv: split 'dev' not found; splits here: test, train", split="dev")


@pytest.mark.parametrize("bad_line, pattern", [
    ('{"_id": "d9", "text": "cut off', r"corpus\.jsonl, line 3: malformed JSON"),
    ('["a", "list"]', r"corpus\.jsonl, line 3: expected a JSON object, got list"),
    ({"title": "t", "text": "no id"}, r"corpus\.jsonl, line 3, field '_id': missing"),
    ({"_id": "  ", "text": "blank id"}, r"corpus\.jsonl, line 3, field '_id': empty"),
    ({"_id": ["d9"], "text": "list id"}, r"corpus\.jsonl, line 3, field '_id': expected str or int, got list"),
    ({"_id": "d9", "title": "no text key"}, r"corpus\.jsonl, line 3, field 'text': missing"),
    ({"_id": "d9", "text": "x", "extra": 1}, r"corpus\.jsonl, line 3, field 'extra': field not on the first line"),
    (b'{"_id": "d9", "text": "caf\xe9"}\n', r"corpus\.jsonl, line 3: not valid UTF-8"),
    ({"_id": "d1", "text": "again"}, r"corpus\.jsonl, line 3, field '_id': duplicate id 'd1' \(first on line 1, "
                                     r"again on line 3\)"),
])
def test_bad_corpus_line_is_named(tmp_path, bad_line, pattern):
    docs = [DOCS[0], DOCS[1], bad_line, DOCS[2]]
    fails(make_beir(tmp_path / "b", docs=docs), pattern)


@pytest.mark.parametrize("bad_line, pattern", [
    ("{not json}", r"queries\.jsonl, line 2: malformed JSON"),
    ({"_id": "q9"}, r"queries\.jsonl, line 2, field 'text': missing"),
    ({"_id": "q9", "text": ""}, r"queries\.jsonl, line 2, field 'text': empty"),
    ({"_id": "q1", "text": "twice"}, r"queries\.jsonl, line 2, field '_id': duplicate id 'q1' \(first on line 1"),
])
def test_bad_query_line_is_named(tmp_path, bad_line, pattern):
    queries = [QUERIES[0], bad_line, *QUERIES[1:]]
    fails(make_beir(tmp_path / "b", queries=queries), pattern)


@pytest.mark.parametrize("qrels, pattern", [
    (HEADER + "q1\td1\t1\nq2\td2\t1.5\n", r"qrels/test\.tsv, line 3, field 'score': '1\.5' is not an integer"),
    ("q1\td1\tscore\n", r"qrels/test\.tsv, line 1, field 'score': 'score' is not an integer"),
    (HEADER + "q1 d1 1\n", r"qrels/test\.tsv, line 2: expected 3 tab-separated columns .* got 1"),
    (HEADER + "q1\td1\t1\t0\n", r"qrels/test\.tsv, line 2: expected 3 tab-separated columns .* got 4"),
    (HEADER + "\td1\t1\n", r"qrels/test\.tsv, line 2, field 'query-id': empty"),
    (HEADER + "q1\td1\t1\nq1\td1\t2\n", r"line 3, field 'score': query 'q1' judges document 'd1' 2 here but 1 "
                                        r"on line 2"),
    (HEADER.encode() + b"q1\td\xe91\t1\n", r"qrels/test\.tsv, line 2: not valid UTF-8"),
])
def test_bad_qrels_line_is_named(tmp_path, qrels, pattern):
    fails(make_beir(tmp_path / "b", qrels=qrels), pattern)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_corpus(tmp_path, content):
    root = make_beir(tmp_path / "b")
    (root / "corpus.jsonl").write_bytes(content)
    fails(root, r"corpus\.jsonl: no documents: the file is empty")


@pytest.mark.parametrize("qrels", [HEADER, ""])
def test_split_without_judged_queries(tmp_path, qrels):
    fails(make_beir(tmp_path / "b", qrels=qrels), r"qrels/test\.tsv: no judged queries in split 'test' \(each line")


UNKNOWN = QRELS + "q1\tx7\t1\nq2\tx8\t1\nq3\tx9\t1\nq8\td1\t1\n"


def test_unknown_ids_fail_in_one_counted_message(tmp_path):
    error = fails(make_beir(tmp_path / "b", qrels=UNKNOWN), "unknown", unknown_ids="fail")
    assert re.search(r"qrels/test\.tsv: 3 judgements name unknown documents \(e\.g\. 'x7' on line 5, 'x8' on "
                     r"line 6, 'x9' on line 7\); 1 judgement names unknown queries \(e\.g\. 'q8' on line 8\)",
                     str(error))
    assert "set data.unknown_ids to 'warn' (drop them) or 'keep'" in str(error)


def test_unknown_ids_warn_drops_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = load(make_beir(tmp_path / "b", qrels=UNKNOWN), unknown_ids="warn")
    assert "3 judgements name unknown documents" in caplog.text and "dropped them" in caplog.text
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}


def test_only_unknown_ids_leaves_no_judged_queries(tmp_path):
    fails(make_beir(tmp_path / "b", qrels=HEADER + "q1\tx7\t1\n"),
          r"no judged queries in split 'test' after dropping 1 judgement\(s\) with unknown ids")


def test_unknown_ids_option_is_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown_ids must be one of 'warn', 'fail', 'keep'"):
        load(make_beir(tmp_path / "b"), unknown_ids="ignore")


# ----------------------------------------------------------------------------- writing

def test_write_beir_round_trips_with_extra_split(tmp_path):
    test = load_beir(TINY, cache_dir=tmp_path / "c")
    train = load_beir(TINY, split="train", cache_dir=tmp_path / "c")
    out = tmp_path / "copy"
    write_beir(test, out, extra_splits={"train": train.qrels}, extra_queries=train.queries)
    again = load_beir(out, cache_dir=tmp_path / "c")
    assert again.corpus == test.corpus and again.queries == test.queries and again.qrels == test.qrels
    assert load_beir(out, split="train", cache_dir=tmp_path / "c").qrels == train.qrels
    assert not list(out.rglob("*.tmp"))


def test_write_beir_refuses_judgements_without_query_text(tmp_path):
    test = load_beir(TINY, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"split 'train' judges 1 query id\(s\) without text"):
        write_beir(test, tmp_path / "out", extra_splits={"train": {"q7": {"d02": 1}}})
    assert not (tmp_path / "out").exists()
