"""Which document weight the recorded Rao-Blackwell studies choose, on the train split's queries only.

    python -m benchmarks.select_defaults --output benchmarks/results/defaults-selection

Why a script: ``RaoBlackwellConfig.doc_weight`` must be chosen on train queries (issue 13), and a default
whose choice can be recomputed from the committed studies (``benchmarks/rb_sweep.py``'s ``sweep.json``) cannot
silently drift from them. It reads the ``level-method-weight`` block (manual weighting, stage-1 outputs: the
paper's plain mean within a task) and, per level, picks the weight with the best train nDCG@10; the test
column is printed beside it and never consulted. Nothing is recomputed: no run directory is needed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.io import write_json_atomic, write_text_atomic

STUDIES = {"covered": Path("benchmarks/results/scifact-covered/study/sweep.json"),
           "full": Path("benchmarks/results/scifact-offline/study/sweep.json")}
"""The recorded studies: SciFact's covered subset (LLM-written stage 1; the selection study) and full SciFact
(extractive stage 1; reported beside it)."""
SELECTION_STUDY = "covered"
BLOCK, METHOD, SOURCE = "level-method-weight", "manual", "stage1"


def weight_curves(study: dict[str, Any]) -> dict[str, dict[float, dict[str, float]]]:
    """``{level: {doc_weight: {split: nDCG@10}}}`` of the study's manual stage-1 rows."""
    curves: dict[str, dict[float, dict[str, float]]] = {}
    for row in study["rows"]:
        if row["block"] == BLOCK and row["source_key"] == SOURCE and row["rao_blackwell"]["method"] == METHOD:
            curves.setdefault(row["level"], {})[row["rao_blackwell"]["doc_weight"]] = {
                split: metrics["ndcg@10"] for split, metrics in row["metrics"].items()}
    if not curves:
        raise ValueError(f"no '{BLOCK}' rows with method {METHOD} and source {SOURCE} in the study")
    return curves


def select(curves: dict[str, dict[float, dict[str, float]]], split: str = "train") -> dict[str, float]:
    """The best document weight per level on ``split`` (ties: the larger weight, the smaller change)."""
    return {level: max(points, key=lambda w: (points[w][split], w)) for level, points in curves.items()}


def selection(paths: dict[str, Path]) -> dict[str, Any]:
    """Every study's curves and its train choice per level."""
    result: dict[str, Any] = {"selection_split": "train", "selection_study": SELECTION_STUDY, "studies": {}}
    for name, path in paths.items():
        study = json.loads(path.read_text(encoding="utf-8"))
        if study.get("selection_split") != "train":
            raise ValueError(f"{path}: selection_split is {study.get('selection_split')!r}, expected 'train'")
        curves = weight_curves(study)
        result["studies"][name] = {
            "path": str(path), "baselines": {s: {k: v["ndcg@10"] for k, v in b.items()}
                                             for s, b in study["baselines"].items()},
            "curves": {level: {str(w): v for w, v in sorted(points.items())} for level, points in curves.items()},
            "train_choice": select(curves)}
    return result


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# Document weight chosen on train queries", "", f"Command: `{command}`", "",
             f"Rows: block `{BLOCK}`, method `{METHOD}`, source `{SOURCE}` of each study's `sweep.json`. The choice "
             "is the best **train** nDCG@10 per level (**bold**); test is shown, never used. "
             f"`RaoBlackwellConfig.doc_weight` is the `{result['selection_study']}` study's doc-level choice "
             "(the paper's level).", ""]
    for name, study in result["studies"].items():
        lines += [f"## {name} (`{study['path']}`)", "", "| level | doc_weight | train nDCG@10 | test nDCG@10 |",
                  "|---|---:|---:|---:|"]
        for level, points in study["curves"].items():
            for weight, metrics in points.items():
                chosen = float(weight) == study["train_choice"][level]
                cell = f"**{metrics['train']:.5f}**" if chosen else f"{metrics['train']:.5f}"
                lines.append(f"| {level} | {weight} | {cell} | {metrics.get('test', float('nan')):.5f} |")
        base = study["baselines"]
        lines += ["", "No synthetic text (doc_weight 1.0): " + "; ".join(
            f"{split}: dense {b['dense']:.5f}, dense-sentence {b['dense-sentence']:.5f}, dense-multi "
            f"{b['dense-multi']:.5f}" for split, b in base.items()), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for selection.json and selection.md")
    args = parser.parse_args(argv)
    result = selection(STUDIES)
    command = "python -m benchmarks.select_defaults " + shlex.join(argv)
    result["command"] = command
    args.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output / "selection.json", result)
    text = markdown(result, command)
    write_text_atomic(args.output / "selection.md", text)
    print(text)
    return result


if __name__ == "__main__":
    main()
