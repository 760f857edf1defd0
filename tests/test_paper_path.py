"""The paper's own path through the pipeline, and the switches that change which model does what.

One run in the paper's shape (a tiny FLAN-T5-shaped model writes its own stage-1 texts, is tuned on the
kept ones, writes stage 2, and its tuned encoder embeds everything), then copies of that run directory with
one switch each, so only the affected stages rerun. Each test checks *which weights* produced a file by
recomputing it independently with the tuned and with the base model: generation is seeded per document and
embedding is deterministic, so the file equals exactly one of the two. The results table is checked
against pytrec_eval on a run computed here by hand from the stored vectors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from datamodules.beir import BeirDataset, load_beir
from datamodules.prompts import PromptTemplates
from helpers import make_tiny_t5, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from lightning_modules.decoding import DecodingConfig
from lightning_modules.encoder import EncoderModule
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline import layout
from pipeline.config import STAGES
from core.record_key import RecordKey
from pipeline.embed import embed_texts
from pipeline.generate import generate_synthetic
from retrieval.results import PER_QUERY_JSON, read_per_query
from retrieval.synthetic import read_synthetic
from retrieval.vectors import load_vectors

pytrec_eval = pytest.importorskip("pytrec_eval")

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
MAX_INPUT_LENGTH = 64
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_t5(tmp_path_factory.mktemp("models") / "t5")


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> dict:
    """The paper's shape: ``stage1.source: self``, a T5 model tuned with its encoder trainable, the tuned
    encoder embeds. A high learning rate so that one epoch moves the weights far enough to change samples."""
    model = {"class_path": "lightning_modules.seq2seq.Seq2SeqModule",
             "init_args": {"model_name_or_path": str(base_model), "max_input_length": MAX_INPUT_LENGTH,
                           "learning_rate": 0.05}}
    return {**tiny_pipeline_profile(FIXTURE, base_model), "model": model, "stage1": {"source": "self"},
            "embed": {"batch_size": 16, "encoder": "tuned"}}


def _write(profile: dict, folder: Path) -> Path:
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _run(profile_path: Path, run_dir: Path, *extra: str) -> dict[str, str]:
    outcomes = train.main(["pipeline", "-c", str(profile_path), "--run_dir", str(run_dir), *extra])
    return {outcome.name: outcome.status for outcome in outcomes}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory, profile: dict) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("paper")
    profile_path = _write(profile, root)
    run_dir = root / "run"
    return run_dir, profile_path, _run(profile_path, run_dir)


def _variant(paper_run: tuple[Path, Path, dict[str, str]], tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    """A copy of the paper run with ``extra`` settings: only the stages those settings touch rerun."""
    source, profile_path, _ = paper_run
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    return run_dir, _run(profile_path, run_dir, *extra)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> BeirDataset:
    return load_beir(FIXTURE, "test", cache_dir=tmp_path_factory.mktemp("hf-cache"))


def _texts(path: Path) -> dict[str, str]:
    return {RecordKey(r.doc_id, r.task, r.sample_idx).encode(): r.text for r in read_synthetic(path)}


def _non_empty(path: Path) -> set[str]:
    """The keys of the outputs that can augment a vector (an empty text has no embedding)."""
    return {key for key, text in _texts(path).items() if text.strip()}


def _generate(dataset: BeirDataset, model: Path, profile: dict, output: Path) -> dict[str, str]:
    """Stage 2 as the pipeline would write it with ``model``'s weights, computed here independently."""
    module = Seq2SeqModule(model_name_or_path=str(model), max_input_length=MAX_INPUT_LENGTH)
    generate_synthetic(dataset, module, PromptTemplates(), decoding=DecodingConfig(**profile["generation"]["decoding"]),
                       output=output, stage=2, trainer_kwargs={**profile["trainer"], "logger": False},
                       batch_size=8, progress=False)
    return _texts(output)


def _embed_documents(dataset: BeirDataset, encoder: Path, output: Path) -> np.ndarray:
    items = [(doc_id, dataset.doc_text(doc_id)) for doc_id in dataset.doc_ids]
    _, vectors = embed_texts(items, EncoderModule(str(encoder)), output, batch_size=16,
                             trainer_kwargs={"accelerator": "cpu", "devices": 1, "logger": False})
    return np.asarray(vectors, dtype=np.float32)


def test_paper_shape_runs_every_stage_with_the_model_writing_stage_1(paper_run) -> None:
    run_dir, _, statuses = paper_run
    assert statuses == dict.fromkeys(STAGES, "ran")
    stage1 = [json.loads(line) for line in (run_dir / layout.STAGE1).read_text().splitlines()]
    assert stage1 and {r["stage"] for r in stage1} == {1}
    assert all(Path(r["model"]).name == "t5" for r in stage1), "stage 1 is written by the model itself"
    assert (run_dir / layout.TRAIN).stat().st_size > 0, "the filter kept some of the model's own outputs"
    results = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    assert {"rb-manual-doc-stage2", "rb-bertscore-sentence-stage1"} <= {row["system"] for row in results["rows"]}


def test_stage_2_is_generated_with_the_tuned_weights(paper_run, dataset, profile, tmp_path) -> None:
    run_dir, _, _ = paper_run
    written = _texts(run_dir / layout.STAGE2)
    tuned = _generate(dataset, run_dir / layout.TUNED_MODEL, profile, tmp_path / "tuned.jsonl")
    base = _generate(dataset, Path(profile["model"]["init_args"]["model_name_or_path"]), profile,
                     tmp_path / "base.jsonl")
    assert base != tuned, "tuning changed the samples (else this test could not tell the two apart)"
    assert written == tuned


def test_embed_stage_uses_the_tuned_encoder(paper_run, dataset, profile, tmp_path) -> None:
    run_dir, _, _ = paper_run
    ids, stored = load_vectors(run_dir / layout.DOCUMENTS)
    assert list(ids) == list(dataset.doc_ids)
    tuned = _embed_documents(dataset, run_dir / layout.TUNED_MODEL, tmp_path / "tuned.safetensors")
    base = _embed_documents(dataset, Path(profile["model"]["init_args"]["model_name_or_path"]),
                            tmp_path / "base.safetensors")
    assert np.abs(tuned - base).max() > 1e-3, "tuning moved the encoder (freeze_encoder is off)"
    np.testing.assert_allclose(np.asarray(stored), tuned, atol=1e-5)


def test_embed_encoder_base_embeds_with_the_untuned_encoder(paper_run, dataset, profile, tmp_path) -> None:
    run_dir, statuses = _variant(paper_run, tmp_path, "--embed.encoder", "base")
    assert [name for name, status in statuses.items() if status == "ran"] == ["embed", "index", "evaluate"]
    _, stored = load_vectors(run_dir / layout.DOCUMENTS)
    base = _embed_documents(dataset, Path(profile["model"]["init_args"]["model_name_or_path"]),
                            tmp_path / "base.safetensors")
    np.testing.assert_allclose(np.asarray(stored), base, atol=1e-5)


def test_fit_skip_generates_stage_2_with_the_base_model(paper_run, dataset, profile, tmp_path) -> None:
    run_dir, statuses = _variant(paper_run, tmp_path, "--fit.skip", "true")
    assert "tune" not in statuses
    assert [name for name, status in statuses.items() if status == "ran"] == ["stage2", "filter2", "embed",
                                                                              "index", "evaluate"]
    base = _generate(dataset, Path(profile["model"]["init_args"]["model_name_or_path"]), profile,
                     tmp_path / "base.jsonl")
    assert _texts(run_dir / layout.STAGE2) == base
    _, stored = load_vectors(run_dir / layout.DOCUMENTS)  # embed.encoder "tuned" without tuning: the base encoder
    base_vectors = _embed_documents(dataset, Path(profile["model"]["init_args"]["model_name_or_path"]),
                                    tmp_path / "base.safetensors")
    np.testing.assert_allclose(np.asarray(stored), base_vectors, atol=1e-5)


def test_unfiltered_outputs_augment_when_use_filtered_is_false(paper_run, tmp_path) -> None:
    source, _, _ = paper_run
    kept = {stage: set(_texts(source / path)) for stage, path in (("stage1", layout.STAGE1_KEPT),
                                                                  ("stage2", layout.STAGE2_KEPT))}
    raw = {stage: _non_empty(source / path) for stage, path in (("stage1", layout.STAGE1),
                                                                ("stage2", layout.STAGE2))}
    assert kept["stage1"] < raw["stage1"] or kept["stage2"] < raw["stage2"], "the filter dropped non-empty texts"
    for stage in ("stage1", "stage2"):  # the paper run augments with the kept outputs only
        assert set(load_vectors(source / layout.synthetic_vectors(stage))[0]) == kept[stage]
    run_dir, statuses = _variant(paper_run, tmp_path, "--evaluate.use_filtered", "false")
    assert [name for name, status in statuses.items() if status == "ran"] == ["embed", "index", "evaluate"]
    for stage in ("stage1", "stage2"):
        assert set(load_vectors(run_dir / layout.synthetic_vectors(stage))[0]) == raw[stage]


def test_filter_stage2_false_keeps_every_stage_2_output(paper_run, tmp_path) -> None:
    source, _, _ = paper_run
    assert (source / layout.STAGE2_FILTER_REPORT).is_file()
    run_dir, statuses = _variant(paper_run, tmp_path, "--generation.filter_stage2", "false")
    assert [name for name, status in statuses.items() if status == "ran"] == ["filter2", "embed", "index", "evaluate"]
    assert _texts(run_dir / layout.STAGE2_KEPT) == _texts(run_dir / layout.STAGE2)
    assert not (run_dir / layout.STAGE2_FILTER_REPORT).exists(), "no report of a filter that did not run"
    assert set(load_vectors(run_dir / layout.synthetic_vectors("stage2"))[0]) == _non_empty(run_dir / layout.STAGE2)


def test_a_forced_rerun_of_a_finished_tuning_tunes_again(paper_run, tmp_path) -> None:
    """The last checkpoint of a finished tuning must not be resumed: it would train nothing and save no model."""
    source, _, _ = paper_run
    run_dir, statuses = _variant(paper_run, tmp_path, "--force", "[tune]")
    assert statuses["tune"] == "ran"
    assert (run_dir / layout.TUNED_MODEL / "config.json").is_file()
    assert (run_dir / layout.FIT_DIR / "run-key.txt").read_text().split()[-1] == "finished"
    # same data, same settings, same seed: the same tuned weights as the first tuning
    tuned = Seq2SeqModule(model_name_or_path=str(run_dir / layout.TUNED_MODEL)).model.state_dict()
    first = Seq2SeqModule(model_name_or_path=str(source / layout.TUNED_MODEL)).model.state_dict()
    assert all(np.allclose(tuned[name].numpy(), first[name].numpy(), atol=1e-6) for name in first)


def test_bertscore_layer_reruns_only_evaluate_and_is_checked(paper_run, tmp_path) -> None:
    source, profile_path, _ = paper_run
    rows = lambda run: {r["system"]: r for r in json.loads((run / layout.RESULTS_JSON).read_text())["rows"]}  # noqa
    run_dir, statuses = _variant(paper_run, tmp_path, "--rao_blackwell.bertscore_layer", "1")
    assert [name for name, status in statuses.items() if status == "ran"] == ["evaluate"]
    assert len(list((run_dir / "cache").glob("bertscore-stage1-*.npy"))) == 2, "one cache file per layer"
    assert rows(run_dir)["rb-bertscore-doc-stage1"]["rao_blackwell"]["bertscore_layer"] == 1
    assert rows(run_dir)["rb-manual-doc-stage1"]["ndcg@10"] == rows(source)["rb-manual-doc-stage1"]["ndcg@10"]
    with pytest.raises(ValueError, match=r"rao_blackwell.bertscore_layer: .*\[0, 2\]"):
        _run(profile_path, run_dir, "--rao_blackwell.bertscore_layer", "3")


def _hand_made_dense_run(run_dir: Path, where=lambda path: path) -> dict[str, dict[str, float]]:
    """Cosine of every query with every document from the stored vectors (``where`` maps the layout path),
    by numpy alone."""
    doc_ids, docs = load_vectors(run_dir / where(layout.DOCUMENTS))
    query_ids, queries = load_vectors(run_dir / where(layout.QUERIES))
    scores = np.asarray(queries, dtype=np.float64) @ np.asarray(docs, dtype=np.float64).T
    return {qid: {doc: float(score) for doc, score in zip(doc_ids, row)} for qid, row in zip(query_ids, scores)}


def test_results_table_row_equals_pytrec_eval_on_a_hand_made_run(paper_run, dataset) -> None:
    run_dir, _, _ = paper_run
    run = _hand_made_dense_run(run_dir)
    assert len(next(iter(run.values()))) < 100, "the whole corpus is ranked, so MRR@100 is trec_eval's recip_rank"
    qrels = {qid: dict(judged) for qid, judged in dataset.qrels.items()}
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "recip_rank"}).evaluate(run)
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    per_query = read_per_query(run_dir / PER_QUERY_JSON)
    for ours, theirs in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("mrr@100", "recip_rank")):
        expected = {qid: values[theirs] for qid, values in reference.items()}
        assert rows["dense"][ours] == pytest.approx(np.mean(list(expected.values())), abs=1e-6), ours
        assert set(per_query["dense"]) == set(expected)
        for qid, value in expected.items():
            assert per_query["dense"][qid][ours] == pytest.approx(value, abs=1e-6), (qid, ours)


def test_every_rb_and_expansion_row_carries_its_paired_tests(paper_run) -> None:
    from scipy import stats

    run_dir, _, _ = paper_run
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    per_query = read_per_query(run_dir / PER_QUERY_JSON)
    assert set(per_query) == set(rows), "every row keeps its per-query values"
    compared = [name for name in rows if name.startswith(("rb-", "expansion-"))]
    tuned, base = {"dense", "dense-sentence", "dense-multi"}, {"dense-base", "dense-sentence-base", "dense-multi-base"}
    # tuning moved the encoder: before-tuning rows against the base encoder's rows, after-tuning rows against both
    assert compared and all(set(rows[name]["vs"]) == (base if name.endswith("-stage1") else tuned | base)
                            for name in compared)
    assert not any("vs" in row for name, row in rows.items() if name not in compared)
    for name in compared:
        for base, entry in rows[name]["vs"].items():
            queries = sorted(per_query[name])
            ours = np.array([per_query[name][q]["ndcg@10"] for q in queries])
            theirs = np.array([per_query[base][q]["ndcg@10"] for q in queries])
            assert entry["metric"] == "ndcg@10" and entry["queries"] == len(queries)
            assert entry["delta"] == pytest.approx(rows[name]["ndcg@10"] - rows[base]["ndcg@10"], abs=1e-12)
            if np.ptp(ours - theirs) > 0:
                assert entry["p_t"] == pytest.approx(stats.ttest_rel(ours, theirs).pvalue, rel=1e-9)
            assert 0 < entry["p_rand"] <= 1 and entry["exact"]  # a handful of queries: every assignment enumerated
    markdown = (run_dir / layout.RESULTS_MD).read_text()
    assert "| vs dense / dense-sentence / dense-multi |" in markdown.splitlines()[2]
    assert "paired randomisation test" in markdown and "the paper's two levels" in markdown


def test_before_tuning_rows_use_the_base_encoder_and_after_tuning_rows_the_tuned_one(paper_run, dataset, profile,
                                                                                      tmp_path) -> None:
    """The paper's main comparison: the out-of-the-box model (base encoder, stage-1 outputs) against the tuned
    model (tuned encoder, stage-2 outputs), at document and sentence level."""
    run_dir, _, _ = paper_run
    base_model = profile["model"]["init_args"]["model_name_or_path"]
    _, stored = load_vectors(run_dir / layout.base_vectors(layout.DOCUMENTS))
    np.testing.assert_allclose(np.asarray(stored), _embed_documents(dataset, Path(base_model), tmp_path / "b.st"),
                               atol=1e-5)
    for path in (layout.QUERIES, layout.SENTENCES, layout.synthetic_vectors("stage1"), layout.expansion_vectors("stage1")):
        assert (run_dir / layout.base_vectors(path)).is_file(), path
    assert not (run_dir / layout.base_vectors(layout.synthetic_vectors("stage2"))).exists()
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    for level in ("doc", "sentence"):
        assert rows[f"rb-manual-{level}-stage1"]["encoder"] == base_model
        assert rows[f"rb-manual-{level}-stage2"]["encoder"] == str(run_dir / layout.TUNED_MODEL)
    assert rows["dense-base"]["encoder"] == base_model and rows["dense"]["encoder"] == str(run_dir / layout.TUNED_MODEL)
    qrels = {qid: dict(judged) for qid, judged in dataset.qrels.items()}
    for system, where in (("dense-base", layout.base_vectors), ("dense", lambda path: path)):
        reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(_hand_made_dense_run(run_dir, where))
        expected = np.mean([values["ndcg_cut_10"] for values in reference.values()])
        assert rows[system]["ndcg@10"] == pytest.approx(expected, abs=1e-6), system
    assert rows["dense-base"]["ndcg@10"] != rows["dense"]["ndcg@10"] or rows["dense-base"]["mrr@100"] != \
        rows["dense"]["mrr@100"], "the two encoders rank differently (else this test could not tell them apart)"
    assert "base model's encoder (before tuning" in (run_dir / layout.RESULTS_MD).read_text()


def test_a_frozen_encoder_reuses_its_vectors_for_the_before_tuning_rows(paper_run, tmp_path) -> None:
    run_dir, statuses = _variant(paper_run, tmp_path, "--model.init_args.freeze_encoder", "true")
    assert statuses["tune"] == "ran" and statuses["embed"] == "ran"
    assert not (run_dir / layout.BASE_VECTORS_DIR).exists(), "the first run's base vectors are removed, none made"
    rows = {row["system"]: row for row in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    assert not [name for name in rows if name.endswith("-base")]
    assert rows["rb-manual-doc-stage1"]["encoder"] == str(run_dir / layout.TUNED_MODEL)
    assert set(rows["rb-manual-doc-stage1"]["vs"]) == {"dense", "dense-sentence", "dense-multi"}
    assert "has the base model's weights (frozen)" in (run_dir / layout.RESULTS_MD).read_text()
