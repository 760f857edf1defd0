"""Checks before any stage runs: the paths and models a profile names exist, have the right kind, do not overlap.

Why up front: a stage reads its model or file only when it starts, which can be hours into a run
(the model after stage 1 and the filter, the encoder after tuning). A typo there should cost seconds.

What "checked" means (issue 6, security):

* every path is resolved (``~``, relative to the working directory, symlinks) before it is compared;
* ``run_dir`` is a folder or does not exist yet, never a file; it and ``data.path`` do not overlap (neither
  inside the other): the stages would write into the dataset (``data/kept-docs.txt``), and the dataset's
  file signature, which decides whether the data stage reruns, would change with every run;
* ``data.path`` is an existing folder; ``stage1.file`` (source ``file``) and the ``fit.configs`` fragments
  are existing files;
* the models the planned stages load resolve now (a local folder with ``config.json``, a packaged offline
  copy, a cached or reachable hub name), and a folder holding only pickled weights is refused unless the
  model sets ``allow_pickle_weights`` (the encoders never do).

``..`` is allowed: paths in a profile are the user's own. No path is ever built from the data: part files
are named by rank, attempt and batch index, and ids and texts live inside files, never in their names.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_modules.loading import ModelNotAvailableError, check_weight_format, resolve_model_source
from retrieval.io import InputError

if TYPE_CHECKING:
    from pipeline.pipeline import PipelineContext

MODEL_KEYS = ("model_name_or_path", "warm_start_encoder", "tokenizer_name_or_path")


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_paths(ctx: PipelineContext) -> None:
    """Run directory, dataset folder and input files: the right kind, and no overlap."""
    run_dir, data = _resolved(ctx.run_dir), _resolved(ctx.data.path)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run_dir '{ctx.run_dir}' is a file", field="run_dir",
                         hint="give a folder (it is created when missing)")
    if not data.is_dir():
        what = "is a file" if data.exists() else "not found"
        raise InputError(f"BEIR folder {what}", path=ctx.data.path, field="data.path",
                         hint="a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    if _overlap(run_dir, data):
        raise InputError(f"run_dir '{ctx.run_dir}' and the data folder '{ctx.data.path}' overlap", field="run_dir",
                         hint="keep the run directory outside the dataset (and the dataset outside it): stages "
                              "would write into the dataset and every rerun would start over")
    if ctx.stage1.source == "file" and ctx.stage1.file is not None and not Path(ctx.stage1.file).is_file():
        raise InputError("synthetic file not found" if not Path(ctx.stage1.file).exists() else "is a folder",
                         path=ctx.stage1.file, field="stage1.file", hint="give our JSONL or BEIR's gen-queries.jsonl")


def _model_sources(ctx: PipelineContext, running: Collection[str]) -> dict[str, str]:
    """``{config key: model name or path}`` of the models the ``running`` stages load (the tuned one excepted)."""
    init = ctx.model_config["init_args"]
    base_key = "model.init_args." + ("warm_start_encoder" if init.get("warm_start_encoder") else "model_name_or_path")
    loads_model = "tune" in running or ("stage1" in running and ctx.stage1.source == "self") or \
        ("stage2" in running and ctx.fit.skip)
    sources: dict[str, str] = {}
    if loads_model:
        sources.update({f"model.init_args.{key}": str(init[key]) for key in MODEL_KEYS if init.get(key)})
    if {"filter", "filter2"} & set(running):
        sources["filter.encoder" if ctx.filter.encoder else base_key] = str(ctx.filter.encoder or ctx.base_encoder)
    if {"embed", "evaluate"} & set(running):
        encoder = ctx.embed.encoder
        if encoder == "base" or (encoder == "tuned" and ctx.fit.skip):
            sources[base_key] = ctx.base_encoder
        elif encoder != "tuned":  # the tuned model is made by this run
            sources["embed.encoder"] = encoder
    return sources


def check_models(ctx: PipelineContext, running: Collection[str]) -> None:
    """Every model the ``running`` stages load resolves now; pickled weights only where the model allows them."""
    from lightning_modules.encoder import resolve_encoder_source

    init = ctx.model_config["init_args"]
    for key, value in _model_sources(ctx, running).items():
        try:
            if key.startswith("model.init_args"):
                source = resolve_model_source(value)
                allow_pickle = bool(init.get("allow_pickle_weights"))
            else:  # an encoder may be a sentence-transformers folder whose transformer sits in a subfolder
                source, allow_pickle = resolve_encoder_source(value).model_path, False
            if key != "model.init_args.tokenizer_name_or_path":
                check_weight_format(source, allow_pickle)
        except ModelNotAvailableError as err:
            raise ModelNotAvailableError(f"{key}: {err}") from None
