"""The LLM study's commands compose configurations that parse (CPU profile + budget layer, and the GPU script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import llm_study

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_study_composes_profile_layer_and_slice(tmp_path: Path) -> None:
    plan = llm_study.main(["--gguf", str(tmp_path / "model.gguf"), "--corpus-size", "30", "--n-queries", "10",
                           "--stages", "data", "stage1", "filter", "--dry-run"])
    assert plan["model"] == "lightning_modules.causal_lm.CausalLMModule" and plan["stage1"] == "self"
    assert plan["fit_trainer"]["accumulate_grad_batches"] == 4 and plan["corpus_size"] == 30
    with pytest.raises(SystemExit):
        llm_study.main(["--dry-run"])  # the offline profile needs its GGUF file


@pytest.mark.slow
def test_gpu_script_dry_run_parses_on_a_cpu() -> None:
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "llm_study_gpu.sh"), "--dry-run"], cwd=ROOT,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout[result.stdout.index("{"):])
    assert plan["source"] == "Qwen/Qwen2.5-1.5B-Instruct" and plan["dtype"] == "bfloat16"
    assert plan["lora"]["rank"] == 16 and plan["fit_trainer"] == {}


def test_stage2_rows_are_paired_with_their_stage1_rows(tmp_path: Path) -> None:
    """Each ``*-stage2`` row meets its ``*-stage1`` row on the same queries; rows without a partner are left out."""
    payload = {"dataset": "d", "split": "test", "metrics": ["ndcg@10"], "queries": ["q1", "q2", "q3"],
               "systems": {"rb-manual-multi-stage1": {"ndcg@10": [0.5, 0.2, 1.0]},
                           "rb-manual-multi-stage2": {"ndcg@10": [0.7, 0.2, 0.4]},
                           "rb-uniform-doc-stage2": {"ndcg@10": [1.0, 1.0, 1.0]},
                           "dense": {"ndcg@10": [0.1, 0.1, 0.1]}}}
    path = tmp_path / "per_query.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    result = llm_study.stage2_vs_stage1(path)
    assert list(result) == ["rb-manual-multi-stage2 vs rb-manual-multi-stage1"]
    entry = result["rb-manual-multi-stage2 vs rb-manual-multi-stage1"]
    assert entry["queries"] == 3 and entry["delta"] == pytest.approx((0.2 + 0.0 - 0.6) / 3)
