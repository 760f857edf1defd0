"""What a pipeline run prints at its end: the results table and the wall time of every stage."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

from core.io import write_json_atomic
from pipeline import layout
from pipeline.context import PipelineContext
from pipeline.runner import StageOutcome, read_marker
from retrieval.results import format_table, read_results


def stage_timings(ctx: PipelineContext, names: Sequence[str]) -> list[dict[str, object]]:
    """Seconds each stage took when it last ran (from its marker), for runs resumed over several calls."""
    timings = []
    for name in names:
        marker = read_marker(ctx.run_dir, name)
        if marker is not None:
            timings.append({"stage": name, "seconds": marker.get("seconds"), "finished_at": marker.get("finished_at")})
    return timings


def print_summary(ctx: PipelineContext, outcomes: Sequence[StageOutcome]) -> None:
    """Print the stage table (ran/skipped, seconds) and the results table; save the timings."""
    timings = stage_timings(ctx, [o.name for o in outcomes])
    write_json_atomic(ctx.run_dir / layout.TIMINGS, {"stages": timings,
                                                     "total_seconds": sum(t["seconds"] or 0 for t in timings),
                                                     "precision": ctx.precision.record() if ctx.precision else None})
    last = {t["stage"]: t["seconds"] for t in timings}
    lines = ["| stage | this call | seconds (last run) |", "|---|---|---:|"]
    lines += [f"| {o.name} | {o.status} | {last.get(o.name, 0) or 0:.1f} |" for o in outcomes]
    print("\n".join(lines))
    results = ctx.run_dir / layout.RESULTS_JSON
    if ctx.corpus_only:
        print(f"\nevaluate: skipped, {ctx.data.path} holds corpus.jsonl only (no queries.jsonl or qrels/ to score "
              "against)")
    elif results.is_file():
        dataset, split, rows = read_results(results)
        print(f"\nResults on {dataset} ({split}), {ctx.run_dir / layout.RESULTS_MD}:\n")
        print(format_table(rows, ctx.evaluate.columns))
    print_index_location(ctx)


def print_index_location(ctx: PipelineContext) -> None:
    """Where the run's product is, and the command that searches it."""
    manifest = ctx.run_dir / layout.INDEX_MANIFEST
    if not manifest.is_file():
        return
    described = json.loads(manifest.read_text(encoding="utf-8"))
    index_dir = ctx.run_dir / layout.INDEX_DIR
    print(f"\nIndex: {index_dir} ({described['documents']} documents, {described['units']} {described['level']}-level "
          f"vectors, {described['system']})\nSearch it: python3 train.py search --index {shlex.quote(str(index_dir))} "
          "--query \"your question\"   (or --queries queries.jsonl [--qrels qrels/test.tsv] --output run.trec)")
