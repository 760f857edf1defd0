"""The pipeline's embedding in 2 DDP processes (CPU, gloo) gives the same metrics as in 1, every text once.

A finished 1-process run on the tiny fixture is copied; its vectors and results are deleted and the
embed and evaluate stages rerun with ``trainer.devices: 2`` (``ddp_fork``: the same strategy as ``ddp``,
launched by fork so the ranks skip re-importing torch). A wrapper around the vector writer records which
rank wrote which ids: both ranks work, each text is embedded by exactly one of them, and every vector
file holds the same ids, vectors (to float tolerance: batches are composed differently) and metrics.
The generation and fit stages have their own 2-process tests (test_generation.py, test_fit.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from callbacks.vector_writer import VectorWriter
from helpers import make_tiny_bert2bert, one_thread, tiny_pipeline_profile  # noqa: F401  (fixture)
from pipeline import layout
from retrieval.vectors import load_vectors

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.ddp]


def test_two_process_embedding_gives_the_same_vectors_and_metrics(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_tiny_bert2bert(tmp_path / "bert2bert")
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(tiny_pipeline_profile(FIXTURE, model, evaluate={
        "sweep_doc_weights": [1.0], "k_values": [1, 10, 100], "methods": ["manual", "softmax"],
        "levels": ["doc", "sentence"]})))
    single = tmp_path / "single"
    train.main(["pipeline", "-c", str(profile), "--run_dir", str(single)])

    ddp = Path(shutil.copytree(single, tmp_path / "ddp"))
    shutil.rmtree(ddp / layout.VECTORS_DIR)
    (ddp / layout.RESULTS_JSON).unlink()
    written = tmp_path / "written"
    written.mkdir()
    original = VectorWriter.write_on_batch_end

    def recording(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        record = f"{self.output.parent.name}-{self.output.name}"  # vectors/ and vectors/base/ hold the same names
        with open(written / f"{record}.rank{trainer.global_rank}", "a", encoding="utf-8") as handle:
            handle.write("".join(f"{key}\n" for key in prediction["ids"]))
        return original(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx)

    monkeypatch.setattr(VectorWriter, "write_on_batch_end", recording)  # forked ranks inherit the wrapper
    outcomes = train.main(["pipeline", "-c", str(profile), "--run_dir", str(ddp), "--trainer.devices", "2",
                           "--trainer.strategy", "ddp_fork"])
    assert {o.name: o.status for o in outcomes}["embed"] == "ran"

    before_tuning = [layout.base_vectors(p) for p in (layout.DOCUMENTS, layout.QUERIES, layout.SENTENCES)]
    for name in layout.vector_outputs(sentences=True) + before_tuning:  # the tiny model's encoder is tuned
        ids, vectors = load_vectors(ddp / name)
        reference_ids, reference = load_vectors(single / name)
        assert ids == reference_ids and np.allclose(vectors, reference, atol=1e-5), name
        file = f"{Path(name).parent.name}-{Path(name).name}"
        by_rank = [(written / f"{file}.rank{rank}").read_text().split("\n")[:-1] for rank in (0, 1)]
        assert all(by_rank), f"{name}: a rank embedded nothing"
        assert sorted(by_rank[0] + by_rank[1]) == sorted(ids), f"{name}: an id missing or embedded twice"

    rows = {row["system"]: row for row in json.loads((single / layout.RESULTS_JSON).read_text())["rows"]}
    rows_ddp = {row["system"]: row for row in json.loads((ddp / layout.RESULTS_JSON).read_text())["rows"]}
    assert rows_ddp.keys() == rows.keys() and len(rows) > 5
    for system, row in rows.items():
        for metric in ("ndcg@10", "mrr@100", "recall@100"):
            assert rows_ddp[system][metric] == pytest.approx(row[metric], abs=1e-6), (system, metric)
