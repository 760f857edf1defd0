"""The document-weight default is the train split's choice of the recorded study (issue 13: no default
chosen on test queries), recomputed from the committed ``sweep.json`` files by ``benchmarks.select_defaults``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import select_defaults
from retrieval.rao_blackwell import RaoBlackwellConfig

REPO = Path(__file__).resolve().parents[1]


def test_doc_weight_default_is_the_covered_studys_train_choice() -> None:
    study = json.loads((REPO / select_defaults.STUDIES[select_defaults.SELECTION_STUDY]).read_text())
    choice = select_defaults.select(select_defaults.weight_curves(study))
    assert RaoBlackwellConfig().doc_weight == choice["doc"]


def _study(points: dict[float, tuple[float, float]]) -> dict:
    return {"selection_split": "train", "baselines": {}, "rows": [
        {"block": "level-method-weight", "level": "doc", "source_key": "stage1",
         "rao_blackwell": {"method": "manual", "doc_weight": w}, "metrics": {"train": {"ndcg@10": tr}, "test": {"ndcg@10": te}}}
        for w, (tr, te) in points.items()]}


def test_selection_reads_train_never_test() -> None:
    curves = select_defaults.weight_curves(_study({0.5: (0.7, 0.9), 0.75: (0.8, 0.1), 0.9: (0.6, 0.95)}))
    assert select_defaults.select(curves) == {"doc": 0.75}
    assert select_defaults.select(curves, split="test") == {"doc": 0.9}


def test_a_study_selected_on_another_split_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**_study({0.5: (0.7, 0.9)}), "selection_split": "test"}))
    with pytest.raises(ValueError, match="selection_split"):
        select_defaults.selection({"x": path})
