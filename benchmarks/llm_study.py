"""The LLM self-instruct study on a SciFact slice: does tuning an LLM on its own filtered outputs help? (issue 14)

One pipeline run with a decoder-only LLM (``configs/profiles/llm-offline.yaml``: a local GGUF, LoRA, CPU; or
``llm-qwen2.5-1.5b-gpu.yaml`` on a GPU, see ``benchmarks/llm_study_gpu.sh``) on a slice cut by the project's
downsampling: every test query, every document they judge, and seeded others up to ``--corpus-size``. Stage 1 is
written by the model itself through the pipeline. The report (``--out``): ``summary.json`` (the command, the load,
each stage's wall time, seconds per prompt, the filter pass rate of stage 1 and stage 2), ``fit-samples.md``
(stage-1 and stage-2 outputs side by side, kept or dropped), and the run's ``results.{json,md}`` with
``stage2-vs-stage1.json`` (each tuned row paired per query with its untuned row) when it evaluated.

  python -m benchmarks.llm_study --gguf /work/llm/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf       # the whole study
  python -m benchmarks.llm_study --gguf FILE --corpus-size 30 --n-queries 10 --stages data stage1 filter \\
      --label smoke --out benchmarks/results/scifact-llm/smoke                                    # a smoke run
  python -m benchmarks.llm_study --gguf FILE --dry-run          # parse the composed configuration, run nothing
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.record import REPO, command_line, default_data, load_average

SAMPLES = 12
"""Documents shown in fit-samples.md."""


def pipeline_args(options: argparse.Namespace) -> list[str]:
    """The ``train.py pipeline`` arguments the options stand for."""
    args = ["-c", str(options.profile)]
    if options.layer:
        args += ["-c", str(options.layer)]
    if options.gguf:
        args += ["--model.init_args.gguf_file", str(options.gguf)]
    if options.model:
        args += ["--model.init_args.model_name_or_path", str(options.model)]
    args += ["--data.path", str(options.data), "--data.downsample.corpus_size", str(options.corpus_size),
             "--run_dir", str(options.run_dir)]
    if options.n_queries is not None:
        args += ["--data.downsample.n_queries", str(options.n_queries)]
    if options.stages:
        args += ["--stages", json.dumps(options.stages)]
    return [*args, *options.extra]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def pass_rate(report_path: Path) -> dict[str, Any] | None:
    """Kept / total overall and per task, from a filter report."""
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text(encoding="utf-8"))
    rates = {"total": report["total"], "kept": report["kept"], "pass_rate": round(report["kept"] / report["total"], 4)}
    for task, counts in report.get("per_task", {}).items():
        rates[task] = {"total": counts["total"], "kept": counts["kept"],
                       "pass_rate": round(counts["kept"] / max(counts["total"], 1), 4),
                       "dropped": {rule: n for rule, n in counts.get("dropped", {}).items() if n}}
    return rates


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall seconds of every stage that ran, from the runner's markers."""
    seconds = {}
    for marker in sorted((run_dir / ".stages").glob("*.json")):
        seconds[marker.stem] = json.loads(marker.read_text(encoding="utf-8")).get("seconds")
    return seconds


def samples_table(run_dir: Path, limit: int = SAMPLES) -> str:
    """Stage-1 and stage-2 outputs of the first ``limit`` documents, each marked kept or dropped by the filter."""
    from pipeline import layout

    def kept_keys(path: Path) -> set[tuple[str, str, int]]:
        return {(r["doc_id"], r["task"], r["sample_idx"]) for r in _read_jsonl(path)}

    rows = ["| doc | task | stage | kept | text |", "|---|---|---|---|---|"]
    stages = [("1", run_dir / layout.STAGE1, kept_keys(run_dir / layout.STAGE1_KEPT)),
              ("2", run_dir / layout.STAGE2, kept_keys(run_dir / layout.STAGE2_KEPT))]
    records = {stage: _read_jsonl(path) for stage, path, _ in stages}
    docs = list(dict.fromkeys(r["doc_id"] for r in records["1"]))[:limit]
    for doc in docs:
        for stage, _, kept in stages:
            for r in records[stage]:
                if r["doc_id"] == doc:
                    text = r["text"].replace("|", "\\|").replace("\n", " ")
                    mark = "yes" if (r["doc_id"], r["task"], r["sample_idx"]) in kept else "no"
                    rows.append(f"| {doc} | {r['task']} | {stage} | {mark} | {text} |")
    return "\n".join(rows) + "\n"


def stage2_vs_stage1(per_query_path: Path, metric: str = "ndcg@10") -> dict[str, Any]:
    """Every Rao-Blackwell row from tuned outputs (``*-stage2``) against the same row from untuned ones
    (``*-stage1``), paired per query: the study's question of whether tuning changed retrieval."""
    from retrieval.results import read_per_query
    from retrieval.significance import paired_compare

    systems = read_per_query(per_query_path)
    return {f"{name} vs {name[:-1]}1": paired_compare(*({q: v[metric] for q, v in systems[s].items()}
                                                          for s in (name, name[:-1] + "1")), metric=metric).to_json()
            for name in systems if name.endswith("-stage2") and name[:-1] + "1" in systems}


def report(options: argparse.Namespace, argv: Sequence[str] | None, started: float, load_before: float) -> Path:
    """Write summary.json and fit-samples.md (and copy the results when the run evaluated) into ``--out``."""
    from core.io import write_json_atomic, write_text_atomic
    from pipeline import layout
    from retrieval.results import PER_QUERY_JSON

    run_dir, out = Path(options.run_dir), Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = stage_seconds(run_dir)
    stage1 = _read_jsonl(run_dir / layout.STAGE1)
    documents = len((run_dir / layout.KEPT_DOCS).read_text().split()) if (run_dir / layout.KEPT_DOCS).is_file() else 0
    prompts = len({(r["doc_id"], r["task"]) for r in stage1})
    summary = {
        "label": options.label,
        "command": command_line("benchmarks.llm_study", argv),
        "pipeline_args": pipeline_args(options),
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_average()},
        "wall_seconds": round(time.monotonic() - started, 1),
        "documents": documents,
        "stage1_prompts": prompts,
        "stage_seconds": seconds,
        "stage1_seconds_per_prompt": round(seconds["stage1"] / prompts, 2) if prompts and "stage1" in seconds else None,
        "stage1_seconds_per_document": round(seconds["stage1"] / documents, 2) if documents and "stage1" in seconds
        else None,
        "filter_stage1": pass_rate(run_dir / layout.FILTER_REPORT),
        "filter_stage2": pass_rate(run_dir / layout.STAGE2_FILTER_REPORT),
    }
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "fit-samples.md", f"# Stage-1 and stage-2 outputs ({options.label})\n\n"
                                              f"`{summary['command']}`\n\n" + samples_table(run_dir))
    per_query = run_dir / PER_QUERY_JSON
    if per_query.is_file():
        write_json_atomic(out / "stage2-vs-stage1.json", stage2_vs_stage1(per_query))
    for name in (layout.RESULTS_JSON, layout.RESULTS_MD):
        if (run_dir / name).is_file():
            write_text_atomic(out / Path(name).name, (run_dir / name).read_text(encoding="utf-8"))
    fit_samples = run_dir / layout.FIT_DIR / "tables" / "fit-samples.md"
    if fit_samples.is_file():
        write_text_atomic(out / "tuning-samples.md", fit_samples.read_text(encoding="utf-8"))
    return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="a local GGUF file (the offline profile needs one)")
    parser.add_argument("--model", help="model_name_or_path instead (a folder or hub name: the GPU profile)")
    parser.add_argument("--profile", type=Path, default=REPO / "configs" / "profiles" / "llm-offline.yaml")
    parser.add_argument("--layer", type=Path, default=REPO / "configs" / "budget" / "llm-cpu-2core.yaml",
                        help="a budget layer over the profile; '' for none")
    parser.add_argument("--data", type=Path, default=default_data(), help="the BEIR SciFact folder")
    parser.add_argument("--corpus-size", type=int, default=400, help="documents: every judged one plus others")
    parser.add_argument("--n-queries", type=int, default=None, help="test queries kept (default: all)")
    parser.add_argument("--stages", nargs="*", default=None, help="run only these stages (default: all)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "scifact-llm")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scifact-llm")
    parser.add_argument("--label", default="study", help="what the record is (study, smoke, gpu)")
    parser.add_argument("--dry-run", action="store_true", help="parse the composed configuration; run nothing")
    parser.add_argument("extra", nargs="*", help="more pipeline arguments after --")
    options = parser.parse_args(argv)
    if not options.gguf and not options.model and "llm-offline" in options.profile.name:
        parser.error("the offline profile needs --gguf FILE (../shared/tools/provision-qwen-gguf.sh prints one)")
    if options.layer == Path(""):
        options.layer = None
    return options


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | Path:
    options = parse(argv)
    args = pipeline_args(options)
    if options.dry_run:
        from pipeline.commands import command_parser

        config = command_parser("pipeline").parse_args(args)
        init = config.model.init_args
        plan = {"pipeline": "python train.py pipeline " + " ".join(args), "model": config.model.class_path,
                "source": init.gguf_file or init.model_name_or_path, "dtype": init.dtype,
                "lora": None if init.lora is None else dict(vars(init.lora)), "stage1": config.stage1.source,
                "fit_trainer": config.fit.trainer, "data": str(config.data.path),
                "corpus_size": config.data.downsample.corpus_size}
        print(json.dumps(plan, indent=2))
        return plan
    import train

    started, load_before = time.monotonic(), load_average()
    train.main(["pipeline", *args])
    out = report(options, argv, started, load_before)
    print(f"report: {out}")
    return out


if __name__ == "__main__":
    main()
