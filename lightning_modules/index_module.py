"""The index loop's LightningModule: a batch of documents -> their final Rao-Blackwellised unit vectors.

Why a LightningModule with no weights: the index is built by ``Trainer.predict`` like generation and
embedding, so it splits documents across GPUs and nodes, streams each batch to a rank-part writer
(``callbacks/index_writer.py``) and resumes after a crash the same way. The weighting itself is
``retrieval.rao_blackwell.rao_blackwell_level``, the function the evaluator's rows use.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule

from retrieval.index_files import document_key
from retrieval.rao_blackwell import LEVELS, RaoBlackwellConfig, rao_blackwell_level


class IndexModule(LightningModule):
    """``predict_step``: ``{"ids": row keys, "vectors": (U, d)}``, each document's units together (sentences,
    then at the multi level its own vector), in the batch's document order."""

    def __init__(self, level: str, config: RaoBlackwellConfig, sentence_weight: float = 1.0) -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"index.level must be one of {LEVELS}, got {level!r}")
        self.level, self.config, self.sentence_weight = level, config, sentence_weight

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        documents = batch["documents"]
        vectors, owner = rao_blackwell_level(
            self.level, documents, batch["synthetic"], batch["synthetic_doc"], batch["synthetic_task"], self.config,
            sentence_vectors=batch["sentences"], sentence_doc=batch["sentence_doc"],
            sentence_weight=self.sentence_weight, synthetic_weights=batch["synthetic_score"])
        own_keys = [document_key(doc_id) for doc_id in batch["doc_ids"]]
        keys = {"doc": own_keys, "sentence": batch["sentence_keys"], "multi": batch["sentence_keys"] + own_keys}[self.level]
        if owner is None:
            return {"ids": keys, "vectors": vectors}
        grouped = torch.argsort(owner, stable=True)  # a document's sentences, then its own vector
        return {"ids": [keys[i] for i in grouped.tolist()], "vectors": vectors[grouped]}
