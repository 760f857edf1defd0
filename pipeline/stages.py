"""What each pipeline stage does: read the previous stages' files, call the library, write its own.

Every function takes the :class:`~pipeline.pipeline.PipelineContext` and communicates only
through files under ``ctx.run_dir`` (``pipeline.layout``), so a stage can run alone or resume.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.downsample import load_dataset_from_config
from datamodules.sentences import sentence_units
from pipeline import layout
from retrieval.synthetic import SyntheticRecord, load_file_source, read_synthetic, write_synthetic

if TYPE_CHECKING:
    from pipeline.pipeline import PipelineContext

log = logging.getLogger(__name__)

KEY_SEPARATOR = "|"


def record_key(record: SyntheticRecord) -> str:
    """The id of a synthetic text's vector: ``doc_id|task|sample_idx`` (task and index hold no '|')."""
    return f"{record.doc_id}{KEY_SEPARATOR}{record.task}{KEY_SEPARATOR}{record.sample_idx}"


def parse_record_key(key: str) -> tuple[str, str, int]:
    doc_id, task, sample_idx = key.rsplit(KEY_SEPARATOR, 2)
    return doc_id, task, int(sample_idx)


def run_data(ctx: PipelineContext) -> None:
    """Load and check the BEIR folder, downsample if asked, record the kept ids."""
    load_dataset_from_config(ctx.data, run_dir=ctx.run_dir)


def run_stage1(ctx: PipelineContext) -> None:
    """Stage 1: synthetic questions and keywords from the configured source."""
    output = ctx.run_dir / layout.STAGE1
    source = ctx.stage1.source
    if source == "file":
        if ctx.stage1.file is None:
            raise ValueError("stage1.source is 'file' but stage1.file is not set: give the synthetic JSONL "
                             "(or BEIR gen-queries.jsonl) to import")
        records = load_file_source(Path(ctx.stage1.file), ctx.stage1.file_format, ctx.dataset.corpus,
                                   ctx.stage1.on_unknown_doc)
        write_synthetic(output, [dataclasses.replace(r, stage=1) for r in records])
    elif source == "extractive":
        from retrieval.extractive import extractive_records

        write_synthetic(output, extractive_records(ctx.dataset, ctx.stage1.extractive))
    else:
        generate(ctx, ctx.model(), output, stage=1, decoding=ctx.stage1.decoding or ctx.generation.decoding)


def generate(ctx: PipelineContext, module: Any, output: Path, stage: int, decoding: Any) -> Path:
    """The model's own generation (stage 1 with ``source: self``, and stage 2)."""
    from retrieval.generate import generate_synthetic

    return generate_synthetic(ctx.dataset, module, ctx.prompts, decoding=decoding, output=output, stage=stage,
                              trainer_kwargs=ctx.trainer_kwargs(), batch_size=ctx.generation.batch_size,
                              max_input_length=ctx.generation.max_input_length)


def run_filter(ctx: PipelineContext) -> None:
    """Quality-filter stage 1 and write the self-instruct split (and the kept records for augmentation)."""
    from retrieval.filter import run_filter as filter_stage

    records = read_synthetic(ctx.run_dir / layout.STAGE1, ctx.dataset.corpus)
    filter_stage(records, ctx.dataset, ctx.filter, ctx.prompts, ctx.run_dir, encoder=ctx.base_encoder,
                 loggers=ctx.loggers, kept_path=ctx.run_dir / layout.STAGE1_KEPT)


def run_tune(ctx: PipelineContext) -> None:
    """Instruction-tune the model on the self-instruct split; the best model lands in ``fit/model``."""
    from lightning_modules.cli import fit_selfinstruct

    ctx.finish_loggers()  # W&B allows one active run per process: tuning logs to its own run in the group
    key_file, key = _discard_checkpoints_of_other_runs(ctx)
    trainer = {**ctx.trainer, **ctx.fit.trainer, "default_root_dir": str(ctx.run_dir / layout.FIT_DIR)}
    trainer["logger"] = ctx.fit_logger_config()
    data = {"init_args": {**ctx.fit.data, "train_file": str(ctx.run_dir / layout.TRAIN),
                          "val_file": str(ctx.run_dir / layout.VAL)}}
    fit_selfinstruct(*ctx.fit.configs, {"model": ctx.model_config, "trainer": trainer, "data": data},
                     overrides=["--ckpt_path=last", *ctx.fit.overrides])
    if ctx.is_global_zero:  # a later rerun of this tuning (forced, or its inputs rebuilt) starts afresh
        from retrieval.io import write_text_atomic

        write_text_atomic(key_file, f"{key} {FINISHED}\n")


FINISHED = "finished"


def _discard_checkpoints_of_other_runs(ctx: PipelineContext) -> tuple[Path, str]:
    """Resume (``ckpt_path=last``) only an interrupted run of the same tuning; a changed model, fit setting
    or training file starts afresh instead of continuing someone else's optimizer state, and so does a
    tuning that had finished (resuming its last checkpoint would train nothing and save no model).
    Returns the key file and this tuning's key."""
    import hashlib
    import json
    import shutil

    from retrieval.io import write_text_atomic

    digest = hashlib.sha256(json.dumps({"model": ctx.model_config, "fit": dataclasses.asdict(ctx.fit)},
                                       sort_keys=True, default=str).encode())
    for name in (layout.TRAIN, layout.VAL):
        digest.update((ctx.run_dir / name).read_bytes())
    key, key_file = digest.hexdigest()[:16], ctx.run_dir / layout.FIT_DIR / "run-key.txt"
    if ctx.is_global_zero:
        previous = key_file.read_text().split() if key_file.is_file() else []
        if previous and (previous[0] != key or previous[-1] == FINISHED):
            log.info("tuning settings or data changed, or the previous tuning had finished: discarding its "
                     "checkpoints and tuning afresh")
            shutil.rmtree(ctx.run_dir / layout.FIT_DIR / "checkpoints", ignore_errors=True)
        write_text_atomic(key_file, key + "\n")
    return key_file, key


def run_stage2(ctx: PipelineContext) -> None:
    """Stage 2: regenerate with the tuned model (same prompts), then filter the outputs for augmentation."""
    if ctx.fit.skip:
        module = ctx.model()
    else:
        from lightning_modules.seq2seq import Seq2SeqModule

        # the tuned folder holds the model and its tokenizer; how the untuned model was built no longer applies
        init = {k: v for k, v in ctx.model_config["init_args"].items()
                if k not in ("model_name_or_path", "warm_start_encoder", "decoder_layers", "tokenizer_name_or_path")}
        module = Seq2SeqModule(**{**init, "model_name_or_path": str(ctx.run_dir / layout.TUNED_MODEL)})
    generate(ctx, module, ctx.run_dir / layout.STAGE2, stage=2, decoding=ctx.generation.decoding)


def run_filter2(ctx: PipelineContext) -> None:
    """Apply the filter's rules to stage-2 outputs (no split): what is kept augments vectors."""
    records = read_synthetic(ctx.run_dir / layout.STAGE2, ctx.dataset.corpus)
    if ctx.generation.filter_stage2:
        from retrieval.filter import filter_records
        from retrieval.io import write_json_atomic

        result = filter_records(records, ctx.dataset, ctx.filter, encoder=ctx.base_encoder,
                                work_dir=ctx.run_dir / "cache" / "filter")
        write_json_atomic(ctx.run_dir / layout.STAGE2_FILTER_REPORT, result.report)
        records = result.kept
    else:  # a report left by an earlier filtered run would describe outputs that are no longer the kept ones
        (ctx.run_dir / layout.STAGE2_FILTER_REPORT).unlink(missing_ok=True)
    write_synthetic(ctx.run_dir / layout.STAGE2_KEPT, records)


def synthetic_records(ctx: PipelineContext, stage: str) -> list[SyntheticRecord]:
    """The synthetic texts that augment vectors: the filter's kept ones (or all, by configuration).

    An empty output (whitespace only; the filter drops them, ``use_filtered: false`` and
    ``generation.filter_stage2: false`` do not) is left out: it has no embedding and says nothing about its
    document; the log counts them.
    """
    paths = {"stage1": (layout.STAGE1_KEPT, layout.STAGE1), "stage2": (layout.STAGE2_KEPT, layout.STAGE2)}
    kept, raw = paths[stage]
    records = read_synthetic(ctx.run_dir / (kept if ctx.evaluate.use_filtered else raw), ctx.dataset.corpus)
    texts = [record for record in records if record.text.strip()]
    if len(texts) < len(records):
        log.info("%s: %d of %d unfiltered outputs are empty and augment nothing", stage, len(records) - len(texts),
                 len(records))
    return texts


def expansion_texts(ctx: PipelineContext, records: list[SyntheticRecord]) -> list[tuple[str, str]]:
    """docTTTTTquery-style expansion: each document's text with its synthetic questions appended."""
    questions: dict[str, list[str]] = {}
    for record in records:
        if record.task == "question":
            questions.setdefault(record.doc_id, []).append(record.text)
    return [(doc_id, " ".join([ctx.dataset.doc_text(doc_id), *questions.get(doc_id, [])]))
            for doc_id in ctx.dataset.doc_ids]


def sentence_items(ctx: PipelineContext) -> list[tuple[str, str]]:
    corpus = ctx.dataset.corpus
    return [unit for doc_id in ctx.dataset.doc_ids
            for unit in sentence_units(doc_id, corpus[doc_id].title, corpus[doc_id].text)]


def run_embed(ctx: PipelineContext) -> None:
    """Embed documents, sentences, queries, synthetic texts and expanded documents with one encoder."""
    from lightning_modules.encoder import EncoderModule
    from retrieval.embed import embed_texts

    encoder = EncoderModule(ctx.embedding_encoder)
    dataset, run_dir = ctx.dataset, ctx.run_dir
    settings = {"batch_size": ctx.embed.batch_size, "trainer_kwargs": ctx.trainer_kwargs(), "dtype": ctx.embed.dtype,
                "return_vectors": False}  # evaluation maps the files; holding every matrix here would only cost memory
    jobs: list[tuple[str, list[tuple[str, str]]]] = [
        (layout.DOCUMENTS, [(doc_id, dataset.doc_text(doc_id)) for doc_id in dataset.doc_ids]),
        (layout.QUERIES, list(dataset.queries.items())),
    ]
    if ctx.embed.sentences:
        jobs.append((layout.SENTENCES, sentence_items(ctx)))
    for stage in ("stage1", "stage2"):
        records = synthetic_records(ctx, stage)
        jobs.append((layout.synthetic_vectors(stage), [(record_key(r), r.text) for r in records]))
        jobs.append((layout.expansion_vectors(stage), expansion_texts(ctx, records)))
    for path, items in jobs:
        log.info("embedding %d texts into %s", len(items), path)
        embed_texts(items, encoder, run_dir / path, **settings)


def run_evaluate(ctx: PipelineContext) -> None:
    """Rao-Blackwellise, search and score every configured system; write the table, sweep and plot."""
    from pipeline.evaluation import evaluate_run_dir

    evaluate_run_dir(ctx)
