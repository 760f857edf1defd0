"""What each pipeline stage does, and the stage graph: read the previous stages' files, call the library, write.

Every stage body takes the :class:`~pipeline.context.PipelineContext` and communicates only through
files under ``ctx.run_dir`` (``pipeline.layout``), so a stage can run alone or resume. :func:`build_stages`
gives each stage the settings slice whose change reruns it and the stages whose outputs it reads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from core.fingerprint import file_signature, plain, stable_hash
from core.io import file_sha256, write_json_atomic, write_text_atomic
from datamodules.downsample import DataConfig, load_dataset_from_config
from lightning_modules.encoder import EncoderModule, same_vectors
from lightning_modules.precision import precision_identity
from pipeline import layout
from pipeline.context import PipelineContext
from pipeline.embed import embed_texts
from pipeline.evaluation import evaluate_run_dir
from pipeline.filter_stage import encoder_embedder, run_filter
from pipeline.index import build_index, index_settings
from pipeline.fit import fit_selfinstruct
from pipeline.runner import Stage
from pipeline.sources import STAGE1_SOURCES, generate
from retrieval.extractive import extractive_records
from retrieval.filter import filter_records
from retrieval.sentences import plan_units
from retrieval.synthetic import expansion_texts, read_synthetic, write_synthetic

log = logging.getLogger(__name__)


def run_data(ctx: PipelineContext) -> None:
    """Load and check the BEIR folder, downsample if asked, record the kept ids."""
    load_dataset_from_config(ctx.data, run_dir=ctx.run_dir)


def run_stage1(ctx: PipelineContext) -> None:
    """Stage 1: synthetic questions and keywords from the configured source."""
    STAGE1_SOURCES.get(ctx.stage1.source)().write(ctx, ctx.run_dir / layout.STAGE1)


def run_filter_stage(ctx: PipelineContext) -> None:
    """Quality-filter stage 1: the kept records (which the self-instruct split and the vectors use) and a report."""
    records = read_synthetic(ctx.run_dir / layout.STAGE1, ctx.dataset.corpus)
    run_filter(records, ctx.dataset, ctx.filter, ctx.run_dir, ctx.run_dir / layout.STAGE1_KEPT,
               ctx.run_dir / layout.FILTER_REPORT, encoder=ctx.base_encoder, loggers=ctx.loggers)


def run_tune(ctx: PipelineContext) -> None:
    """Instruction-tune the model on the kept records; the best model lands in ``fit/model``."""
    ctx.finish_loggers()  # W&B allows one active run per process: tuning logs to its own run in the group
    key_file, key = _discard_checkpoints_of_other_runs(ctx)
    trainer = {**ctx.trainer, **ctx.fit.trainer, "default_root_dir": str(ctx.run_dir / layout.FIT_DIR)}
    trainer["logger"] = ctx.fit_logger_config()
    if ctx.callbacks:  # appended to the fit CLI's own (LearningRateMonitor and those of fit.configs)
        trainer["callbacks+"] = ctx.callbacks
    data = {"init_args": {**ctx.fit.data, "kept_file": str(ctx.run_dir / layout.STAGE1_KEPT),
                          "dataset": plain(ctx.data), "prompts": plain(ctx.prompts),
                          "split_dir": str(ctx.run_dir / layout.SELFINSTRUCT_DIR)}}
    fit_selfinstruct(*ctx.fit.configs, {"model": ctx.model_config, "trainer": trainer, "data": data},
                     overrides=["--ckpt_path=last", *ctx.fit.overrides])
    if ctx.is_global_zero:  # a later rerun of this tuning (forced, or its inputs rebuilt) starts afresh
        write_text_atomic(key_file, f"{key} {FINISHED}\n")


FINISHED = "finished"


def _discard_checkpoints_of_other_runs(ctx: PipelineContext) -> tuple[Path, str]:
    """Resume (``ckpt_path=last``) only an interrupted run of the same tuning; a changed model, fit setting
    or training data starts afresh instead of continuing someone else's optimizer state, and so does a
    tuning that had finished (resuming its last checkpoint would train nothing and save no model).
    Returns the key file and this tuning's key."""
    key = stable_hash({"model": ctx.model_config, "fit": plain(ctx.fit), "prompts": plain(ctx.prompts),
                       "kept": file_sha256(ctx.run_dir / layout.STAGE1_KEPT), **precision_identity(ctx.trainer)})
    key_file = ctx.run_dir / layout.FIT_DIR / "run-key.txt"
    if ctx.is_global_zero:
        previous = key_file.read_text().split() if key_file.is_file() else []
        if previous and (previous[0] != key or previous[-1] == FINISHED):
            log.info("tuning settings or data changed, or the previous tuning had finished: discarding its "
                     "checkpoints and tuning afresh")
            shutil.rmtree(ctx.run_dir / layout.FIT_DIR / "checkpoints", ignore_errors=True)
        write_text_atomic(key_file, key + "\n")
    return key_file, key


def run_stage2(ctx: PipelineContext) -> None:
    """Stage 2: regenerate with the tuned model (same prompts)."""
    if ctx.fit.skip:
        module = ctx.model()
    else:
        module = ctx.generator.from_tuned(ctx.run_dir / layout.TUNED_MODEL, ctx.model_config["init_args"])
    generate(ctx, module, ctx.run_dir / layout.STAGE2, stage=2, decoding=ctx.generation.decoding)


def run_filter2(ctx: PipelineContext) -> None:
    """Apply the filter's rules to stage-2 outputs: what is kept augments vectors."""
    records = read_synthetic(ctx.run_dir / layout.STAGE2, ctx.dataset.corpus)
    if ctx.generation.filter_stage2:
        result = filter_records(records, ctx.dataset, ctx.filter,
                                encoder_embedder(ctx.filter.encoder if ctx.filter.encoder is not None else ctx.base_encoder),
                                work_dir=ctx.run_dir / "cache" / "filter")
        write_json_atomic(ctx.run_dir / layout.STAGE2_FILTER_REPORT, result.report)
        records = result.kept
    else:  # a report left by an earlier filtered run would describe outputs that are no longer the kept ones
        (ctx.run_dir / layout.STAGE2_FILTER_REPORT).unlink(missing_ok=True)
    write_synthetic(ctx.run_dir / layout.STAGE2_KEPT, records)


def sentence_items(ctx: PipelineContext) -> list[tuple[str, str]]:
    """The sentence units of the corpus; the splitter chosen and the units per document go to
    ``layout.SENTENCE_UNITS`` (the evaluate stage copies them into ``results.json``)."""
    corpus = ctx.dataset.corpus
    items, report = plan_units(((doc_id, corpus[doc_id].title, corpus[doc_id].text) for doc_id in ctx.dataset.doc_ids),
                               ctx.embed.units)
    write_json_atomic(ctx.run_dir / layout.SENTENCE_UNITS, report)
    return items


def run_embed(ctx: PipelineContext) -> None:
    """Embed documents, sentences, queries, synthetic texts and expanded documents with one encoder; when tuning
    changed the encoder, also the before-tuning inputs (documents, sentences, queries, stage 1) with the base one."""
    encoder = EncoderModule(ctx.embedding_encoder)
    dataset, run_dir = ctx.dataset, ctx.run_dir
    settings = {"batch_size": ctx.embed.batch_size, "trainer_kwargs": ctx.trainer_kwargs(), "dtype": ctx.embed.dtype,
                "return_vectors": False}  # evaluation maps the files; holding every matrix here would only cost memory
    base = _changed_base_encoder(ctx, encoder)
    jobs: list[tuple[str, list[tuple[str, str]]]] = [
        (layout.DOCUMENTS, ctx.documents()),
        (layout.QUERIES, list(dataset.queries.items())),
    ]
    if ctx.embed.sentences:
        jobs.append((layout.SENTENCES, sentence_items(ctx)))
    for stage in ("stage1", "stage2"):
        records = ctx.synthetic_records(stage)
        jobs.append((layout.synthetic_vectors(stage), [(r.key.encode(), r.text) for r in records]))
        jobs.append((layout.expansion_vectors(stage), expansion_texts(ctx.documents(), records)))
    if "extractive" in ctx.evaluate.coverage_fallback:  # every document's own fallback outputs
        records = extractive_records(dataset, ctx.stage1.extractive)
        write_synthetic(run_dir / layout.EXTRACTIVE, records)
        jobs.append((layout.synthetic_vectors("extractive"), [(r.key.encode(), r.text) for r in records]))
    for path, items in jobs:
        log.info("embedding %d texts into %s", len(items), path)
        embed_texts(items, encoder, run_dir / path, **settings)
    if base is None:  # a folder left by another configuration would be read as this one's before-tuning vectors
        shutil.rmtree(run_dir / layout.BASE_VECTORS_DIR, ignore_errors=True)
    else:
        before = {layout.DOCUMENTS, layout.QUERIES, layout.SENTENCES, layout.synthetic_vectors("stage1"),
                  layout.expansion_vectors("stage1"), layout.synthetic_vectors("extractive")}  # stage-1 fallback too
        for path, items in jobs:
            if path in before:
                log.info("embedding %d texts into %s with the base encoder", len(items), layout.base_vectors(path))
                embed_texts(items, base, run_dir / layout.base_vectors(path), **settings)


def _changed_base_encoder(ctx: PipelineContext, tuned: EncoderModule) -> EncoderModule | None:
    """The base model's encoder when the before-tuning rows need its own vectors: ``embed.encoder: tuned``, a
    tuning ran, and it changed the encoder. A frozen encoder computes the same vectors: reused, and logged."""
    if ctx.embed.encoder != "tuned" or ctx.fit.skip or ctx.base_encoder is None:
        return None
    base = EncoderModule(ctx.base_encoder)
    if same_vectors(base, tuned):
        log.info("the tuned model's encoder has the base model's weights (frozen): the before-tuning rows reuse "
                 "its vectors")
        return None
    return base


def run_evaluate(ctx: PipelineContext) -> None:
    """Rao-Blackwellise, search and score every configured system; write the table, sweep and plot."""
    evaluate_run_dir(ctx)


def _data_settings(data: DataConfig) -> dict[str, object]:
    """The data stage's settings without where the folder and the cache lie (its files are hashed instead);
    ``empty_documents`` only when not the default, so runs made before it existed keep their fingerprints."""
    return {key: value for key, value in plain(data).items()
            if key not in ("path", "cache_dir") and (key, value) != ("empty_documents", "keep")}


def build_stages(ctx: PipelineContext) -> list[Stage]:
    """The stages of this configuration, with the settings slice that decides each one's rerun."""
    model, prompts = ctx.model_config, plain(ctx.prompts)
    gen = ctx.generation_settings()
    precision = precision_identity(ctx.trainer)  # {} in float32: float32 runs keep their fingerprints
    embed = {**{k: v for k, v in plain(ctx.embed).items() if k != "batch_size"}, **precision}
    source = STAGE1_SOURCES.get(ctx.stage1.source)()
    embed_deps = ["filter", "filter2"] + (["tune"] if ctx.embed.encoder == "tuned" and not ctx.fit.skip else [])
    if ctx.embed.encoder in ("tuned", "base"):
        embed["model"] = model
    stages = [
        Stage("data", lambda: run_data(ctx), lambda: {"data": _data_settings(ctx.data),
                                                     "files": file_signature(Path(ctx.data.path))},
              lambda: [layout.KEPT_DOCS]),
        Stage("stage1", lambda: run_stage1(ctx), lambda: {**plain(ctx.stage1), **source.settings(ctx)},
              lambda: [layout.STAGE1], lambda: ["data"], collective=source.collective),
        Stage("filter", lambda: run_filter_stage(ctx), lambda: {"filter": plain(ctx.filter), "encoder": ctx.base_encoder},
              lambda: [layout.STAGE1_KEPT, layout.FILTER_REPORT], lambda: ["stage1"]),
    ]
    if not ctx.fit.skip:
        stages.append(Stage("tune", lambda: run_tune(ctx),
                            lambda: {"model": model, "fit": plain(ctx.fit), "prompts": prompts, **precision},
                            lambda: [layout.TUNED_MODEL + "/config.json"], lambda: ["filter"], collective=True))
    stages += [
        Stage("stage2", lambda: run_stage2(ctx), lambda: {"generation": gen, "prompts": prompts, "model": model},
              lambda: [layout.STAGE2], lambda: ["tune"] if not ctx.fit.skip else ["filter"], collective=True),
        Stage("filter2", lambda: run_filter2(ctx),
              lambda: {"filter": plain(ctx.filter) if ctx.generation.filter_stage2 else None,
                       "encoder": ctx.base_encoder}, lambda: [layout.STAGE2_KEPT], lambda: ["stage2"]),
        Stage("embed", lambda: run_embed(ctx), lambda: {"embed": embed, "evaluate_filtered": ctx.evaluate.use_filtered,
                                                  **({"fallback": ctx.evaluate.coverage_fallback}
                                                     if ctx.evaluate.coverage_fallback else {})},
              lambda: layout.vector_outputs(ctx.embed.sentences), lambda: embed_deps, collective=True),
        Stage("index", lambda: build_index(ctx), lambda: index_settings(ctx), lambda: [layout.INDEX_MANIFEST],
              lambda: ["embed"], collective=True),
    ]
    if ctx.corpus_only:  # nothing to score against (pipeline.report says so)
        return stages
    stages += [
        Stage("evaluate", lambda: run_evaluate(ctx),
              lambda: {"evaluate": plain(ctx.evaluate), "rao_blackwell": plain(ctx.rao_blackwell)},
              lambda: [layout.RESULTS_JSON, layout.RESULTS_MD], lambda: ["embed", "index"]),
    ]
    return stages

