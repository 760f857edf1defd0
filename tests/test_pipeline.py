"""The whole pipeline on the tiny BEIR fixture with a tiny warm-started encoder-decoder.

One run end to end (every stage's files, every row of the table), then: a second run skips
every stage; a changed Rao-Blackwell weight reruns only the evaluate stage; one stage alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from helpers import make_tiny_bert, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from pipeline import layout
from pipeline.config import STAGES

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT: the pipeline warm-starts its encoder-decoder from it, as the offline profile does."""
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "bert")


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A profile in the shape of configs/profiles/*.yaml, small enough to run in seconds."""
    warm_start = {"class_path": "lightning_modules.seq2seq.Seq2SeqModule",
                  "init_args": {"warm_start_encoder": str(tiny_model), "decoder_layers": 1, "max_input_length": 64}}
    config = {**tiny_pipeline_profile(FIXTURE, tiny_model), "model": warm_start}
    folder = tmp_path_factory.mktemp("profiles")
    config["callbacks"] = [{"class_path": "loop_recorder.LoopRecorder",  # tests/loop_recorder.py
                            "init_args": {"path": str(folder / "loops.txt")}}]
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(profile: Path, run_dir: Path, *extra: str) -> list:
    return train.main(["pipeline", "-c", str(profile), "--run_dir", str(run_dir), *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, profile: Path) -> tuple[Path, list]:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    return run_dir, _run(profile, run_dir)


def test_every_stage_runs_and_writes_its_files(finished_run: tuple[Path, list]) -> None:
    run_dir, outcomes = finished_run
    assert [o.name for o in outcomes] == list(STAGES)
    assert all(o.status == "ran" for o in outcomes)
    for path in [layout.KEPT_DOCS, layout.STAGE1, layout.STAGE1_KEPT, layout.TRAIN, layout.VAL, layout.FILTER_REPORT,
                 layout.TUNED_MODEL + "/config.json", layout.STAGE2, layout.STAGE2_KEPT, layout.RESULTS_JSON,
                 layout.RESULTS_MD, layout.SWEEP_JSON, layout.SWEEP_PLOT, *layout.vector_outputs(True),
                 layout.INDEX_MANIFEST, layout.INDEX_DIR + "/vectors.safetensors", layout.INDEX_DIR + "/ids.json"]:
        assert (run_dir / path).is_file(), path
    stage2 = [json.loads(line) for line in (run_dir / layout.STAGE2).read_text().splitlines()]
    docs = (run_dir / layout.KEPT_DOCS).read_text().split()
    assert len(stage2) == len(docs) * 2 * 2  # documents x tasks x samples
    assert {r["stage"] for r in stage2} == {2}


def test_results_table_has_every_row(finished_run: tuple[Path, list]) -> None:
    run_dir, _ = finished_run
    results = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    systems = [row["system"] for row in results["rows"]]
    expected = ["bm25", "dense", "dense-sentence", "dense-multi", "expansion-dense-stage1", "expansion-bm25-stage1",
                "expansion-dense", "expansion-bm25"]
    expected += [f"rb-{m}-{level}-{s}" for s in ("stage1", "stage2") for m in ("manual", "uniform", "bertscore",
                                                                           "softmax")
                 for level in ("doc", "sentence", "multi")]
    expected += ["dense-base", "dense-sentence-base", "dense-multi-base"]  # tuning moved the encoder: before-tuning rows
    assert sorted(systems) == sorted(expected)
    assert results["dataset"] == "tiny_beir" and results["split"] == "test"
    for row in results["rows"]:
        assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["recall@100"] <= 1.0
    markdown = (run_dir / layout.RESULTS_MD).read_text()
    assert all(f"| {system} |" in markdown for system in systems)


def test_profile_callbacks_join_every_loop(finished_run: tuple[Path, list], profile: Path) -> None:
    """``callbacks`` of the profile (tests/loop_recorder.py, by class_path) is called in tuning, in
    generation (stage 2), in every embedding loop and in the index loop, and saw batches there."""
    run_dir, _ = finished_run
    lines = [line.split() for line in (profile.parent / "loops.txt").read_text().splitlines()]
    seen = {(fn, module, Path(root).resolve()) for fn, module, batches, root in lines if int(batches) > 0}
    root = run_dir.resolve()
    assert {("fit", "Seq2SeqModule", root / layout.FIT_DIR), ("predict", "Seq2SeqModule", root),
            ("predict", "EncoderModule", root), ("predict", "IndexModule", root)} <= seen
    embeddings = [line for line in lines if line[:2] == ["predict", "EncoderModule"] and Path(line[3]).resolve() == root]
    assert len(embeddings) >= len(layout.vector_outputs(True)), "one loop per vector file"


@pytest.mark.parametrize(("args", "message"), [
    (["--callbacks", '[{"class_path": "torch.nn.Linear"}]'],
     "field 'callbacks': Import path torch.nn.Linear does not correspond to a subclass of Callback"),
    (["--callbacks", '[{"class_path": "lightning.pytorch.callbacks.Timer", "init_args": {"durration": null}}]'],
     "field 'callbacks': Problem with given class_path 'lightning.pytorch.callbacks.Timer': Option 'durration' "
     "is not accepted"),
    (["--trainer", '{"callbacks": []}'], "field 'trainer.callbacks': not read by the pipeline's loops"),
])
def test_a_wrong_callback_is_refused_before_any_stage(tmp_path: Path, profile: Path, capsys: pytest.CaptureFixture,
                                                      args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(profile, tmp_path / "run", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_every_row_is_exported_as_a_trec_run_that_pytrec_eval_scores_alike(finished_run: tuple[Path, list]) -> None:
    """runs/<system>.trec for every row; pytrec_eval on the default Rao-Blackwell row's file (the index's row,
    scored from index/) and every other row's gives the row's nDCG@10, Recall@100 and MRR@100 to 1e-6 (MRR:
    recip_rank on the run cut at 100)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from datamodules.beir import load_beir
    from retrieval.trec import read_trec_run

    run_dir, _ = finished_run
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    assert sorted(p.name for p in (run_dir / layout.RUNS_DIR).iterdir()) == sorted(f"{name}.trec" for name in rows)
    qrels = {qid: dict(judged) for qid, judged in load_beir(FIXTURE, "test").qrels.items()}
    assert [name for name, row in rows.items() if "index" in row] == ["rb-manual-multi-stage2"]
    for system, row in rows.items():
        lines = (run_dir / layout.run_file(system)).read_text().splitlines()
        assert all(line.split()[5] == system for line in lines)
        run = read_trec_run(run_dir / layout.run_file(system))
        assert set(run) <= set(qrels) and all(qid not in hits for qid, hits in run.items())
        scored = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
        cut = {qid: dict(sorted(hits.items(), key=lambda h: (h[1], h[0]), reverse=True)[:100])
               for qid, hits in run.items()}
        reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
        for ours, theirs, values in (("ndcg@10", "ndcg_cut_10", scored), ("recall@100", "recall_100", scored),
                                     ("mrr@100", "recip_rank", reciprocal)):
            mean = sum(v[theirs] for v in values.values()) / len(values)
            assert row[ours] == pytest.approx(mean, abs=1e-6), (system, ours)


def test_the_shipped_row_is_a_search_of_the_written_index(finished_run: tuple[Path, list]) -> None:
    """The default Rao-Blackwell row (rb-manual-multi-stage2) is scored from ``index/``: searching those files with
    the run's query vectors and scoring with pytrec_eval semantics gives that row's numbers exactly."""
    import torch

    from datamodules.beir import load_beir
    from retrieval.index_files import load_index, search_index
    from retrieval.metrics import evaluate_run
    from retrieval.search import SearchConfig
    from retrieval.vectors import load_vectors

    run_dir, _ = finished_run
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    index = load_index(run_dir / layout.INDEX_DIR)
    assert index.system == "rb-manual-multi-stage2" and rows[index.system]["index"] == str(index.path)
    assert index.manifest["synthetic_stages"] == ["stage2"] and index.manifest["level"] == "multi"
    query_ids, queries = load_vectors(run_dir / layout.QUERIES)
    run = search_index(index, query_ids, torch.from_numpy(queries), SearchConfig())
    metrics = evaluate_run(load_beir(FIXTURE).qrels, run, k_values=[1, 10, 100])
    assert metrics and all(rows[index.system][key] == value for key, value in metrics.items())


def test_without_an_index_the_index_row_is_computed_alike(finished_run: tuple[Path, list], profile: Path) -> None:
    """Studies that build no index (benchmarks/stage1_vs.py, robustness.py) ask ``table_rows`` for every row
    computed from the vectors: the index's row then equals the one scored from ``index/``, and no index is read."""
    from benchmarks.rb_sweep import load_context
    from pipeline.evaluation import Evaluator, before_tuning_evaluator, table_rows

    run_dir, _ = finished_run
    recorded = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    ctx = load_context(["-c", str(profile), "--run_dir", str(run_dir)])
    ctx.index = dataclasses.replace(ctx.index, level="doc")  # an index of another row: with_index never looks
    rows = {row.system: row for row in table_rows(ctx, Evaluator(ctx), before_tuning_evaluator(ctx), with_index=False)}
    assert "rb-manual-multi-stage2" in rows and "index" not in rows["rb-manual-multi-stage2"].extra
    for system, row in rows.items():
        for key, value in row.metrics.items():
            assert value == pytest.approx(recorded[system][key], abs=1e-6), (system, key)


def test_search_command_scores_the_shipped_row(finished_run: tuple[Path, list], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``train.py search`` over the run's index with the dataset's queries and qrels: its TREC file, scored by
    pytrec_eval, and its printed metrics give the shipped row's numbers (queries re-embedded: to 1e-6)."""
    import pytrec_eval

    from datamodules.beir import load_beir

    run_dir, _ = finished_run
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    row = rows["rb-manual-multi-stage2"]
    output = tmp_path / "run.trec"
    train.main(["search", "--index", str(run_dir / layout.INDEX_DIR), "--queries", str(FIXTURE / "queries.jsonl"),
                "--qrels", str(FIXTURE / "qrels" / "test.tsv"), "--top_k", "100", "--output", str(output)])
    printed = capsys.readouterr().out
    assert f"ndcg@10 {row['ndcg@10']:.4f}, mrr@100 {row['mrr@100']:.4f}, recall@100 {row['recall@100']:.4f}" in printed
    run: dict[str, dict[str, float]] = {}
    for line in output.read_text().splitlines():
        qid, _, doc_id, _, score, tag = line.split()
        assert tag == "rb-manual-multi-stage2"
        run.setdefault(qid, {})[doc_id] = float(score)
    qrels = load_beir(FIXTURE).qrels
    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert np.mean([s["ndcg_cut_10"] for s in scores.values()]) == pytest.approx(row["ndcg@10"], abs=1e-6)
    assert np.mean([s["recall_100"] for s in scores.values()]) == pytest.approx(row["recall@100"], abs=1e-6)


def test_second_run_skips_every_stage(finished_run: tuple[Path, list], profile: Path) -> None:
    run_dir, _ = finished_run
    outcomes = _run(profile, run_dir)
    assert [o.status for o in outcomes] == ["skipped"] * len(STAGES)


def test_changed_weight_reruns_only_index_and_evaluation(finished_run: tuple[Path, list], profile: Path) -> None:
    run_dir, _ = finished_run
    before = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    outcomes = _run(profile, run_dir, "--rao_blackwell.doc_weight", "0.3")
    assert {o.name: o.status for o in outcomes} == {**{name: "skipped" for name in STAGES}, "index": "ran",
                                                    "evaluate": "ran"}
    after = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    row = next(r for r in after["rows"] if r["system"] == "rb-manual-doc-stage1")
    assert row["rao_blackwell"]["doc_weight"] == 0.3
    assert [r["system"] for r in after["rows"]] == [r["system"] for r in before["rows"]]
    _run(profile, run_dir)  # restore, so test order does not matter


def test_a_stage_alone_needs_its_inputs(tmp_path: Path, profile: Path) -> None:
    with pytest.raises(RuntimeError, match="needs the outputs of stage 'filter'"):
        train.main(["embed", "-c", str(profile), "--run_dir", str(tmp_path / "empty")])
    outcomes = train.main(["data", "-c", str(profile), "--run_dir", str(tmp_path / "empty")])
    assert [(o.name, o.status) for o in outcomes] == [("data", "ran")]


@pytest.mark.parametrize("wandb", [True, False])
def test_fit_logger_folder_with_a_relative_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   wandb: bool) -> None:
    """A relative ``--run_dir``: the tuning logger writes in the run directory, not in ``fit/<run_dir>``."""
    from pipeline.config import LoggerConfig
    from pipeline.context import PipelineContext
    from pipeline.fit import _inside

    monkeypatch.chdir(tmp_path)
    unused = dict.fromkeys(["data", "model", "prompts", "stage1", "generation", "filter", "fit", "embed",
                            "rao_blackwell", "evaluate"])
    ctx = PipelineContext(run_dir=Path("runs/x"), trainer={}, logger=LoggerConfig(wandb=wandb), **unused)
    save_dir = ctx.fit_logger_config()["init_args"]["save_dir"]
    fit_dir = (tmp_path / "runs/x" / layout.FIT_DIR).resolve()
    expected = (tmp_path / "runs/x").resolve() if wandb else fit_dir
    assert Path(_inside(fit_dir, save_dir)) == expected


def test_copied_or_touched_data_reruns_nothing(finished_run: tuple[Path, list], profile: Path,
                                               tmp_path: Path) -> None:
    """Finished stages survive a dataset moved, re-extracted or touched; changed contents are a new input."""
    import os
    import shutil

    from core.fingerprint import file_signature as _file_signature

    run_dir, _ = finished_run
    copy = shutil.copytree(FIXTURE, tmp_path / "elsewhere" / FIXTURE.name, copy_function=shutil.copyfile)
    corpus = copy / "corpus.jsonl"
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _file_signature(copy) == _file_signature(FIXTURE)
    outcomes = _run(profile, run_dir, "--data.path", str(copy))
    assert [o.status for o in outcomes] == ["skipped"] * len(STAGES)
    corpus.write_text(corpus.read_text().replace("a", "b", 1))
    assert _file_signature(copy) != _file_signature(FIXTURE)


def test_sweep_stage_chooses_whose_outputs_the_plot_uses(finished_run: tuple[Path, list], profile: Path) -> None:
    run_dir, _ = finished_run
    assert json.loads((run_dir / layout.SWEEP_JSON).read_text())["stage"] == "stage2"  # default: the last stage
    outcomes = _run(profile, run_dir, "--evaluate.sweep_stage", "stage1")
    assert {o.name: o.status for o in outcomes}["evaluate"] == "ran"
    sweep = json.loads((run_dir / layout.SWEEP_JSON).read_text())
    assert sweep["stage"] == "stage1" and set(sweep["ndcg@10"]) >= {"manual", "uniform"}
    _run(profile, run_dir)  # restore, so test order does not matter


def test_sources_and_methods_are_chosen_by_registered_name() -> None:
    """``stage1.source`` and ``evaluate.methods`` name registry entries; a wrong name lists the choices."""
    from pipeline.config import EvaluateConfig, Stage1Config
    from pipeline.sources import STAGE1_SOURCES
    from retrieval.rao_blackwell import WEIGHTING_METHODS

    assert STAGE1_SOURCES.names() == ["self", "extractive", "file"]
    assert [STAGE1_SOURCES.get(name).collective for name in STAGE1_SOURCES] == [True, False, False]
    with pytest.raises(ValueError, match="stage1.source: unknown stage-1 source 'mine'; choose from self, "
                                         "extractive, file"):
        Stage1Config(source="mine")
    assert EvaluateConfig().methods == WEIGHTING_METHODS.names() == ["manual", "uniform", "bertscore", "softmax"]
    with pytest.raises(ValueError, match="evaluate.methods: unknown weighting method 'mean'"):
        EvaluateConfig(methods=["manual", "mean"])


def test_forced_bf16_reruns_the_model_stages_and_records_it(finished_run: tuple[Path, list], profile: Path,
                                                           tmp_path: Path) -> None:
    """``--trainer.precision bf16`` (on any CPU): tuning, stage 2 and embedding rerun in bf16-mixed, not reused
    from the float32 run, and the run records the precision in its config, its timings and its vector files."""
    import shutil

    from retrieval.vectors import read_vector_metadata

    run_dir = shutil.copytree(finished_run[0], tmp_path / "bf16")
    outcomes = _run(profile, run_dir, "--trainer.precision", "bf16")
    assert {o.name: o.status for o in outcomes} == {"data": "skipped", "stage1": "skipped", "filter": "skipped",
                                                    "tune": "ran", "stage2": "ran", "filter2": "ran", "embed": "ran",
                                                    "index": "ran", "evaluate": "ran"}
    config = json.loads((run_dir / layout.PIPELINE_CONFIG).read_text())
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["precision"] == {"setting": "bf16", "lightning": "bf16-mixed", "device": "cpu",
                                   "reason": "forced by the configuration", "dtype": "bfloat16"}
    assert json.loads((run_dir / layout.TIMINGS).read_text())["precision"]["lightning"] == "bf16-mixed"
    for path in layout.vector_outputs(True):
        assert read_vector_metadata(run_dir / path)["precision"] == "bf16-mixed", path
    assert json.loads((run_dir / (layout.STAGE2 + ".meta.json")).read_text())["precision"] == "bf16-mixed"
