"""Where synthetic texts come from: the stage-1 sources (a registry) and the model's own generation.

Why a registry: stage 1 is pluggable (the paper: the model itself; offline: an extractive bootstrap
teacher, or a file of questions made elsewhere), and each source decides more than its records: which
settings rerun stage 1 when they change, whether every DDP process takes part, whether a model is loaded
(preflight checks it), which inputs must exist. A source is one class registered here under the name a
profile gives as ``stage1.source``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.fingerprint import file_signature, plain
from core.io import InputError
from core.registry import Registry
from datamodules.synthetic_files import load_file_source
from lightning_modules.decoding import DecodingConfig
from lightning_modules.generator import GeneratorModule
from pipeline.generate import generate_synthetic
from retrieval.extractive import extractive_records
from retrieval.synthetic import write_synthetic

if TYPE_CHECKING:
    from pipeline.context import PipelineContext


def generate(ctx: PipelineContext, module: GeneratorModule, output: Path, stage: int,
             decoding: DecodingConfig) -> Path:
    """The model's own generation (stage 1 with ``source: self``, and stage 2)."""
    return generate_synthetic(ctx.dataset, module, ctx.prompts, decoding=decoding, output=output, stage=stage,
                              trainer_kwargs=ctx.trainer_kwargs(), batch_size=ctx.generation.batch_size,
                              max_input_length=ctx.generation.max_input_length)


class Stage1Source:
    """Writes stage 1's records for a run; says what besides ``stage1:`` decides them."""

    collective: ClassVar[bool] = False
    """Every DDP process runs it (a Lightning loop); else global rank 0 alone."""
    loads_model: ClassVar[bool] = False
    """It builds the configured generator (preflight resolves the generator's models first)."""

    def write(self, ctx: PipelineContext, output: Path) -> None:
        raise NotImplementedError

    def settings(self, ctx: PipelineContext) -> dict[str, Any]:
        """Settings beyond the ``stage1:`` section whose change reruns stage 1."""
        return {}

    def check(self, ctx: PipelineContext) -> None:
        """Refuse missing inputs before any stage runs."""


STAGE1_SOURCES: Registry[type[Stage1Source]] = Registry("stage-1 source")


@STAGE1_SOURCES.register("self")
class ModelItself(Stage1Source):
    """The paper: the configured model writes its own questions and keywords."""

    collective = True
    loads_model = True

    def write(self, ctx: PipelineContext, output: Path) -> None:
        generate(ctx, ctx.model(), output, stage=1, decoding=ctx.stage1.decoding or ctx.generation.decoding)

    def settings(self, ctx: PipelineContext) -> dict[str, Any]:
        return {"model": ctx.model_config, "prompts": plain(ctx.prompts), "generation": ctx.generation_settings()}


@STAGE1_SOURCES.register("extractive")
class Extractive(Stage1Source):
    """A bootstrap teacher for a model that cannot follow instructions untrained (``retrieval.extractive``)."""

    def write(self, ctx: PipelineContext, output: Path) -> None:
        write_synthetic(output, extractive_records(ctx.dataset, ctx.stage1.extractive))


@STAGE1_SOURCES.register("file")
class FromFile(Stage1Source):
    """Synthetic texts made elsewhere: our JSONL, or BEIR GenQ's ``gen-queries.jsonl``."""

    def write(self, ctx: PipelineContext, output: Path) -> None:
        records = load_file_source(Path(ctx.stage1.file), ctx.stage1.file_format, ctx.dataset.corpus,
                                   ctx.stage1.on_unknown_doc)
        write_synthetic(output, [dataclasses.replace(r, stage=1) for r in records])

    def settings(self, ctx: PipelineContext) -> dict[str, Any]:
        return {"file": file_signature(ctx.stage1.file)}  # the file's contents decide, not where it lies

    def check(self, ctx: PipelineContext) -> None:
        file = ctx.stage1.file
        if file is None:
            raise InputError("stage1.source is 'file' but no file is given", field="stage1.file",
                             hint="give the synthetic JSONL (or BEIR gen-queries.jsonl) to import")
        if not Path(file).is_file():
            raise InputError("synthetic file not found" if not Path(file).exists() else "is a folder", path=file,
                             field="stage1.file", hint="give our JSONL or BEIR's gen-queries.jsonl")
