"""Real data with empty documents (issue 17): the tiny fixture plus two documents with neither title nor text,
one of them judged relevant, runs through ``train.py baselines`` and the whole pipeline, as BEIR keeps them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import train
from helpers import make_tiny_bert2bert, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from pipeline import layout
from retrieval.vectors import read_vector_ids

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
EMPTY = ("e1", "e2")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(shutil.copytree(FIXTURE, tmp_path_factory.mktemp("empty") / "beir"))
    with open(root / "corpus.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "e1", "title": "", "text": ""}) + "\n")
        handle.write(json.dumps({"_id": "e2", "text": " "}) + "\n")
    with open(root / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q2\te1\t1\n")
    return root


def test_baselines_keep_the_empty_documents_and_score_them(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "baselines"
    train.main(["baselines", "--data.path", str(data), "--output_dir", str(out), "--batch_size", "8",
                "--trainer", '{"accelerator": "cpu", "enable_progress_bar": false}'])
    rows = {row["system"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"bm25", "dense"}
    assert set(EMPTY) <= set(read_vector_ids(out / "vectors" / "corpus.safetensors"))
    # BM25 never finds q2's empty judged document (no terms): q2's recall is 2/3, the others' 1, as BEIR counts
    assert rows["bm25"]["recall@100"] == pytest.approx((5 + 2 / 3) / 6)
    assert rows["dense"]["recall@100"] == 1.0  # the empty document has a vector (22 documents, depth 100)
    assert "22 documents" in capsys.readouterr().out


def test_pipeline_runs_every_stage_with_the_empty_documents(data: Path, tmp_path: Path) -> None:
    model = make_tiny_bert2bert(tmp_path / "models" / "bert2bert")
    config = tiny_pipeline_profile(data, model, generation={"batch_size": 8, "decoding": {
        "num_samples": 1, "max_new_tokens": 4, "top_k": 20, "top_p": None}})
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    outcomes = train.main(["pipeline", "-c", str(profile), "--run_dir", str(run)])
    assert all(o.status == "ran" for o in outcomes)
    assert set(EMPTY) <= set((run / layout.KEPT_DOCS).read_text().split())
    stage2 = [json.loads(line) for line in (run / layout.STAGE2).read_text().splitlines()]
    assert {(r["doc_id"], r["task"]) for r in stage2 if r["doc_id"] in EMPTY} == \
        {(d, t) for d in EMPTY for t in ("question", "keywords")}  # an empty prompt text, generated all the same
    assert set(EMPTY) <= set(read_vector_ids(run / layout.DOCUMENTS))
    rows = {row["system"]: row for row in json.loads((run / layout.RESULTS_JSON).read_text())["rows"]}
    assert rows["bm25"]["recall@100"] == pytest.approx((5 + 2 / 3) / 6)  # as in the baselines
    assert rows["dense"]["recall@100"] == 1.0 and all(0.0 <= row["ndcg@10"] <= 1.0 for row in rows.values())
