"""benchmarks/rb_sweep.py: the grid, the synthetic sources and the scores, against a tiny finished pipeline run.

The sweep must reproduce the pipeline's own rows for the settings the pipeline computes, and its extra
sources (sample subsets, unfiltered, stricter round trip, another split's queries) must change what they say.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import train
from benchmarks import rb_sweep
from helpers import make_tiny_bert2bert, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from pipeline import layout
from pipeline.evaluation import Evaluator
from retrieval.rao_blackwell import RaoBlackwellConfig

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
DEFAULT_W = RaoBlackwellConfig().doc_weight  # the table's rows use the code default
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The pipeline arguments of a finished tiny run (the filter keeps some outputs and drops others)."""
    model = make_tiny_bert2bert(tmp_path_factory.mktemp("models") / "bert2bert")
    profile = tmp_path_factory.mktemp("profiles") / "tiny.yaml"
    config = tiny_pipeline_profile(FIXTURE, model, evaluate={"sweep_doc_weights": [0.5], "k_values": [1, 10, 100],
                                                             "methods": ["manual", "bertscore"]})
    config["filter"]["min_words"] = {"question": 10, "keywords": 1}  # drops the 8-9-word questions: an unfiltered pool
    profile.write_text(yaml.safe_dump(config))
    args = ["-c", str(profile), "--run_dir", str(tmp_path_factory.mktemp("runs") / "tiny")]
    train.main(["pipeline", *args])
    return args


def _rows(study: dict) -> dict[str, dict]:
    return {row["source_key"] + "/" + row["level"] + "/" + row["rao_blackwell"]["method"]
            + f"/{row['rao_blackwell']['doc_weight']}/{row['multi_sentence_weight']}": row for row in study["rows"]}


def test_grid_expands_and_drops_duplicates() -> None:
    grid = {"base": {"rao_blackwell": {"method": "manual"}},
            "blocks": [{"name": "b", "level": ["doc", "multi"], "multi_sentence_weight": [1.0, 0.5],
                        "source": [{"stages": "stage1"}, {"stages": ["stage2"], "samples": [0]}],
                        "rao_blackwell": {"doc_weight": [0.5, 0.7]}}]}
    settings = rb_sweep.expand_grid(grid, default_stage="stage2")
    # doc level ignores the sentence mix: 2 sources x 2 weights at doc, x 2 mixes at multi
    assert len(settings) == 2 * 2 + 2 * 2 * 2
    assert settings[0].varied == ("level", "source", "multi_sentence_weight", "doc_weight")
    assert {s.source.key for s in settings} == {"stage1", "stage2[s0]"}
    with pytest.raises(ValueError, match="unknown keys"):
        rb_sweep.expand_grid({"blocks": [{"name": "x", "levels": ["doc"]}]}, "stage2")
    with pytest.raises(ValueError, match="unknown source keys"):
        rb_sweep.expand_grid({"blocks": [{"source": [{"stage": "stage1"}]}]}, "stage2")


def test_sweep_reproduces_pipeline_rows_and_sources_differ(finished_run: list[str], tmp_path: Path) -> None:
    grid = {"blocks": [
        {"name": "pipeline", "level": ["doc", "sentence", "multi"], "source": [{"stages": ["stage2"]}],
         "rao_blackwell": {"method": ["manual", "bertscore"], "doc_weight": [DEFAULT_W]}},
        {"name": "sources", "level": ["doc"], "source": [
            {"stages": ["stage2"], "samples": [0]}, {"stages": ["stage1"], "filtered": False},
            {"stages": ["stage1"], "roundtrip_k": 1}, {"stages": ["stage1", "stage2"]}],
         "rao_blackwell": {"method": ["manual", "bertscore"], "doc_weight": [0.5]}},
        {"name": "no-synthetic", "level": ["doc", "multi"], "rao_blackwell": {"doc_weight": [1.0]}},
        {"name": "parent", "level": ["doc", "multi"],  # parent_share needs the documents' vectors at every level
         "rao_blackwell": {"parent_share": [0.2], "doc_weight": [0.6]}},
    ]}
    study = rb_sweep.main(["--grid", str(_write(tmp_path / "grid.yaml", grid)), "--splits", "train", "test",
                           "--output", str(tmp_path / "out"), "--", *finished_run])
    run_dir = Path(finished_run[-1])
    pipeline_rows = {r["system"]: r for r in json.loads((run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    rows = _rows(study)
    for level in ("doc", "sentence", "multi"):
        for method in ("manual", "bertscore"):
            swept = rows[f"stage2/{level}/{method}/{DEFAULT_W}/1.0"]["metrics"]["test"]["ndcg@10"]
            assert swept == pytest.approx(pipeline_rows[f"rb-{method}-{level}-stage2"]["ndcg@10"], abs=1e-5)
    assert study["baselines"]["test"]["dense"]["ndcg@10"] == pytest.approx(pipeline_rows["dense"]["ndcg@10"], abs=1e-5)
    assert rows["stage2/doc/manual/1.0/1.0"]["metrics"]["test"] == study["baselines"]["test"]["dense"]
    assert rows["stage2/multi/manual/1.0/1.0"]["metrics"]["test"] == study["baselines"]["test"]["dense-multi"]
    assert "dense-multi nDCG@10" in (tmp_path / "out" / "sweep.md").read_text()
    # the train split is scored with its own queries and qrels
    assert study["splits"]["train"]["queries"] != study["splits"]["test"]["queries"]
    assert study["selection_split"] == "train" and study["best"]["metrics"]["train"]["ndcg@10"] == max(
        r["metrics"]["train"]["ndcg@10"] for r in study["rows"])
    assert (tmp_path / "out" / "sweep.json").is_file() and "## sources" in (tmp_path / "out" / "sweep.md").read_text()


def test_sources_select_the_outputs_they_name(finished_run: list[str]) -> None:
    ctx = rb_sweep.load_context(finished_run)
    evaluator = Evaluator(ctx)
    sources = rb_sweep.SweepSources(evaluator, ctx.run_dir / "cache" / "sweep")
    kept = evaluator.synthetic("stage1")
    raw = len((ctx.run_dir / layout.STAGE1).read_text().splitlines())
    assert sources.name(rb_sweep.Source(stages=("stage1",))) == "stage1"  # the pipeline's own outputs
    unfiltered = evaluator.synthetic(sources.name(rb_sweep.Source(stages=("stage1",), filtered=False)))
    assert len(kept.texts) < raw == len(unfiltered.texts)
    first = evaluator.synthetic(sources.name(rb_sweep.Source(stages=("stage2",), samples=(0,))))
    assert 0 < len(first.texts) < len(evaluator.synthetic("stage2").texts) and (first.sample_idx == 0).all()
    strict = evaluator.synthetic(sources.name(rb_sweep.Source(stages=("stage1",), roundtrip_k=1)))
    scores = strict.vectors @ evaluator.documents.T
    assert (scores.argmax(1) == strict.doc).all()  # each kept output retrieves its own document first
    both = sources.name(rb_sweep.Source(stages=("stage1", "stage2")))
    weights = evaluator.output_scores(both, "bertscore")  # the parts' scores, concatenated
    assert len(weights) == len(kept.texts) + len(evaluator.synthetic("stage2").texts)
    assert weights.equal(torch.cat([evaluator.output_scores("stage1", "bertscore"),
                                    evaluator.output_scores("stage2", "bertscore")]))


def test_subcorpus_scores_only_queries_judged_inside(finished_run: list[str], tmp_path: Path) -> None:
    ctx = rb_sweep.load_context(finished_run)
    everything = Evaluator(ctx)
    full = everything.score_units(everything.units("doc"))
    same = Evaluator(ctx, keep_docs=set(everything.doc_ids))
    assert same.score_units(same.units("doc")) == full
    judged = {d for docs in everything.dataset.qrels.values() for d in docs}
    keep = judged | set(everything.doc_ids[:3])
    part = Evaluator(ctx, keep_docs=keep)
    assert all(all(d in keep for d in docs) for docs in part.dataset.qrels.values())
    scores = part.score_units(part.units("doc"))  # fewer distractors: relevant documents only move up
    assert 0.0 <= scores["ndcg@10"] <= 1.0 and scores["ndcg@10"] >= full["ndcg@10"] - 1e-9


def _write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj))
    return path


def test_dense_multi_is_the_multi_level_without_synthetic_outputs(finished_run: list[str]) -> None:
    """``dense-multi``: the sentences plus each document's own vector, i.e. the multi level at document weight 1."""
    import dataclasses

    ctx = rb_sweep.load_context(finished_run)
    evaluator = Evaluator(ctx)
    plain = evaluator.corpus_only_units("multi")
    assert len(plain.vectors) == len(evaluator.sentences.vectors) + len(evaluator.doc_ids)
    assert plain.vectors[-len(evaluator.doc_ids):].equal(evaluator.documents)
    only_documents = evaluator.multi_units("stage1", dataclasses.replace(ctx.rao_blackwell, doc_weight=1.0))
    assert only_documents.vectors.allclose(plain.vectors, atol=1e-6)
    augmented = evaluator.multi_units("stage1", ctx.rao_blackwell)
    assert not augmented.vectors.allclose(plain.vectors, atol=1e-3)  # the synthetic outputs move some vectors
    rows = {row["system"]: row for row in json.loads((ctx.run_dir / layout.RESULTS_JSON).read_text())["rows"]}
    assert rows["dense-multi"]["ndcg@10"] == pytest.approx(evaluator.score_units(plain)["ndcg@10"], abs=1e-9)


def test_markdown_states_the_sentence_mix_of_the_multi_rows() -> None:
    """A block over levels: the 'Fixed' line gives the multi rows' sentence mix, not the doc rows' (1.0)."""
    def row(level: str, weight: float, score: float) -> dict:
        return {"block": "b", "level": level, "source_key": "stage1", "multi_sentence_weight": weight,
                "rao_blackwell": {"method": "manual"}, "varied": ["level"], "table": {"level": level},
                "metrics": {"test": {"ndcg@10": score}}}

    rows = [row("doc", 1.0, 0.5), row("multi", 0.6, 0.7)]
    baseline = {"ndcg@10": 0.6}
    study = {"run_dir": "r", "encoder": "e", "selection_split": "test", "splits": {"test": {"queries": 3, "documents": 9}},
             "baselines": {"test": {"dense": baseline, "dense-sentence": baseline, "dense-multi": baseline}},
             "best": rows[1], "rows": rows}
    text = rb_sweep.markdown(study, "cmd")
    assert "multi_sentence_weight=0.6" in text and "multi_sentence_weight=1.0" not in text


def test_baselines_use_plain_sentences_on_every_split(finished_run: list[str]) -> None:
    """``dense-multi`` in a study is the multi level with plain sentences on every split, whatever the profile's
    sentence mix; each setting's mix is its own."""
    ctx = rb_sweep.load_context([*finished_run, "--evaluate.multi_sentence_weight", "0.6"])
    grid = {"blocks": [{"name": "mix", "level": ["multi"], "multi_sentence_weight": [1.0, 0.6],
                        "rao_blackwell": {"doc_weight": [1.0]}}]}
    study = rb_sweep.run_sweep(ctx, grid, ["train", "test"])
    plain, mixed = (next(r for r in study["rows"] if r["multi_sentence_weight"] == w) for w in (1.0, 0.6))
    for split in ("train", "test"):
        assert study["baselines"][split]["dense-multi"] == plain["metrics"][split]
    assert mixed["metrics"] != plain["metrics"]  # the mix changes the scores on this fixture
