"""The product on a user's own corpus: a folder with only ``corpus.jsonl`` runs through the pipeline to an index
(evaluation skipped, saying why), ``train.py search`` returns ranked documents from it, and a damaged index,
another encoder or bad arguments are refused before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import train
from helpers import make_tiny_bert, minilm_path, one_thread, tiny_pipeline_profile  # noqa: F401 (fixture)
from pipeline import layout
from pipeline.config import STAGES

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus_only_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, str]:
    root = tmp_path_factory.mktemp("product")
    folder = root / "my-corpus"
    folder.mkdir()
    shutil.copy(FIXTURE / "corpus.jsonl", folder / "corpus.jsonl")
    model = make_tiny_bert(root / "bert")
    config = {**tiny_pipeline_profile(folder, model),
              "model": {"class_path": "lightning_modules.seq2seq.Seq2SeqModule",
                        "init_args": {"warm_start_encoder": str(model), "decoder_layers": 1, "max_input_length": 64}}}
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump(config))
    run_dir = root / "run"
    capture = root / "stdout.txt"
    import contextlib

    with open(capture, "w") as handle, contextlib.redirect_stdout(handle):
        outcomes = train.main(["pipeline", "-c", str(profile), "--run_dir", str(run_dir)])
    return run_dir, outcomes, capture.read_text()


def test_a_corpus_alone_runs_every_stage_up_to_the_index(corpus_only_run: tuple[Path, list, str]) -> None:
    run_dir, outcomes, printed = corpus_only_run
    assert [(o.name, o.status) for o in outcomes] == [(name, "ran") for name in STAGES if name != "evaluate"]
    assert not (run_dir / layout.RESULTS_JSON).exists()
    assert "evaluate: skipped" in printed and "corpus.jsonl only" in printed
    index_dir = run_dir / layout.INDEX_DIR
    assert f"Index: {index_dir}" in printed and f"train.py search --index {index_dir}" in printed
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["documents"] == 20 and manifest["level"] == "multi" and manifest["system"] == "rb-manual-multi-stage2"
    # the filter's round trip needs synthetic texts only: it ran and judged every stage-1 output
    report = json.loads((run_dir / layout.FILTER_REPORT).read_text())
    assert "roundtrip" in json.dumps(report)


def test_search_one_query_prints_a_ranked_table(corpus_only_run: tuple[Path, list, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = corpus_only_run
    run = train.main(["search", "--index", str(run_dir / layout.INDEX_DIR), "--query", "gene expression in cells",
                      "--top_k", "5"])
    hits = list(run["query"].items())
    assert len(hits) == 5 and [score for _, score in hits] == sorted((s for _, s in hits), reverse=True)
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (FIXTURE / "corpus.jsonl").read_text().splitlines()}
    table = capsys.readouterr().out
    assert "| rank | doc id | score | title |" in table
    for rank, (doc_id, score) in enumerate(hits, start=1):
        assert f"| {rank} | {doc_id} | {score:.4f} | {' '.join(corpus[doc_id]['title'].split())} |" in table


def test_search_writes_a_trec_run_and_scores_it(corpus_only_run: tuple[Path, list, str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = corpus_only_run
    output = tmp_path / "run.trec"
    run = train.main(["search", "--index", str(run_dir / layout.INDEX_DIR), "--queries",
                      str(FIXTURE / "queries.jsonl"), "--qrels", str(FIXTURE / "qrels" / "test.tsv"), "--top_k", "3",
                      "--output", str(output)])
    lines = [line.split() for line in output.read_text().splitlines()]
    assert len(lines) == 3 * len(run) and all(len(line) == 6 and line[1] == "Q0" for line in lines)
    first = [line for line in lines if line[0] == next(iter(run))]
    assert [(line[2], int(line[3]), float(line[4])) for line in first] == \
        [(doc, rank, score) for rank, (doc, score) in enumerate(run[next(iter(run))].items(), start=1)]
    assert {line[5] for line in lines} == {"rb-manual-multi-stage2"}
    printed = capsys.readouterr().out
    assert "nDCG@10" not in printed and all(name in printed for name in ("ndcg@10", "mrr@100", "recall@100"))


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_indexes_encoders_and_arguments_are_refused_and_nothing_is_written(
        corpus_only_run: tuple[Path, list, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = corpus_only_run
    index = shutil.copytree(run_dir / layout.INDEX_DIR, tmp_path / "index")
    output = tmp_path / "run.trec"
    queries = ["--queries", str(FIXTURE / "queries.jsonl"), "--output", str(output)]
    search = ["search", "--index", str(index)]

    _refused([*search, "--encoder", str(make_tiny_bert(tmp_path / "other", seed=1)), *queries], capsys,
             "is not the one that built this index")
    _refused([*search, "--encoder", str(minilm_path()), *queries], capsys,
             "gives 384-dimensional vectors but the index holds 32")
    _refused([*search, *queries, "--query", "both"], capsys, "give either --queries FILE or --query TEXT")
    _refused([*search, "--query", "x", "--qrels", str(FIXTURE / "qrels" / "test.tsv")], capsys, "--qrels needs --queries")
    vectors = index / "vectors.safetensors"
    data = vectors.read_bytes()
    vectors.write_bytes(data[:-64])
    _refused([*search, *queries], capsys, "truncated")
    vectors.write_bytes(data)
    manifest = json.loads((index / "manifest.json").read_text())
    (index / "manifest.json").write_text(json.dumps({**manifest, "documents": 19}))
    _refused([*search, *queries], capsys, "the manifest says 19")
    (index / "manifest.json").unlink()
    _refused([*search, *queries], capsys, "no manifest.json")
    assert not output.exists()


def test_evaluate_alone_on_a_corpus_is_refused(corpus_only_run: tuple[Path, list, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = corpus_only_run
    config = json.loads((run_dir / layout.PIPELINE_CONFIG).read_text())
    _refused(["evaluate", "--data.path", config["data"]["path"], "--run_dir", str(run_dir), "--model",
              "lightning_modules.seq2seq.Seq2SeqModule", "--model.init_args.model_name_or_path", "unused"], capsys,
             "holds corpus.jsonl only")
