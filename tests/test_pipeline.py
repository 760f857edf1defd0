"""The whole pipeline on the tiny BEIR fixture with a tiny warm-started encoder-decoder.

One run end to end (every stage's files, every row of the table), then: a second run skips
every stage; a changed Rao-Blackwell weight reruns only the evaluate stage; one stage alone.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    path = tmp_path_factory.mktemp("profiles") / "tiny.yaml"
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
                 layout.RESULTS_MD, layout.SWEEP_JSON, layout.SWEEP_PLOT, *layout.vector_outputs(True)]:
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


def test_second_run_skips_every_stage(finished_run: tuple[Path, list], profile: Path) -> None:
    run_dir, _ = finished_run
    outcomes = _run(profile, run_dir)
    assert [o.status for o in outcomes] == ["skipped"] * len(STAGES)


def test_changed_weight_reruns_only_evaluation(finished_run: tuple[Path, list], profile: Path) -> None:
    run_dir, _ = finished_run
    before = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    outcomes = _run(profile, run_dir, "--rao_blackwell.doc_weight", "0.3")
    assert {o.name: o.status for o in outcomes} == {**{name: "skipped" for name in STAGES}, "evaluate": "ran"}
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
                                                    "evaluate": "ran"}
    config = json.loads((run_dir / layout.PIPELINE_CONFIG).read_text())
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["precision"] == {"setting": "bf16", "lightning": "bf16-mixed", "device": "cpu",
                                   "reason": "forced by the configuration", "dtype": "bfloat16"}
    assert json.loads((run_dir / layout.TIMINGS).read_text())["precision"]["lightning"] == "bf16-mixed"
    for path in layout.vector_outputs(True):
        assert read_vector_metadata(run_dir / path)["precision"] == "bf16-mixed", path
    assert json.loads((run_dir / (layout.STAGE2 + ".meta.json")).read_text())["precision"] == "bf16-mixed"
