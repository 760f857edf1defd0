"""The run context: everything a stage needs, built once per process from the pipeline's configuration.

Why its own module: the stage bodies (``pipeline.stages``), the evaluation, the preflight checks and the
report all read it, and ``pipeline.pipeline`` builds it; with the context in the top file every one of
them imported upward.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from callbacks.from_config import instantiate_callbacks
from callbacks.wandb_logger import OfflineFirstWandbLogger
from core.fingerprint import plain
from datamodules.beir import BeirDataset, is_corpus_only
from datamodules.downsample import DataConfig, load_dataset_from_config
from datamodules.prompts import PromptTemplates
from lightning_modules.generator import GeneratorModule, ModelSource
from lightning_modules.precision import PrecisionChoice, precision_identity
from pipeline import layout
from pipeline.config import (EmbedConfig, EvaluateConfig, FitConfig, GenerationConfig, IndexConfig, LoggerConfig,
                             Stage1Config)
from retrieval.filter import FilterConfig
from retrieval.rao_blackwell import WEIGHTING_METHODS, RaoBlackwellConfig
from retrieval.synthetic import SyntheticRecord, read_synthetic

log = logging.getLogger(__name__)


def model_section(model: Callable[[], GeneratorModule]) -> dict[str, Any]:
    """The ``model:`` section as LightningCLI reads it, from jsonargparse's lazy constructor."""
    if isinstance(model, functools.partial):
        target = model.args[-1] if model.args else model.func
        keywords = dict(model.keywords)
    else:  # a class or plain callable
        target, keywords = model, {}
    path = f"{target.__module__}.{target.__qualname__}"
    return {"class_path": path, "init_args": plain(keywords)}


def generator_class(model: Callable[[], GeneratorModule]) -> type[GeneratorModule]:
    """The class ``model.class_path`` names (jsonargparse already checked it is a GeneratorModule)."""
    target = (model.args[-1] if model.args else model.func) if isinstance(model, functools.partial) else model
    if not (isinstance(target, type) and issubclass(target, GeneratorModule)):
        raise TypeError(f"model.class_path must name a GeneratorModule subclass, got {target!r}")
    return target


@dataclasses.dataclass
class PipelineContext:
    """Everything a stage needs, built once per process; the dataset loads lazily (cached by ``datasets``)."""

    run_dir: Path
    data: DataConfig
    model: Callable[[], GeneratorModule]
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
    precision: PrecisionChoice | None = None  # how trainer.precision was resolved (``auto`` -> bf16 or float32)
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    callbacks: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # class_path/init_args, every loop

    @functools.cached_property
    def dataset(self) -> BeirDataset:
        return load_dataset_from_config(self.data)

    def documents(self) -> list[tuple[str, str]]:
        """``(doc_id, title + text)`` of every document, in corpus order."""
        return [(doc_id, self.dataset.doc_text(doc_id)) for doc_id in self.dataset.doc_ids]

    @property
    def model_config(self) -> dict[str, Any]:
        return model_section(self.model)

    @property
    def generator(self) -> type[GeneratorModule]:
        return generator_class(self.model)

    @property
    def base_encoder_source(self) -> ModelSource | None:
        """The untuned generator's text encoder (None: the generator has none, e.g. a decoder-only LLM)."""
        return self.generator.encoder_source(self.model_config["init_args"])

    @property
    def base_encoder(self) -> str | None:
        source = self.base_encoder_source
        return None if source is None else source.source

    @property
    def embedding_encoder(self) -> str:
        """What ``embed.encoder`` names: the tuned generator's encoder, the untuned one's, or a model."""
        choice = self.embed.encoder
        if choice not in ("tuned", "base"):
            return choice
        if self.base_encoder is None:
            raise ValueError(f"embed.encoder is '{choice}' but {self.generator.__name__} has no text encoder: set "
                             "embed.encoder to an encoder folder or hub name (e.g. "
                             "sentence-transformers/all-MiniLM-L6-v2)")
        if choice == "tuned" and not self.fit.skip:
            return str(self.run_dir / layout.TUNED_MODEL)
        return self.base_encoder

    def synthetic_records(self, stage: str) -> list[SyntheticRecord]:
        """The synthetic texts that augment vectors: the filter's kept ones (or all, by configuration).

        An empty output (whitespace only; the filter drops them, ``use_filtered: false`` and
        ``generation.filter_stage2: false`` do not) is left out: it has no embedding and says nothing about its
        document; the log counts them.
        """
        paths = {"stage1": (layout.STAGE1_KEPT, layout.STAGE1), "stage2": (layout.STAGE2_KEPT, layout.STAGE2),
                 "extractive": (layout.EXTRACTIVE, layout.EXTRACTIVE)}
        kept, raw = paths[stage]
        records = read_synthetic(self.run_dir / (kept if self.evaluate.use_filtered else raw), self.dataset.corpus)
        texts = [record for record in records if record.text.strip()]
        if len(texts) < len(records):
            log.info("%s: %d of %d unfiltered outputs are empty and augment nothing", stage,
                     len(records) - len(texts), len(records))
        return texts

    @property
    def corpus_only(self) -> bool:
        """``data.path`` holds documents without queries and judgements: no evaluation, the index is the product."""
        return is_corpus_only(self.data.path)

    @property
    def index_stage(self) -> str:
        """Whose synthetic outputs the index uses: ``index.stage``, else the last of ``evaluate.stages``."""
        return self.index.stage or self.evaluate.stages[-1]

    @property
    def index_weighting(self) -> dict[str, Any]:
        """The ``rao_blackwell`` settings that decide the index's vectors: not ``chunk_size`` (memory only), nor
        ``bertscore_layer`` for a method that reads no BERTScore (changing them must not rebuild the index)."""
        settings = dataclasses.asdict(self.rao_blackwell)
        settings.pop("chunk_size")
        if WEIGHTING_METHODS.get(self.rao_blackwell.method).output_score != "bertscore":
            settings.pop("bertscore_layer")
        return settings

    @property
    def index_system(self) -> str:
        """The results row the index is, ``rb-<method>-<level>-<stage>``: scored by searching the index's files."""
        return f"rb-{self.rao_blackwell.method}-{self.index.level}-{self.index_stage}"

    def generation_settings(self) -> dict[str, Any]:
        """What decides the model's generated texts: ``generation`` without the batch size (outputs do not
        depend on it) and ``filter_stage2`` (it decides filter2's work only); a precision other than float32."""
        return {**{k: v for k, v in plain(self.generation).items() if k not in ("batch_size", "filter_stage2")},
                **precision_identity(self.trainer)}

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
        return [OfflineFirstWandbLogger(name=self.run_name, save_dir=str(self.run_dir), project=self.logger.project,
                                        group=self.run_group, offline=self.logger.offline, job_type="pipeline")]

    def fit_logger_config(self) -> dict[str, Any] | bool:
        """The tuning stage's logger: a W&B run in the pipeline's group (offline without a key), else CSV.

        Paths are absolute: the fit CLI reads a relative ``save_dir`` inside its own run directory
        (``<run_dir>/fit``), which nested a relative ``--run_dir`` there a second time.
        """
        run_dir = self.run_dir.resolve()
        if self.logger.wandb:
            return {"class_path": f"{OfflineFirstWandbLogger.__module__}.{OfflineFirstWandbLogger.__name__}",
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
        """Trainer settings for prediction loops (generation, embedding, index): no logger, no checkpoints;
        the profile's ``callbacks``, built afresh for each call (tuning's CLI builds its own from the same specs)."""
        kwargs = {key: value for key, value in self.trainer.items()
                  if key not in ("logger", "callbacks", "max_epochs", "default_root_dir")}
        kwargs.update(logger=False, enable_checkpointing=False, default_root_dir=str(self.run_dir),
                      callbacks=instantiate_callbacks(self.callbacks))
        return kwargs
