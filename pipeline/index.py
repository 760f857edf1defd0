"""The index stage's driver: ``Trainer.predict`` of :class:`IndexModule` over the embed stage's vectors.

What it decides: which synthetic outputs (``index.stage``), the weighting (``rao_blackwell``), the level and
sentence mix, and what the manifest records so that ``search`` can refuse a mismatched encoder or file.
The loop runs in float32 whatever ``trainer.precision`` says: it only averages vectors, and bf16 autocast
would round them.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from callbacks.index_writer import IndexWriter
from callbacks.stop_on_signal import StopOnSignal
from core.fingerprint import chunks_hash, items_hash, stable_hash
from core.record_key import RecordKey
from datamodules.beir import CORPUS_FILE
from datamodules.index_inputs import IndexInputsDataModule
from lightning_modules.encoder import EncoderModule
from lightning_modules.index_module import IndexModule
from pipeline import layout
from pipeline.context import PipelineContext
from pipeline.embed import quiet_trainer_setup
from retrieval.index_files import FAISS, MANIFEST, unit_keys
from retrieval.rao_blackwell import WEIGHTING_METHODS
from retrieval.vectors import read_vector_metadata

log = logging.getLogger(__name__)


def check_index_config(ctx: PipelineContext) -> None:
    """Before any stage runs: a level the embedded units cannot give."""
    if ctx.index.level != "doc" and not ctx.embed.sentences:
        raise ValueError(f"index.level: {ctx.index.level} needs sentence vectors: set embed.sentences: true "
                         "or index.level: doc")


def index_settings(ctx: PipelineContext) -> dict[str, Any]:
    """What decides the index's vectors (its stage's rerun slice); the batch size does not."""
    settings = {k: v for k, v in dataclasses.asdict(ctx.index).items() if k != "batch_size"}
    return {**settings, "stage": ctx.index_stage, "rao_blackwell": ctx.index_weighting,
            "sentence_weight": ctx.evaluate.multi_sentence_weight if ctx.index.level == "multi" else None}


def build_index(ctx: PipelineContext) -> Path:
    """Write ``<run_dir>/index/`` (every rank runs this; rank 0 merges) and return its path."""
    check_index_config(ctx)
    run_dir, stage, config = ctx.run_dir, ctx.index_stage, ctx.rao_blackwell
    index_dir = run_dir / layout.INDEX_DIR
    if ctx.is_global_zero:  # a manifest describes a finished build only: the old one goes first
        (index_dir / MANIFEST).unlink(missing_ok=True)
        (index_dir / FAISS).unlink(missing_ok=True)
    sentences = run_dir / layout.SENTENCES if ctx.index.level != "doc" else None
    inputs = [run_dir / layout.DOCUMENTS, run_dir / layout.synthetic_vectors(stage), *([sentences] if sentences else [])]
    scores = _output_scores(ctx, stage)
    fingerprint = stable_hash([index_settings(ctx), [read_vector_metadata(path).get("fingerprint") for path in inputs],
                               None if scores is None else chunks_hash([scores.numpy().tobytes()])])
    data = IndexInputsDataModule(inputs[0], inputs[1], sentences, synthetic_scores=scores,
                                 batch_size=ctx.index.batch_size)
    order = unit_keys(ctx.index.level, data.doc_ids, data.sentence_keys())
    writer = IndexWriter(index_dir, order, data.doc_ids, ctx.index.level, _manifest(ctx, data.doc_ids),
                         fingerprint=fingerprint, dtype=ctx.index.dtype, faiss=ctx.index.faiss,
                         faiss_nlist=ctx.index.faiss_nlist)
    data.skip_docs = frozenset(RecordKey.decode(key).doc_id for key in writer.done_keys())
    module = IndexModule(ctx.index.level, config, ctx.evaluate.multi_sentence_weight)
    settings = {**ctx.trainer_kwargs(), "precision": "32-true", "enable_model_summary": False}
    settings["callbacks"] = [writer, *settings["callbacks"], StopOnSignal()]  # the profile's `callbacks:` join too
    with quiet_trainer_setup():
        trainer = Trainer(**settings)
    trainer.predict(module, datamodule=data, return_predictions=False)
    if ctx.is_global_zero:
        log.info("index: %d units of %d documents in %s", len(order), len(data.doc_ids), index_dir)
    return index_dir


def _output_scores(ctx: PipelineContext, stage: str) -> Any:
    """The per-output score the weighting method needs (BERTScore F1), aligned with the synthetic file's rows."""
    needed = WEIGHTING_METHODS.get(ctx.rao_blackwell.method).output_score
    if needed is None:
        return None
    from pipeline.evaluation import Evaluator  # the evaluator computes and caches per-output scores

    return Evaluator(ctx).output_scores(stage, needed)


def _manifest(ctx: PipelineContext, doc_ids: list[str]) -> dict[str, Any]:
    encoder_name = ctx.embedding_encoder
    encoder = EncoderModule(encoder_name)
    documents = read_vector_metadata(ctx.run_dir / layout.DOCUMENTS)
    return {
        "system": ctx.index_system,
        "encoder": _portable(encoder_name, ctx.run_dir / layout.INDEX_DIR),
        "encoder_fingerprint": encoder.fingerprint(),
        "encoder_max_length": encoder.max_length,
        "embedding_precision": documents.get("precision", "32-true"),
        "query_batch_size": ctx.embed.batch_size,
        "rao_blackwell": ctx.index_weighting,
        "sentence_weight": ctx.evaluate.multi_sentence_weight if ctx.index.level == "multi" else None,
        "synthetic_stages": [ctx.index_stage],
        "use_filtered": ctx.evaluate.use_filtered,
        "corpus": str((Path(ctx.data.path) / CORPUS_FILE).resolve()),
        "corpus_fingerprint": items_hash(ctx.documents()),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _portable(encoder: str, index_dir: Path) -> str:
    """A folder inside the run directory relative to the index (the run may move), another folder absolute,
    a hub name as is (``retrieval.index_files.Index.encoder`` reads it back)."""
    path = Path(encoder)
    if not path.exists():
        return encoder
    run_dir = index_dir.resolve().parent
    resolved = path.resolve()
    return str(Path("..") / resolved.relative_to(run_dir)) if resolved.is_relative_to(run_dir) else str(resolved)
