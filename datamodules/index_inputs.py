"""Index-loop inputs: batches of documents, each with its own embedding, its kept synthetic embeddings and
(at the sentence and multi levels) its sentence embeddings, read from the embed stage's vector files.

Why whole documents per item: a document's Rao-Blackwellised units depend on that document's vectors
only, so a batch of documents is self-contained and Lightning's predict sampler can split documents across
ranks (every document to exactly one rank; ``plan_order`` gives every rank work when few remain).
The files are memory-mapped and only a batch's rows are read and converted to float32, so the loop's
memory does not grow with the corpus. Batches carry their document ids (never inferred from indices).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from core.record_key import RecordKey
from datamodules.embedding import plan_order
from retrieval.vectors import load_vectors


class _Grouped:
    """Rows of a vector file grouped by document (CSR over ``doc_ids``), keys decoded once."""

    def __init__(self, path: Path, doc_index: dict[str, int], what: str) -> None:
        self.keys, self.vectors = load_vectors(path, mmap=True)
        decoded = [RecordKey.decode(key) for key in self.keys]
        unknown = next((k.doc_id for k in decoded if k.doc_id not in doc_index), None)
        if unknown is not None:
            raise ValueError(f"{path}: {what} of document '{unknown}', which is not in the corpus: rerun `embed`")
        self.tasks = [k.task for k in decoded]
        owner = np.fromiter((doc_index[k.doc_id] for k in decoded), dtype=np.int64, count=len(decoded))
        self.order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=len(doc_index))
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def rows(self, doc: int) -> np.ndarray:
        return self.order[self.offsets[doc]:self.offsets[doc + 1]]


class IndexBatchCollator:
    """Document positions -> one batch; local document indices (0..B-1) tie rows to their document."""

    def __init__(self, doc_ids: Sequence[str], documents: np.ndarray, synthetic: _Grouped,
                 synthetic_scores: torch.Tensor | None, sentences: _Grouped | None) -> None:
        self.doc_ids, self.documents = doc_ids, documents
        self.synthetic, self.synthetic_scores, self.sentences = synthetic, synthetic_scores, sentences

    @staticmethod
    def _gather(grouped: _Grouped, docs: Sequence[int]) -> tuple[np.ndarray, torch.Tensor]:
        per_doc = [grouped.rows(doc) for doc in docs]
        rows = np.concatenate(per_doc) if per_doc else np.zeros(0, dtype=np.int64)
        local = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor([len(r) for r in per_doc]))
        return rows, local

    @staticmethod
    def _float32(vectors: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        if not len(rows):
            return torch.zeros(0, vectors.shape[1])
        return torch.from_numpy(np.asarray(vectors[rows], dtype=np.float32))

    def __call__(self, docs: list[int]) -> dict[str, Any]:
        syn_rows, syn_doc = self._gather(self.synthetic, docs)
        batch: dict[str, Any] = {
            "doc_ids": [self.doc_ids[doc] for doc in docs],
            "documents": self._float32(self.documents, np.asarray(docs, dtype=np.int64)),
            "synthetic": self._float32(self.synthetic.vectors, syn_rows), "synthetic_doc": syn_doc,
            "synthetic_task": [self.synthetic.tasks[row] for row in syn_rows.tolist()],
            "synthetic_score": None if self.synthetic_scores is None else self.synthetic_scores[syn_rows],
            "sentences": None, "sentence_doc": None, "sentence_keys": []}
        if self.sentences is not None:
            rows, owner = self._gather(self.sentences, docs)
            batch.update(sentences=self._float32(self.sentences.vectors, rows), sentence_doc=owner,
                         sentence_keys=[self.sentences.keys[row] for row in rows.tolist()])
        return batch


class _Positions(Dataset):
    def __init__(self, order: Sequence[int]) -> None:
        self.order = list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> int:
        return self.order[position]


class IndexInputsDataModule(LightningDataModule):
    """Batches for :class:`lightning_modules.index_module.IndexModule` from the embed stage's files.

    ``synthetic_scores``: a per-output score aligned with the synthetic file's rows, for a weighting method
    that needs one (BERTScore); ``skip_docs``: documents an interrupted run already wrote.
    """

    def __init__(self, documents: Path, synthetic: Path, sentences: Path | None = None,
                 synthetic_scores: torch.Tensor | None = None, batch_size: int = 256,
                 skip_docs: Collection[str] = ()) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"index.batch_size must be >= 1, got {batch_size}")
        self.doc_ids, self.documents = load_vectors(documents, mmap=True)
        doc_index = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.synthetic = _Grouped(synthetic, doc_index, "a synthetic text")
        if synthetic_scores is not None and len(synthetic_scores) != len(self.synthetic.keys):
            raise ValueError(f"{len(synthetic_scores)} output scores for {len(self.synthetic.keys)} synthetic vectors")
        self.sentences = None if sentences is None else _Grouped(sentences, doc_index, "a sentence")
        self.synthetic_scores = synthetic_scores
        self.batch_size = batch_size
        self.skip_docs = frozenset(skip_docs)
        self.dataset: _Positions | None = None

    def sentence_keys(self) -> dict[str, list[str]]:
        """Each document's sentence unit keys, in file order (the index's canonical row order)."""
        if self.sentences is None:
            return {}
        return {doc_id: [self.sentences.keys[row] for row in self.sentences.rows(doc).tolist()]
                for doc, doc_id in enumerate(self.doc_ids)}

    def setup(self, stage: str | None = None) -> None:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        order = plan_order([(doc_id, "") for doc_id in self.doc_ids], self.skip_docs, world_size)  # corpus order
        if self.skip_docs:
            rank_zero_info(f"resuming: {len(self.skip_docs)} of {len(self.doc_ids)} documents already indexed")
        self.dataset = _Positions(order)

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        collator = IndexBatchCollator(self.doc_ids, self.documents, self.synthetic, self.synthetic_scores,
                                      self.sentences)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collator)
