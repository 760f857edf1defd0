"""The one way the project embeds texts: ``embed_texts(items, encoder, output)``.

It runs ``Trainer.predict`` with :class:`TextsDataModule` and :class:`VectorWriter`
(``return_predictions=False``, so memory stays flat), on one CPU, one GPU or many (DDP).
Reruns are cheap: a complete output made from the same inputs and encoder is loaded, and an
interrupted run resumes from its part files. Both are keyed by a fingerprint of the encoder
(model files, pooling, truncation, normalisation) and of every ``(id, text)``, so a changed
model or text is never served stale vectors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.stop_on_signal import StopOnSignal
from callbacks.vector_writer import VectorWriter
from core.fingerprint import items_hash, stable_hash
from core.io import InputError
from datamodules.embedding import TextsDataModule, check_items
from lightning_modules.encoder import EncoderModule
from lightning_modules.precision import precision_identity
from retrieval.vectors import load_vectors, read_vector_ids, read_vector_metadata, save_vectors


def _is_complete(output: Path, ids: list[str], tag: str) -> bool:
    """True if ``output`` holds vectors for exactly ``ids`` made with the same fingerprint and dtype."""
    if not output.is_file():
        return False
    try:
        if read_vector_metadata(output).get("fingerprint") != tag:
            rank_zero_info(f"{output} was made from other inputs or another encoder; recomputing it")
            return False
        return read_vector_ids(output) == ids
    except InputError as err:
        rank_zero_warn(f"{err}; recomputing it")
        return False


@contextlib.contextmanager
def quiet_trainer_setup() -> Iterator[None]:
    """Hide Lightning's INFO banners ("GPU available: ...", tips) printed while a ``Trainer`` is built."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def embed_texts(items: Sequence[tuple[str, str]], encoder: str | EncoderModule, output: str | Path,
                batch_size: int = 64, trainer_kwargs: dict[str, Any] | None = None, progress: bool = True,
                dtype: Literal["float32", "float16"] = "float32", num_workers: int = 0,
                return_vectors: bool = True) -> tuple[list[str], torch.Tensor | None]:
    """Embed ``(id, text)`` pairs into ``output`` and return ``(ids, float32 vectors)`` in the order of ``items``.

    ``encoder``: a model folder/name (see :class:`EncoderModule`) or a built module;
    ``trainer_kwargs``: passed to ``Trainer`` (accelerator, devices, strategy, precision, callbacks...);
    defaults: one device, no logger, no checkpoints. ``dtype``: of the file on disk.
    ``return_vectors``: False returns ``(ids, None)`` and never holds the matrix in memory (a stage whose
    readers map the file later: the memory of a large corpus then grows with its ids, not its vectors).
    """
    output = Path(output)
    check_items(items)  # before hashing: a bad item gets its clear error, not an AttributeError
    module = encoder if isinstance(encoder, EncoderModule) else EncoderModule(encoder)
    ids = [key for key, _ in items]
    fingerprint = stable_hash([module.fingerprint(), items_hash(items)])
    precision = precision_identity(trainer_kwargs).get("precision")  # None in float32 (older files keep their tag)
    tag = f"{fingerprint}-{dtype}" + (f"-{precision}" if precision else "")
    if _is_complete(output, ids, tag):
        rank_zero_info(f"{output} already holds these {len(ids)} vectors" + ("; loading it" if return_vectors else ""))
        return ids, _float32(output) if return_vectors else None
    if not ids:
        save_vectors(output, [], np.zeros((0, module.dim), dtype=np.float32), dtype=dtype, metadata={"fingerprint": tag})
        return [], torch.zeros(0, module.dim) if return_vectors else None

    writer = VectorWriter(output, order=ids, fingerprint=fingerprint, dtype=dtype,
                          metadata={"fingerprint": tag, "encoder": module.source.model_path,
                                    "precision": precision or "32-true"})
    datamodule = TextsDataModule(items, module.tokenizer_path, batch_size=batch_size, max_length=module.max_length,
                                 num_workers=num_workers, skip_ids=writer.done_keys())
    settings: dict[str, Any] = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                                "enable_model_summary": False, "enable_progress_bar": progress}
    settings.update(trainer_kwargs or {})
    extra = settings.get("callbacks") or []
    settings["callbacks"] = [writer, *([extra] if isinstance(extra, Callback) else extra), StopOnSignal()]
    with quiet_trainer_setup():  # a stage builds several trainers: their device banners would bury the progress
        trainer = Trainer(**settings)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)

    written_ids = read_vector_ids(output)
    if written_ids != ids:
        raise RuntimeError(f"{output} holds {len(written_ids)} ids that differ from the {len(ids)} requested")
    del written_ids
    return ids, _float32(output) if return_vectors else None


def _float32(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(load_vectors(path)[1], dtype=np.float32))
