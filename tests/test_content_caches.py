"""Caches are keyed by content: a corpus rewritten in place with its modification time restored is read again.

The ``datasets`` cache of the BEIR loader was keyed by path and mtime, so ``touch -r``, ``os.utime`` or a
restored backup served the old corpus (4 documents instead of 3) to ``train.py baselines`` and to the
pipeline's data stage, which then wrote its marker for it. Each test computes on corpus A, replaces
``corpus.jsonl`` by corpus B (other content, another size) with A's mtime, and expects what a fresh copy of B
gives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

import train
from core.fingerprint import file_signature
from datamodules.beir import load_beir
from helpers import tiny_pipeline_profile
from pipeline import layout

CORPUS_A = [{"_id": "d1", "title": "Sleep", "text": "Sleep clears amyloid from the brain."},
            {"_id": "d2", "title": "Vitamin D", "text": "Vitamin D lowers the fracture rate."},
            {"_id": "d3", "title": "Aspirin", "text": "Aspirin reduces colorectal cancer in Lynch syndrome."},
            {"_id": "d4", "title": "Microbiome", "text": "Caesarean birth changes the infant gut flora."}]
CORPUS_B = [{"_id": "d1", "title": "Fractures", "text": "Vitamin D and fracture rate in older adults."},
            {"_id": "d2", "title": "Sleep", "text": "Amyloid is cleared from the brain during sleep."},
            {"_id": "d3", "title": "Aspirin", "text": "Aspirin reduces colorectal cancer in Lynch syndrome."}]
QUERIES = [{"_id": "q1", "text": "Does sleep clear amyloid?"}, {"_id": "q2", "text": "Vitamin D and fractures"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def write_beir(root: Path, corpus: list[dict[str, str]]) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(query) + "\n" for query in QUERIES))
    (root / "qrels" / "test.tsv").write_text(QRELS)
    return root


def replace_keeping_mtime(root: Path, corpus: list[dict[str, str]]) -> None:
    path = root / "corpus.jsonl"
    before = path.stat()
    path.write_text("".join(json.dumps(doc) + "\n" for doc in corpus))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_mtime_ns == before.st_mtime_ns and after.st_size != before.st_size


def test_loader_reads_a_rewritten_file_with_its_mtime_restored(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir", CORPUS_A)
    cache = tmp_path / "hf-cache"
    assert load_beir(root, cache_dir=cache).doc_ids == ["d1", "d2", "d3", "d4"]
    signature = file_signature(root / "corpus.jsonl")
    replace_keeping_mtime(root, CORPUS_B)
    assert file_signature(root / "corpus.jsonl") != signature  # in-process hash cache: ctime, not only mtime
    again = load_beir(root, cache_dir=cache)
    assert again.doc_ids == ["d1", "d2", "d3"] and again.corpus["d1"].title == "Fractures"


def _bm25_ndcg(data: Path, output: Path, cache: Path) -> float:
    rows = train.main(["baselines", "--data.path", str(data), "--data.cache_dir", str(cache), "--systems", "[bm25]",
                       "--output_dir", str(output)])
    return rows[0].metrics["ndcg@10"]


def test_baselines_score_the_new_corpus(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir", CORPUS_A)
    cache = tmp_path / "hf-cache"
    before = _bm25_ndcg(root, tmp_path / "out", cache)
    replace_keeping_mtime(root, CORPUS_B)
    fresh = _bm25_ndcg(write_beir(tmp_path / "copy" / "beir", CORPUS_B), tmp_path / "out-copy", tmp_path / "c2")
    assert fresh != before  # the two corpora score differently, so the check below can fail
    assert _bm25_ndcg(root, tmp_path / "out", cache) == fresh


def test_data_stage_reruns_on_the_new_corpus(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir", CORPUS_A)
    profile = tmp_path / "profile.yaml"
    config = tiny_pipeline_profile(root, tmp_path / "no-model-needed-by-the-data-stage")
    config["data"]["cache_dir"] = str(tmp_path / "hf-cache")
    profile.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    args = ["data", "-c", str(profile), "--run_dir", str(run_dir)]
    assert [o.status for o in train.main(args)] == ["ran"]
    assert (run_dir / layout.KEPT_DOCS).read_text().split() == ["d1", "d2", "d3", "d4"]
    replace_keeping_mtime(root, CORPUS_B)
    assert [o.status for o in train.main(args)] == ["ran"]
    assert (run_dir / layout.KEPT_DOCS).read_text().split() == ["d1", "d2", "d3"]
    assert [o.status for o in train.main(args)] == ["skipped"]  # its marker now names corpus B


def test_same_size_rewrite_with_its_mtime_restored_changes_the_signature(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text("abc\n")
    before, stat = file_signature(path), path.stat()
    path.write_text("xyz\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_signature(path) != before
