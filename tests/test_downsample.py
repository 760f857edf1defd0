"""Seeded downsampling, the data config entry point, the downsample command and the committed demo slice."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import train
from core.io import InputError
from datamodules.beir import load_beir
from datamodules.downsample import (KEPT_DOCS_FILE, KEPT_QUERIES_FILE, DataConfig, DownsampleConfig, downsample,
                                    load_dataset_from_config, seeded_choice)

TINY = Path(__file__).parent / "data" / "tiny_beir"
DEMO = Path(__file__).parent.parent / "data" / "scifact-demo"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_beir(TINY, cache_dir=tmp_path_factory.mktemp("hf-cache"))


def test_same_seed_same_slice_other_seed_other_slice(tiny):
    config = DownsampleConfig(n_queries=3, corpus_size=10, seed=0)
    first, again = downsample(tiny, config), downsample(tiny, config)
    assert first.query_ids == again.query_ids and first.doc_ids == again.doc_ids
    others = {tuple(downsample(tiny, replace(config, seed=seed)).doc_ids) for seed in range(1, 6)}
    assert len(others | {tuple(first.doc_ids)}) > 1


def test_keeps_judged_documents_and_hits_the_sizes(tiny):
    sliced = downsample(tiny, DownsampleConfig(n_queries=3, corpus_size=10, seed=4))
    assert len(sliced.queries) == 3 and len(sliced.corpus) == 10
    judged = {doc_id for docs in sliced.qrels.values() for doc_id in docs}
    assert judged <= set(sliced.corpus)
    assert sliced.qrels == {qid: tiny.qrels[qid] for qid in sliced.queries}
    # file order is kept, and the input is left untouched
    assert sliced.doc_ids == [d for d in tiny.doc_ids if d in sliced.corpus]
    assert sliced.query_ids == [q for q in tiny.query_ids if q in sliced.queries]
    assert len(tiny.corpus) == 20 and len(tiny.queries) == 6


def test_query_choice_does_not_depend_on_corpus_size(tiny):
    small = downsample(tiny, DownsampleConfig(n_queries=2, corpus_size=5, seed=1))
    large = downsample(tiny, DownsampleConfig(n_queries=2, corpus_size=15, seed=1))
    assert small.query_ids == large.query_ids and set(small.corpus) < set(large.corpus)


def test_seeded_choice_ignores_input_order():
    ids = [f"doc{i}" for i in range(50)]
    assert seeded_choice(ids, 7, 3, "documents") == seeded_choice(ids[::-1], 7, 3, "documents")
    assert seeded_choice(ids, 7, 3, "documents") != seeded_choice(ids, 7, 3, "queries")


def test_restrict_to_keeps_only_queries_whose_judged_documents_all_survive(tiny, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("d01\nd04\n\nd08\nd09\nd12\nd13\nd14\n")  # q2 loses d05: dropped; q3 keeps both
    sliced = downsample(tiny, DownsampleConfig(restrict_to=ids))
    assert sliced.query_ids == ["q1", "q3", "q4"]
    assert sliced.doc_ids == ["d01", "d04", "d08", "d09", "d12", "d13", "d14"]
    sized = downsample(tiny, DownsampleConfig(restrict_to=ids, n_queries=2, corpus_size=6, seed=0))
    assert set(sized.corpus) <= set(sliced.corpus) and len(sized.corpus) == 6 and len(sized.queries) == 2


def test_restrict_to_naming_unknown_documents_fails(tiny, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("d01\nnope\nd02\n")
    with pytest.raises(InputError, match=r"ids\.txt: 1 id\(s\) are not in the corpus .* \(e\.g\. 'nope' on line 2\)"):
        downsample(tiny, DownsampleConfig(restrict_to=ids))


def test_restrict_to_without_a_complete_query_fails(tiny, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("d05\nd20\n")
    with pytest.raises(InputError, match=r"no query of split 'test' has all its judged documents in this list"):
        downsample(tiny, DownsampleConfig(restrict_to=ids))


@pytest.mark.parametrize("config, pattern", [
    (DownsampleConfig(n_queries=7), r"field 'n_queries': asked for 7 queries but 6 judged queries qualify"),
    (DownsampleConfig(n_queries=0), r"asked for 0 queries"),
    (DownsampleConfig(n_queries=6, corpus_size=5), r"corpus_size 5 must lie between the 8 documents the kept "
                                                   r"queries judge and the 20 available"),
    (DownsampleConfig(corpus_size=21), r"corpus_size 21 must lie between"),
])
def test_impossible_sizes_are_refused(tiny, config, pattern):
    with pytest.raises(InputError, match=pattern):
        downsample(tiny, config)


def test_config_load_records_kept_ids(tmp_path):
    config = DataConfig(path=TINY, downsample=DownsampleConfig(n_queries=4, corpus_size=12, seed=2),
                        cache_dir=tmp_path / "cache")
    dataset = load_dataset_from_config(config, run_dir=tmp_path / "run")
    assert (tmp_path / "run" / KEPT_QUERIES_FILE).read_text().split() == dataset.query_ids
    assert (tmp_path / "run" / KEPT_DOCS_FILE).read_text().split() == dataset.doc_ids
    assert len(dataset.doc_ids) == 12


@pytest.mark.parametrize("break_it", ["corpus", "sizes"])
def test_failed_load_writes_nothing(tmp_path, break_it):
    root = tmp_path / "beir"
    root.mkdir()
    for path in TINY.rglob("*"):
        if path.is_file():
            (root / path.relative_to(TINY)).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(TINY)).write_bytes(path.read_bytes())
    sizes = DownsampleConfig(n_queries=2, corpus_size=1000)
    if break_it == "corpus":
        with open(root / "corpus.jsonl", "a") as handle:
            handle.write('{"_id": "d99", "text": \n')
    config = DataConfig(path=root, downsample=sizes, cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match=r"line 21: malformed JSON" if break_it == "corpus" else "corpus_size 1000"):
        load_dataset_from_config(config, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_downsample_command_writes_a_loadable_slice_with_its_synthetic_records(tmp_path, capsys):
    synthetic = tmp_path / "teacher.jsonl"
    records = [{"doc_id": f"d{i:02d}", "task": task, "text": f"{task} {i}", "sample_idx": 0, "stage": 1, "model": "m"}
               for i in range(1, 21) for task in ("question", "keywords")]
    synthetic.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "slice"
    train.main(["downsample", "--source", str(TINY), "--output", str(out), "--n_queries", "3", "--corpus_size", "9",
                "--seed", "5", "--synthetic", str(synthetic)])
    assert "9 documents, 3 queries" in capsys.readouterr().out
    sliced = load_beir(out, cache_dir=tmp_path / "cache")
    expected = downsample(load_beir(TINY, cache_dir=tmp_path / "cache"),
                          DownsampleConfig(n_queries=3, corpus_size=9, seed=5))
    assert sliced.qrels == expected.qrels and sliced.corpus == expected.corpus
    kept = [json.loads(line) for line in (out / "synthetic" / "teacher.jsonl").read_text().splitlines()]
    assert len(kept) == 18 and {r["doc_id"] for r in kept} == set(sliced.corpus)
    assert kept[0] == records[2 * (int(sliced.doc_ids[0][1:]) - 1)]


def test_downsample_command_refuses_to_overwrite_its_source(tmp_path):
    from pipeline.downsample import downsample_command

    with pytest.raises(InputError, match="output is the source folder"):
        downsample_command(TINY, TINY / ".")


def test_committed_demo_slice_is_consistent(tmp_path):
    demo = load_beir(DEMO, unknown_ids="fail", cache_dir=tmp_path)
    assert len(demo.queries) == 60 and len(demo.corpus) == 240
    records = [json.loads(line) for line in
               (DEMO / "synthetic" / "qwen2.5-coder-0.5b-instruct.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = {r["doc_id"] for r in records if r["task"] == "question"}
    assert questions == set(demo.corpus)  # every demo document has a real teacher question
    assert "python train.py downsample" in (DEMO / "README.md").read_text(encoding="utf-8")


def test_data_section_parses_from_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--data", type=DataConfig)
    config = parser.parse_string("data:\n  path: tests/data/tiny_beir\n  unknown_ids: fail\n"
                                 "  downsample:\n    n_queries: 3\n    restrict_to: ids.txt\n")
    data = parser.instantiate(config).data
    assert data == DataConfig(path=Path("tests/data/tiny_beir"), unknown_ids="fail",
                              downsample=DownsampleConfig(n_queries=3, restrict_to=Path("ids.txt")))
    with pytest.raises(SystemExit):
        parser.parse_string("data:\n  path: x\n  unknown_ids: ignore\n")
