"""The pipeline: stage 1 → filter → tune → stage 2 → embed → evaluate, in one run directory.

    python train.py pipeline -c configs/profiles/demo.yaml                 # every stage
    python train.py pipeline -c configs/profiles/offline.yaml --data.path ../shared/data/scifact \\
        --run_dir runs/scifact                                             # any BEIR folder
    python train.py embed -c configs/profiles/demo.yaml                    # one stage alone

Stages hand each other files only (``pipeline.layout``), so each can run alone and a rerun
skips what is done for the same configuration (``pipeline.runner``). Under DDP every process
runs this same function: Lightning loops (generation, tuning, embedding) run on all ranks, the
rest on global rank 0 while the others wait for its marker.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from datamodules.downsample import DataConfig, load_dataset_from_config
from datamodules.prompts import PromptTemplates
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline import layout
from pipeline.config import (STAGES, EmbedConfig, EvaluateConfig, FitConfig, GenerationConfig, LoggerConfig,
                             Stage1Config)
from pipeline.preflight import check_models, check_paths
from pipeline.runner import Stage, StageOutcome, execute_plan, plan_stages
from retrieval.filter import FilterConfig
from retrieval.io import file_sha256, write_json_atomic
from retrieval.rao_blackwell import RaoBlackwellConfig

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON-able form of configs (dataclasses, paths) for fingerprints and saved configs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def model_section(model: Callable[[], Seq2SeqModule]) -> dict[str, Any]:
    """The ``model:`` section as LightningCLI reads it, from jsonargparse's lazy constructor."""
    if isinstance(model, functools.partial):
        target = model.args[-1] if model.args else model.func
        keywords = dict(model.keywords)
    else:  # a class or plain callable
        target, keywords = model, {}
    path = f"{target.__module__}.{target.__qualname__}"
    return {"class_path": path, "init_args": _plain(keywords)}


def _file_signature(path: Path | None) -> Any:
    """Size and SHA-256 of each input file: changed contents rerun the stages that read it.

    Contents, not modification times or absolute paths: a dataset copied, re-extracted or moved to another
    disk is the same input, and hours of finished stages must not rerun for it.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return {p.name: _file_signature(p) for p in sorted(path.iterdir()) if p.is_file() or p.is_dir()}
    stat = path.stat()
    return [stat.st_size, _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)]


def _data_settings(data: DataConfig) -> dict[str, Any]:
    """The data stage's settings without where the folder and the cache lie (its files are hashed instead)."""
    return {key: value for key, value in _plain(data).items() if key not in ("path", "cache_dir")}


@functools.lru_cache(maxsize=None)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash once per process per file version (a GB corpus takes seconds; every stage's plan asks for it)."""
    return file_sha256(path)


@dataclasses.dataclass
class PipelineContext:
    """Everything a stage needs, built once per process; the dataset loads lazily (cached by ``datasets``)."""

    run_dir: Path
    data: DataConfig
    model: Callable[[], Seq2SeqModule]
    prompts: PromptTemplates
    stage1: Stage1Config
    generation: GenerationConfig
    filter: FilterConfig
    fit: FitConfig
    embed: EmbedConfig
    rao_blackwell: RaoBlackwellConfig
    evaluate: EvaluateConfig
    trainer: dict[str, Any]
    logger: LoggerConfig

    @functools.cached_property
    def dataset(self) -> Any:
        return load_dataset_from_config(self.data)

    @property
    def model_config(self) -> dict[str, Any]:
        return model_section(self.model)

    @property
    def base_encoder(self) -> str:
        """The untuned model's encoder: the warm-start checkpoint, or the seq2seq checkpoint itself."""
        init = self.model_config["init_args"]
        source = init.get("warm_start_encoder") or init.get("model_name_or_path")
        if not source:
            raise ValueError("model: set model_name_or_path or warm_start_encoder")
        return str(source)

    @property
    def embedding_encoder(self) -> str:
        choice = self.embed.encoder
        if choice == "tuned":
            return self.base_encoder if self.fit.skip else str(self.run_dir / layout.TUNED_MODEL)
        if choice == "base":
            return self.base_encoder
        return choice

    @property
    def run_name(self) -> str:
        return self.logger.name or os.environ.get("WANDB_NAME") or self.run_dir.name

    @property
    def run_group(self) -> str:
        return self.logger.group or os.environ.get("WANDB_RUN_GROUP") or self.run_name

    @property
    def is_global_zero(self) -> bool:
        return rank_zero_only.rank == 0

    @functools.cached_property
    def loggers(self) -> list[Any]:
        """The pipeline's own W&B run (tables: filter samples, results), on global rank 0 only."""
        if not self.logger.wandb or not self.is_global_zero:
            return []
        from callbacks.wandb_logger import OfflineFirstWandbLogger

        return [OfflineFirstWandbLogger(name=self.run_name, save_dir=str(self.run_dir), project=self.logger.project,
                                        group=self.run_group, offline=self.logger.offline, job_type="pipeline")]

    def fit_logger_config(self) -> dict[str, Any] | bool:
        """The tuning stage's logger: a W&B run in the pipeline's group (offline without a key), else CSV.

        Paths are absolute: the fit CLI reads a relative ``save_dir`` inside its own run directory
        (``<run_dir>/fit``), which nested a relative ``--run_dir`` there a second time.
        """
        run_dir = self.run_dir.resolve()
        if self.logger.wandb:
            return {"class_path": "callbacks.wandb_logger.OfflineFirstWandbLogger",
                    "init_args": {"save_dir": str(run_dir), "project": self.logger.project,
                                  "name": f"{self.run_name}-tune", "group": self.run_group,
                                  "offline": self.logger.offline}}
        return {"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir / layout.FIT_DIR), "name": "csv"}}

    def finish_loggers(self) -> None:
        """Close the pipeline's W&B run (before tuning opens its own, and at the end); reopened on demand."""
        for logger in self.__dict__.pop("loggers", []):
            logger.finalize("success")

    def trainer_kwargs(self) -> dict[str, Any]:
        """Trainer settings for prediction loops (generation, embedding): no logger, no checkpoints."""
        kwargs = {key: value for key, value in self.trainer.items()
                  if key not in ("logger", "callbacks", "max_epochs", "default_root_dir")}
        kwargs.update(logger=False, enable_checkpointing=False, default_root_dir=str(self.run_dir))
        return kwargs


def build_stages(ctx: PipelineContext) -> list[Stage]:
    """The stages of this configuration, with the settings slice that decides each one's rerun."""
    from pipeline import stages as run

    model, prompts = ctx.model_config, _plain(ctx.prompts)
    # what generation writes; filter_stage2 decides filter2's work only (it is in filter2's slice below)
    gen = {k: v for k, v in _plain(ctx.generation).items() if k not in ("batch_size", "filter_stage2")}
    embed = {k: v for k, v in _plain(ctx.embed).items() if k != "batch_size"}
    stage1 = _plain(ctx.stage1)
    if ctx.stage1.source == "file":  # the file's contents decide, not where it lies
        stage1["file"] = _file_signature(ctx.stage1.file)
    elif ctx.stage1.source == "self":
        stage1.update(model=model, prompts=prompts, generation=gen)
    embed_deps = ["filter", "filter2"] + (["tune"] if ctx.embed.encoder == "tuned" and not ctx.fit.skip else [])
    if ctx.embed.encoder in ("tuned", "base"):
        embed["model"] = model
    stages = [
        Stage("data", lambda: run.run_data(ctx), lambda: {"data": _data_settings(ctx.data),
                                                         "files": _file_signature(Path(ctx.data.path))},
              lambda: [layout.KEPT_DOCS]),
        Stage("stage1", lambda: run.run_stage1(ctx), lambda: stage1, lambda: [layout.STAGE1],
              lambda: ["data"], collective=ctx.stage1.source == "self"),
        Stage("filter", lambda: run.run_filter(ctx),
              lambda: {"filter": _plain(ctx.filter), "prompts": prompts, "encoder": ctx.base_encoder},
              lambda: [layout.STAGE1_KEPT, layout.TRAIN, layout.VAL, layout.FILTER_REPORT], lambda: ["stage1"]),
    ]
    if not ctx.fit.skip:
        stages.append(Stage("tune", lambda: run.run_tune(ctx), lambda: {"model": model, "fit": _plain(ctx.fit)},
                            lambda: [layout.TUNED_MODEL + "/config.json"], lambda: ["filter"], collective=True))
    stages += [
        Stage("stage2", lambda: run.run_stage2(ctx), lambda: {"generation": gen, "prompts": prompts, "model": model},
              lambda: [layout.STAGE2], lambda: ["tune"] if not ctx.fit.skip else ["filter"], collective=True),
        Stage("filter2", lambda: run.run_filter2(ctx),
              lambda: {"filter": _plain(ctx.filter) if ctx.generation.filter_stage2 else None,
                       "encoder": ctx.base_encoder}, lambda: [layout.STAGE2_KEPT], lambda: ["stage2"]),
        Stage("embed", lambda: run.run_embed(ctx), lambda: {"embed": embed, "evaluate_filtered":
                                                             ctx.evaluate.use_filtered},
              lambda: layout.vector_outputs(ctx.embed.sentences), lambda: embed_deps, collective=True),
        Stage("evaluate", lambda: run.run_evaluate(ctx),
              lambda: {"evaluate": _plain(ctx.evaluate), "rao_blackwell": _plain(ctx.rao_blackwell)},
              lambda: [layout.RESULTS_JSON, layout.RESULTS_MD], lambda: ["embed"]),
    ]
    return stages


def run_pipeline(data: DataConfig,
                 model: Callable[[], Seq2SeqModule],
                 run_dir: Path = Path("runs/pipeline"),
                 prompts: PromptTemplates = PromptTemplates(),
                 stage1: Stage1Config = Stage1Config(),
                 generation: GenerationConfig = GenerationConfig(),
                 filter: FilterConfig = FilterConfig(),
                 fit: FitConfig = FitConfig(),
                 embed: EmbedConfig = EmbedConfig(),
                 rao_blackwell: RaoBlackwellConfig = RaoBlackwellConfig(),
                 evaluate: EvaluateConfig = EvaluateConfig(),
                 trainer: dict[str, Any] | None = None,
                 logger: LoggerConfig = LoggerConfig(),
                 stages: list[str] | None = None,
                 force: list[str] | None = None) -> list[StageOutcome]:
    """Run the pipeline (or the stages named in ``stages``) in ``run_dir``, skipping finished stages.

    Args:
        data: the BEIR folder, split and optional downsampling.
        model: the seq2seq model to tune and generate with (``class_path``/``init_args``, as ``fit`` reads it).
        run_dir: where every stage writes; a rerun here skips stages done for the same configuration.
        prompts: the instruction per task (``{title}``, ``{text}``).
        stage1: where stage 1's synthetic texts come from (``self``, ``extractive``, ``file``).
        generation: decoding for the model's own generation (stage 2, and stage 1 with ``source: self``).
        filter: quality rules for synthetic texts and the self-instruct split.
        fit: instruction tuning (LightningCLI fit fragments and overrides).
        embed: the encoder and what is embedded.
        rao_blackwell: the weighting of synthetic embeddings into document vectors.
        evaluate: rows of the results table and the weight sweep.
        trainer: Trainer settings for every Lightning stage (``configs/trainer/*.yaml``).
        logger: Weights & Biases settings.
        stages: run only these stages (their inputs must exist); default every stage.
        force: rerun these stages even if done.
    """
    run_dir = Path(run_dir)
    ctx = PipelineContext(run_dir=run_dir, data=data, model=model, prompts=prompts, stage1=stage1,
                          generation=generation, filter=filter, fit=fit, embed=embed, rao_blackwell=rao_blackwell,
                          evaluate=evaluate, trainer=dict(trainer or {}), logger=logger)
    all_stages = build_stages(ctx)
    check_paths(ctx)  # before anything is written: a wrong path costs seconds, not a stage
    is_zero = rank_zero_only.rank == 0
    if is_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
    planned = plan_stages(all_stages, run_dir, only=stages, force=force or ())
    for item in planned:
        log.info("plan: %-8s %s", item.stage.name, item.action)
    check_models(ctx, [item.stage.name for item in planned if item.action == "run"])
    try:
        outcomes = execute_plan(planned, run_dir, is_global_zero=is_zero)
    finally:
        ctx.finish_loggers()
    if is_zero:  # written once every stage finished, so it describes the outputs (a failed run changes nothing)
        write_json_atomic(run_dir / layout.PIPELINE_CONFIG, {
            "data": _plain(data), "model": ctx.model_config, "prompts": _plain(prompts), "stage1": _plain(stage1),
            "generation": _plain(generation), "filter": _plain(filter), "fit": _plain(fit), "embed": _plain(embed),
            "rao_blackwell": _plain(rao_blackwell), "evaluate": _plain(evaluate), "trainer": _plain(ctx.trainer),
            "logger": _plain(logger)})
        from pipeline.report import print_summary

        print_summary(ctx, outcomes)
    return outcomes


def _stage_command(name: str) -> Callable[..., list[StageOutcome]]:
    """``python train.py <stage> -c profile.yaml``: the pipeline's signature, one stage."""
    def command(**kwargs: Any) -> list[StageOutcome]:
        kwargs.pop("stages", None)
        return run_pipeline(**kwargs, stages=[name])

    signature = inspect.signature(run_pipeline, eval_str=True)
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in signature.parameters.items() if n != "stages"])
    command.__doc__ = f"Run the pipeline's '{name}' stage alone (its inputs must exist).\n\n" + \
        (run_pipeline.__doc__ or "").split("\n\n", 1)[1]
    command.__name__ = f"run_{name}"
    return command


STAGE_COMMANDS: dict[str, Callable[..., list[StageOutcome]]] = {name: _stage_command(name) for name in STAGES}
globals().update({f"run_{name}": command for name, command in STAGE_COMMANDS.items()})  # train.py resolves by name
