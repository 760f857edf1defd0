"""Checks before any stage runs: the paths and models a profile names exist, have the right kind, do not overlap.

Why up front: a stage reads its model or file only when it starts, which can be hours into a run
(the model after stage 1 and the filter, the encoder after tuning). A typo there should cost seconds.

What "checked" means (issue 6, security):

* every path is resolved (``~``, relative to the working directory, symlinks) before it is compared;
* ``run_dir`` is a folder or does not exist yet, never a file; it and ``data.path`` do not overlap (neither
  inside the other): the stages would write into the dataset (``data/kept-docs.txt``), and the dataset's
  file signature, which decides whether the data stage reruns, would change with every run;
* ``data.path`` is an existing folder; each stage-1 source checks its own inputs (``file``: the file exists);
* the models the planned stages load resolve now (a local folder with ``config.json``, a packaged offline
  copy, a cached or reachable hub name), and a folder holding only pickled weights is refused unless the
  model sets ``allow_pickle_weights`` (the encoders never do). Which models a generator loads is its own
  business (:meth:`GeneratorModule.model_sources`, :meth:`GeneratorModule.encoder_source`);
* every ``trainer`` and ``fit.trainer`` key is a ``Trainer`` argument (a typo would otherwise surface at the
  tune stage, or as a ``TypeError`` at stage 2 when tuning is skipped).

Each error names its config key (``embed.encoder``, ``trainer.acelerator``); ``train.py`` adds the YAML file
that set it (:func:`pipeline.commands.where_set`).

``..`` is allowed: paths in a profile are the user's own. No path is ever built from the data: part files
are named by rank, attempt and batch index, and ids and texts live inside files, never in their names.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from core.io import InputError, require_file
from lightning_modules.encoder import resolve_encoder_source
from lightning_modules.loading import ModelNotAvailableError, check_weight_format, resolve_gguf, resolve_model_source
from pipeline.config_errors import key_line
from pipeline.context import PipelineContext
from pipeline.sources import STAGE1_SOURCES


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
    STAGE1_SOURCES.get(ctx.stage1.source)().check(ctx)


def check_trainer_keys(settings: Mapping[str, Any], key: str) -> None:
    """Every key of ``settings`` is an argument of ``Trainer.__init__``; an unknown one is named with the
    closest argument, so ``trainer.acelerator`` says "did you mean 'accelerator'" before any stage runs."""
    from lightning.pytorch import Trainer  # with the check: train.py --help must not import Lightning

    known = [name for name in inspect.signature(Trainer.__init__).parameters if name != "self"]
    for name in settings:
        if name.removesuffix("+") not in known:  # "callbacks+" appends in jsonargparse's YAML
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see the arguments of lightning.pytorch.Trainer"
            raise InputError("not an argument of lightning.pytorch.Trainer", field=f"{key}.{name}", hint=hint)


def check_settings(ctx: PipelineContext) -> None:
    """Settings no stage would check before using them: the Trainer keys of ``trainer`` and ``fit.trainer``."""
    check_trainer_keys(ctx.trainer, "trainer")
    check_trainer_keys(ctx.fit.trainer, "fit.trainer")


def check_fit_configs(ctx: PipelineContext, running: Collection[str]) -> None:
    """When tuning runs: each ``fit.configs`` fragment exists, and its ``trainer:`` keys are Trainer arguments
    (the fit CLI would report a typo there only when the tune stage starts, after its whole usage)."""
    if "tune" not in running:
        return
    for config in ctx.fit.configs:
        path = require_file(config, "fit.configs lists LightningCLI fit fragments, e.g. configs/fit/selfinstruct.yaml")
        text = path.read_text(encoding="utf-8-sig")
        try:
            section = (yaml.safe_load(text) or {}).get("trainer") or {}
        except (yaml.YAMLError, AttributeError) as err:
            raise InputError(f"not a YAML mapping ({err})", path=path, field="fit.configs") from None
        try:
            check_trainer_keys(section, "trainer")
        except InputError as err:
            line = key_line(text, err.field.split("."))
            raise InputError(err.message, path=path, line=line, field=err.field, hint=err.hint) from None


def check_encoder(key: str, value: str) -> str:
    """An encoder folder or hub name resolves to a loadable model now; return the folder (or name) it loads.

    A sentence-transformers folder may keep its transformer in a subfolder: the folder that must hold
    ``config.json`` is the one its ``modules.json`` names. Pickled weights are refused (encoders never opt in).
    """
    try:
        source = resolve_model_source(resolve_encoder_source(value).model_path)
        check_weight_format(source, allow_pickle=False)
    except ModelNotAvailableError as err:
        raise ModelNotAvailableError(f"{key}: {err}") from None
    except ValueError as err:  # an unsupported sentence-transformers module
        raise InputError(str(err), field=key) from None
    return source


def _no_encoder(ctx: PipelineContext, key: str) -> InputError:
    return InputError(f"{ctx.generator.__name__} has no text encoder to use here", field=key,
                      hint=f"set {key} to an encoder folder or hub name (e.g. sentence-transformers/all-MiniLM-L6-v2)")


def _model_sources(ctx: PipelineContext, running: Collection[str]) -> dict[str, tuple[str, bool]]:
    """``{config key: (model name or path, holds weights)}`` of the models the ``running`` stages load (the tuned
    one excepted: this run makes it)."""
    init = ctx.model_config["init_args"]
    base = ctx.base_encoder_source
    base_key = f"model.init_args.{base.key}" if base is not None else None
    source = STAGE1_SOURCES.get(ctx.stage1.source)
    loads_model = "tune" in running or ("stage1" in running and source.loads_model) or \
        ("stage2" in running and ctx.fit.skip)
    sources: dict[str, tuple[str, bool]] = {}
    if loads_model:
        sources.update({f"model.init_args.{s.key}": (s.source, s.weights) for s in ctx.generator.model_sources(init)})
    if {"filter", "filter2"} & set(running) and ctx.filter.roundtrip:  # only the round trip embeds
        if ctx.filter.encoder:
            sources["filter.encoder"] = (ctx.filter.encoder, True)
        elif base is None:
            raise _no_encoder(ctx, "filter.encoder")
        else:
            sources[base_key] = (base.source, True)
    if {"embed", "evaluate"} & set(running):
        encoder = ctx.embed.encoder
        if encoder == "base" or (encoder == "tuned" and ctx.fit.skip):
            if base is None:
                raise _no_encoder(ctx, "embed.encoder")
            sources[base_key] = (base.source, True)
        elif encoder == "tuned" and base is None:
            raise _no_encoder(ctx, "embed.encoder")
        elif encoder != "tuned":  # the tuned model is made by this run
            sources["embed.encoder"] = (encoder, True)
    return sources


def check_models(ctx: PipelineContext, running: Collection[str]) -> None:
    """Every model the ``running`` stages load resolves now; pickled weights only where the model allows them."""
    init = ctx.model_config["init_args"]
    for key, (value, weights) in _model_sources(ctx, running).items():
        if not key.startswith("model.init_args"):
            check_encoder(key, value)
            continue
        try:
            if key == "model.init_args.gguf_file":  # a local file, not a folder (lightning_modules.causal_lm)
                resolve_gguf(None, value)
                continue
            source = resolve_model_source(value)
            if weights:
                check_weight_format(source, bool(init.get("allow_pickle_weights")))
        except ModelNotAvailableError as err:
            raise ModelNotAvailableError(f"{key}: {err}") from None
