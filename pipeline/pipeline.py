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

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from callbacks.from_config import instantiate_callbacks
from core.fingerprint import plain
from core.interrupt import stop_on_signals
from core.io import InputError, write_json_atomic
from datamodules.downsample import DataConfig
from datamodules.prompts import PromptTemplates
from lightning_modules.generator import GeneratorModule
from lightning_modules.precision import resolve_trainer_precision
from pipeline import layout
from pipeline.config import (EmbedConfig, EvaluateConfig, FitConfig, GenerationConfig, IndexConfig, LoggerConfig,
                             Stage1Config)
from pipeline.context import PipelineContext
from pipeline.index import check_index_config
from pipeline.preflight import check_fit_configs, check_models, check_paths, check_settings
from pipeline.report import print_summary
from pipeline.run_lock import run_lock
from pipeline.runner import StageOutcome, execute_plan, plan_stages
from pipeline.stages import build_stages
from retrieval.filter import FilterConfig
from retrieval.rao_blackwell import RaoBlackwellConfig

log = logging.getLogger(__name__)


def run_pipeline(data: DataConfig,
                 model: Callable[[], GeneratorModule],
                 run_dir: Path = Path("runs/pipeline"),
                 prompts: PromptTemplates = PromptTemplates(),
                 stage1: Stage1Config = Stage1Config(),
                 generation: GenerationConfig = GenerationConfig(),
                 filter: FilterConfig = FilterConfig(),
                 fit: FitConfig = FitConfig(),
                 embed: EmbedConfig = EmbedConfig(),
                 rao_blackwell: RaoBlackwellConfig = RaoBlackwellConfig(),
                 index: IndexConfig = IndexConfig(),
                 evaluate: EvaluateConfig = EvaluateConfig(),
                 trainer: dict[str, Any] | None = None,
                 logger: LoggerConfig = LoggerConfig(),
                 callbacks: list[dict[str, Any]] | None = None,
                 stages: list[str] | None = None,
                 force: list[str] | None = None) -> list[StageOutcome]:
    """Run the pipeline (or the stages named in ``stages``) in ``run_dir``, skipping finished stages.

    Args:
        data: the BEIR folder, split and optional downsampling.
        model: the generator to tune and generate with (a ``GeneratorModule``'s ``class_path``/``init_args``,
            as ``fit`` reads it).
        run_dir: where every stage writes; a rerun here skips stages done for the same configuration.
        prompts: the instruction per task (``{title}``, ``{text}``).
        stage1: where stage 1's synthetic texts come from (a registered source: ``self``, ``extractive``, ``file``).
        generation: decoding for the model's own generation (stage 2, and stage 1 with ``source: self``).
        filter: quality rules for synthetic texts (``retrieval.filter``).
        fit: instruction tuning (LightningCLI fit fragments and overrides).
        embed: the encoder and what is embedded.
        rao_blackwell: the weighting of synthetic embeddings into document vectors.
        index: the index the run ships (``<run_dir>/index/``): level, synthetic stage, dtype, FAISS.
        evaluate: rows of the results table and the weight sweep.
        trainer: Trainer settings for every Lightning stage (``configs/trainer/*.yaml``); ``precision: auto`` (also
            when absent) is bf16-mixed where the CPU or GPU computes bfloat16 natively, else 32-true
            (``lightning_modules.precision``); ``float32`` / ``bf16`` force either.
        logger: Weights & Biases settings.
        callbacks: Lightning callbacks (``class_path``/``init_args``, as under fit's ``trainer.callbacks``) added to
            every loop the pipeline runs: generation, tuning, embedding, index (a fresh instance per loop). They observe:
            no stage's fingerprint includes them.
        stages: run only these stages (their inputs must exist); default every stage.
        force: rerun these stages even if done.
    """
    run_dir = Path(run_dir)
    if trainer and "callbacks" in trainer:
        raise InputError("not read by the pipeline's loops", field="trainer.callbacks",
                         hint="list callbacks under the top-level `callbacks:` key (every loop), or in a "
                              "fit.configs fragment under `trainer.callbacks+:` (tuning only)")
    trainer_settings, precision = resolve_trainer_precision(dict(trainer or {}))  # before any stage: one choice
    log.info("precision: %s -> %s (%s)", precision.setting, precision.lightning, precision.reason)
    ctx = PipelineContext(run_dir=run_dir, data=data, model=model, prompts=prompts, stage1=stage1,
                          generation=generation, filter=filter, fit=fit, embed=embed, rao_blackwell=rao_blackwell,
                          index=index, evaluate=evaluate, trainer=trainer_settings, logger=logger, precision=precision,
                          callbacks=list(callbacks or []))
    all_stages = build_stages(ctx)
    check_settings(ctx)
    check_index_config(ctx)
    if ctx.corpus_only and "evaluate" in (stages or ()):
        raise InputError(f"{data.path} holds corpus.jsonl only: no queries or qrels to evaluate against",
                         field="data.path", hint="add queries.jsonl and qrels/<split>.tsv, or search the index: "
                                                 f"python3 train.py search --index {run_dir / layout.INDEX_DIR} ...")
    check_paths(ctx)  # before anything is written: a wrong path costs seconds, not a stage
    instantiate_callbacks(ctx.callbacks, "callbacks")  # a wrong callback class or option too
    is_zero = rank_zero_only.rank == 0
    # a second run on run_dir refuses here, before any work; SIGTERM/SIGINT stop it between batches or stages
    with run_lock(run_dir, is_global_zero=is_zero), stop_on_signals():
        planned = plan_stages(all_stages, run_dir, only=stages, force=force or ())
        for item in planned:
            log.info("plan: %-8s %s", item.stage.name, item.action)
        running = [item.stage.name for item in planned if item.action == "run"]
        check_models(ctx, running)
        check_fit_configs(ctx, running)
        try:
            outcomes = execute_plan(planned, run_dir, is_global_zero=is_zero)
        finally:
            ctx.finish_loggers()
        if is_zero:  # written once every stage finished, so it describes the outputs (a failed run changes nothing)
            write_json_atomic(run_dir / layout.PIPELINE_CONFIG, {
                "data": plain(data), "model": ctx.model_config, "prompts": plain(prompts), "stage1": plain(stage1),
                "generation": plain(generation), "filter": plain(filter), "fit": plain(fit), "embed": plain(embed),
                "rao_blackwell": plain(rao_blackwell), "index": plain(index), "evaluate": plain(evaluate),
                "trainer": plain(ctx.trainer), "logger": plain(logger), "callbacks": plain(ctx.callbacks),
                "precision": precision.record()})
            print_summary(ctx, outcomes)
    return outcomes

