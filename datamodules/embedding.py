"""Embedding inputs: ``(id, text)`` pairs -> length-sorted, tokenized batches that carry their ids.

How the work is split under DDP, and why: the items are sorted by length (characters, longest
first, as sentence-transformers does) *before* the dataset is built, and the DataLoader is a
plain sequential one. Lightning injects its ``UnrepeatedDistributedSampler`` for ``predict``,
which hands rank ``r`` the positions ``r, r + W, r + 2W, ...`` of that sorted list: every item
goes to exactly one rank (no padding duplicates), each rank's stream is still sorted, so its
batches are length-homogeneous (little padding), and the ranks get near-equal work. Longest
first makes an out-of-memory batch show up at the start, not hours in. A custom DDP-aware
batch sampler would do the same with more code and would bypass Lightning's own splitting.

Resume: ``skip_ids`` (ids already written by an earlier run) are left out. A rank with no
work would make Lightning skip its predict hooks (and the writer's merge barrier), so when
fewer than ``world_size`` items remain, already-done items are added back to give every rank
one; the writer's merge deduplicates them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from core.io import InputError
from lightning_modules.encoder import resolve_encoder_source, resolve_max_length
from lightning_modules.loading import load_tokenizer
from retrieval.vectors import check_ids


def check_items(items: Sequence[tuple[str, str]]) -> None:
    """Ids unique strings, texts strings. An empty text is embedded as it is (only the special tokens), as
    sentence-transformers and BEIR embed an empty document; empty synthetic texts are left out upstream."""
    check_ids([item[0] for item in items], what="items ids")
    for position, (key, text) in enumerate(items):
        if not isinstance(text, str):
            raise InputError(f"item {position} (id '{key}') has a {type(text).__name__} text", field="text")


class TextBatchCollator:
    """Tokenize a list of ``(id, text)`` rows into a padded batch; picklable for DataLoader workers."""

    def __init__(self, tokenizer: Any, max_length: int, lowercase: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase

    def __call__(self, rows: list[tuple[str, str]]) -> dict[str, Any]:
        texts = [text.strip().lower() if self.lowercase else text.strip() for _, text in rows]
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_token_type_ids=False)
        return {"ids": [key for key, _ in rows], "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"]}


class SortedTexts(Dataset):
    """A view of ``items`` in a given order (indices only: the texts are not copied)."""

    def __init__(self, items: Sequence[tuple[str, str]], order: Sequence[int]) -> None:
        self.items = items
        self.order = torch.as_tensor(list(order), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[str, str]:
        return self.items[int(self.order[position])]


def plan_order(items: Sequence[tuple[str, str]], skip_ids: Collection[str], world_size: int) -> list[int]:
    """Indices to embed: not skipped, at least ``world_size`` of them, longest text first."""
    todo = [i for i, (key, _) in enumerate(items) if key not in skip_ids]
    if len(todo) < world_size:
        todo_set = set(todo)
        todo += [i for i in range(len(items)) if i not in todo_set][: world_size - len(todo)]
        while len(todo) < world_size:  # fewer items than ranks: repeat some (the merge deduplicates)
            todo += todo[: world_size - len(todo)]
    return sorted(todo, key=lambda i: -len(items[i][1]))


class TextsDataModule(LightningDataModule):
    """Batches of ``{"ids": list[str], "input_ids", "attention_mask"}`` for :class:`EncoderModule` predict."""

    def __init__(self, items: Sequence[tuple[str, str]] | None = None, tokenizer_name_or_path: str | None = None,
                 batch_size: int = 64, max_length: int | None = None, num_workers: int = 0,
                 skip_ids: Collection[str] = ()) -> None:
        """``tokenizer_name_or_path``: the encoder's folder (a sentence-transformers folder works);
        ``max_length``: default from its sentence-transformers config, else the tokenizer's limit."""
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.items = items
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.skip_ids = frozenset(skip_ids)
        self.dataset: SortedTexts | None = None
        self.collator: TextBatchCollator | None = None
        if items is not None:
            check_items(items)

    def setup(self, stage: str | None = None) -> None:
        if self.items is None:
            raise ValueError("TextsDataModule has no items: pass items=[(id, text), ...]")
        if not self.items:
            raise ValueError("TextsDataModule got no items to embed")
        if self.tokenizer_name_or_path is None:
            raise ValueError("TextsDataModule needs tokenizer_name_or_path (the encoder's folder or hub name)")
        source = resolve_encoder_source(self.tokenizer_name_or_path)
        tokenizer = load_tokenizer(source.model_path)
        max_length = self.max_length or resolve_max_length(source, tokenizer)
        self.collator = TextBatchCollator(tokenizer, max_length, lowercase=source.do_lower_case)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        order = plan_order(self.items, self.skip_ids, world_size)
        skipped = sum(1 for key, _ in self.items if key in self.skip_ids)
        if skipped:
            rank_zero_info(f"resuming: {skipped} of {len(self.items)} texts already embedded, {len(order)} to go")
        self.dataset = SortedTexts(self.items, order)

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=False)
