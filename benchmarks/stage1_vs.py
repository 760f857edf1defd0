"""The stage-1 rows of a run, with per-query values and paired tests, without tuning or stage 2.

    python -m benchmarks.stage1_vs --output benchmarks/results/scifact-covered/stage1-vs \\
        -- -c configs/profiles/scifact-covered.yaml --run_dir runs/scifact-covered-stage1-vs --fit.skip true \
        --evaluate.methods '[manual, uniform]'

Why: the recorded SciFact runs predate ``per_query.json`` and ``vs`` (issue 13), and rerunning them whole
(tuning, stage 2, expansions) does not fit a shared 2-core machine. With a frozen encoder (both recorded
profiles) the stage-1 rows do not depend on tuning: the base encoder's vectors are the tuned one's. So this
runs the pipeline's own ``data``, ``stage1`` and ``filter`` stages, embeds documents, sentences, queries and the
kept stage-1 outputs with the pipeline's ``embed_texts``, and scores them with the pipeline's evaluate code
(``evaluate.stages: [stage1]``, no expansion rows). Everything after ``--`` is the pipeline's arguments; pass
``--fit.skip true`` so that ``embed.encoder: tuned`` means the base encoder. With one stage-1 output per task
per document, ``bertscore`` and ``softmax`` rows equal ``manual``'s: leaving them out saves the BERTScore pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import train
from benchmarks.rb_sweep import load_context
from pipeline import layout
from pipeline.embed import embed_texts
from pipeline.evaluation import evaluate_run_dir
from pipeline.stages import sentence_items

COPIED = (layout.RESULTS_JSON, layout.RESULTS_MD, "per_query.json", layout.SWEEP_JSON, layout.FILTER_REPORT)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, pipeline_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for the results files")
    args = parser.parse_args(own)
    ctx = load_context(pipeline_args)
    if not ctx.fit.skip and ctx.embed.encoder == "tuned":
        raise SystemExit("pass --fit.skip true: without tuning, embed.encoder tuned must mean the base encoder")
    start = time.perf_counter()
    for stage in ("data", "stage1", "filter"):
        train.main([stage, *pipeline_args])
    settings = {"batch_size": ctx.embed.batch_size, "trainer_kwargs": ctx.trainer_kwargs(), "dtype": ctx.embed.dtype,
                "return_vectors": False}
    jobs = [(layout.DOCUMENTS, ctx.documents()), (layout.QUERIES, list(ctx.dataset.queries.items())),
            (layout.synthetic_vectors("stage1"), [(r.key.encode(), r.text) for r in ctx.synthetic_records("stage1")]),
            (layout.SENTENCES, sentence_items(ctx))]
    for path, items in jobs:
        print(f"embedding {len(items)} texts into {path}", flush=True)
        embed_texts(items, ctx.embedding_encoder, ctx.run_dir / path, **settings)
    ctx.evaluate = dataclasses.replace(ctx.evaluate, stages=["stage1"], sweep_stage="stage1",
                                       baselines=[b for b in ctx.evaluate.baselines if b != "expansion"])
    evaluate_run_dir(ctx, with_index=False)  # no index stage ran: its row is computed from the same vectors
    args.output.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (ctx.run_dir / name).is_file():
            shutil.copyfile(ctx.run_dir / name, args.output / Path(name).name)
    command = "python -m benchmarks.stage1_vs " + " ".join(argv)
    (args.output / "command.txt").write_text(f"{command}\n{time.perf_counter() - start:.0f} s\n", encoding="utf-8")
    print(f"written to {args.output} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
