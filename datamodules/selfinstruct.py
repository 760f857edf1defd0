"""The self-instruct split the filter writes (``selfinstruct/{train,val}.jsonl``) as training batches.

Why ``datasets``: tokenising tens of thousands of long instructions takes a while, and every rank
of every epoch of every resumed run needs the same token ids. The json builder stores the file as
arrow (cached by its path and modification time) and ``map`` stores the tokenised columns under a
fingerprint of (file, tokenizer, lengths), so a rerun or a resumed run reads them back. Under DDP,
Lightning runs :meth:`SelfInstructDataModule.prepare_data` on one process per node first (the
cache builder) and :meth:`~SelfInstructDataModule.setup` on every rank afterwards (cache readers).
When several nodes share ``cache_dir``, each node's first process builds the same cache; ``datasets``
writes cache files to a temporary name and renames them, so this is redundant work, never a torn file.

Where the tokenizer comes from (one way): the LightningModule owns it. When the Trainer runs,
the DataModule calls :meth:`connect` itself with ``trainer.lightning_module.tokenizer`` and its
``max_input_length``; without a Trainer (a notebook, a test) call ``connect`` yourself first.

Batches follow the Seq2SeqModule contract: ``{"input_ids", "attention_mask", "labels"}`` padded
to the longest row of the batch (labels with -100, ignored by the loss), plus the rows' ``doc_id``
and ``task`` (ids travel in the batch; the sample-logging callback shows them).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_modules.seq2seq import encode_targets
from retrieval.io import InputError, iter_jsonl, require_field

# Fast tokenizers use a Rust thread pool; after DataLoader workers fork it deadlocks. Tokenising happens
# in ``datasets.map`` in the main process, so the workers never need it: switch it off unless the user chose.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABEL_PAD_ID = -100
"""Label id that ``F.cross_entropy(ignore_index=-100)`` in Seq2SeqModule.loss skips."""
CACHE_FORMAT = 1
"""Bump when the tokenised columns change meaning, so old caches are not reused."""
SPLIT_HINT = "the filter stage writes selfinstruct/{train,val}.jsonl with doc_id, task, instruction and target"


def check_selfinstruct_file(path: str | os.PathLike) -> int:
    """Check every record of a self-instruct JSONL file; return how many there are.

    Each line needs non-empty string ``doc_id``, ``task``, ``instruction`` and ``target`` (an empty
    target would teach the model to stop at once); ``sample_idx``, when present, is an integer.
    A missing or empty file is an error naming the file.
    """
    count = 0
    for line, record in iter_jsonl(path):
        for field in ("doc_id", "task", "instruction", "target"):
            require_field(record, field, path, line)
        sample_idx = record.get("sample_idx")
        if sample_idx is not None and (isinstance(sample_idx, bool) or not isinstance(sample_idx, int)):
            raise InputError(f"expected int, got {type(sample_idx).__name__}", path=path, line=line,
                             field="sample_idx")
        count += 1
    if count == 0:
        raise InputError("no records: the split is empty", path=path,
                         hint=f"{SPLIT_HINT}; an empty split usually means the filter kept too little")
    return count


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of what decides the token ids: vocabulary, normaliser, pre-tokeniser, special tokens.

    ``datasets`` would hash the tokenizer object by pickling it, but a fast tokenizer's pickled state
    changes once it has been called with truncation or padding, which would miss the cache every run.
    """
    if hasattr(tokenizer, "backend_tokenizer"):
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:  # a pure-Python tokenizer: its vocabulary and settings
        state = {"vocab": sorted(tokenizer.get_vocab().items()), "init": repr(sorted(tokenizer.init_kwargs))}
    payload = {"class": type(tokenizer).__name__, "state": state,
               "special": {key: str(value) for key, value in sorted(tokenizer.special_tokens_map.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class _Tokenise:
    """The ``datasets.map`` function: instruction -> input ids, target -> label ids (target tokens then EOS)."""

    def __init__(self, tokenizer: Any, max_input_length: int, max_target_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        inputs = self.tokenizer(batch["instruction"], max_length=self.max_input_length, truncation=True,
                                return_attention_mask=False, return_token_type_ids=False)
        labels = encode_targets(self.tokenizer, batch["target"], self.max_target_length)
        return {"input_ids": inputs["input_ids"], "labels": labels}


class Seq2SeqCollator:
    """Pad a list of tokenised rows into one batch: inputs with the tokenizer's PAD, labels with -100."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        input_width = max(len(row["input_ids"]) for row in rows)
        label_width = max(len(row["labels"]) for row in rows)
        input_ids = torch.full((len(rows), input_width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), input_width), dtype=torch.long)
        labels = torch.full((len(rows), label_width), LABEL_PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            n, m = len(row["input_ids"]), len(row["labels"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            attention_mask[i, :n] = 1
            labels[i, :m] = torch.as_tensor(row["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "doc_id": [row["doc_id"] for row in rows], "task": [row["task"] for row in rows]}


def per_device_batch_size(batch_size: int, world_size: int, accumulate_grad_batches: int) -> int:
    """Split the global batch (examples per optimizer step) over devices and accumulation steps."""
    parts = world_size * accumulate_grad_batches
    if batch_size % parts:
        raise ValueError(f"data.batch_size={batch_size} is the global batch (examples per optimizer step) and must "
                         f"divide evenly over {world_size} process(es) x {accumulate_grad_batches} accumulation "
                         f"step(s) = {parts}; choose a batch_size that is a multiple of {parts}, or change the "
                         "device count or trainer.accumulate_grad_batches")
    return batch_size // parts


class SelfInstructDataModule(LightningDataModule):
    """Instruction -> target pairs from the filter, tokenised once and cached, in dynamically padded batches."""

    def __init__(self, train_file: str, val_file: str, batch_size: int = 16, max_input_length: int | None = None,
                 max_target_length: int = 64, num_workers: int = 0, cache_dir: str | None = None) -> None:
        """
        Args:
            train_file: the filter's ``selfinstruct/train.jsonl``.
            val_file: the filter's ``selfinstruct/val.jsonl`` (documents disjoint from train).
            batch_size: GLOBAL batch, examples per optimizer step (the paper: 16); each process gets
                ``batch_size / (world_size * accumulate_grad_batches)``, which must be a whole number.
            max_input_length: instruction tokens kept (the end of a long passage is cut); null: the
                model's ``max_input_length``. It may not exceed the model's.
            max_target_length: target tokens kept, EOS included (the default matches decoding.max_new_tokens).
            num_workers: DataLoader worker processes (batches are only padded, so 0-2 suffice).
            cache_dir: where ``datasets`` keeps the arrow and tokenised caches; null: HF_DATASETS_CACHE.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if max_input_length is not None and max_input_length < 1:
            raise ValueError(f"data.max_input_length must be >= 1 or null, got {max_input_length}")
        if max_target_length < 2:
            raise ValueError(f"data.max_target_length must be >= 2 (one token and EOS), got {max_target_length}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()  # plain values only, so checkpoints load with weights_only=True
        self.train_file, self.val_file = str(train_file), str(val_file)
        self.batch_size = batch_size
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.tokenizer: Any = None
        self.datasets: dict[str, Any] = {}
        self.collator: Seq2SeqCollator | None = None

    # ---- the tokenizer --------------------------------------------------------------------------------------
    def connect(self, tokenizer: Any, model_max_input_length: int) -> None:
        """Use ``tokenizer``; inputs are cut to ``max_input_length`` or, when unset, the model's limit."""
        if self.max_input_length is not None and self.max_input_length > model_max_input_length:
            raise ValueError(f"data.max_input_length={self.max_input_length} exceeds the model's max_input_length="
                             f"{model_max_input_length}; lower the first or raise the second")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no PAD token; batches cannot be padded")
        self.tokenizer = tokenizer
        self.input_length = self.max_input_length or model_max_input_length
        self.collator = Seq2SeqCollator(tokenizer.pad_token_id)

    def _connect_from_trainer(self) -> None:
        if self.trainer is None:
            if self.tokenizer is None:
                raise RuntimeError("SelfInstructDataModule has no tokenizer: run it under a Trainer with a module "
                                   "that has .tokenizer and .max_input_length, or call connect(tokenizer, n) first")
            return
        module = self.trainer.lightning_module
        for attribute in ("tokenizer", "max_input_length"):
            if not hasattr(module, attribute):
                raise TypeError(f"SelfInstructDataModule takes its tokenizer from the LightningModule, but "
                                f"{type(module).__name__} has no '{attribute}'; use Seq2SeqModule")
        self.connect(module.tokenizer, module.max_input_length)

    # ---- data -----------------------------------------------------------------------------------------------
    def _load_split(self, path: str) -> Any:
        """Check the file, then read it through the json builder and tokenise it (both cached on disk)."""
        import datasets

        check_selfinstruct_file(path)
        raw = datasets.load_dataset("json", data_files={"records": path}, split="records",
                                    cache_dir=self.cache_dir)
        fingerprint = hashlib.sha256(json.dumps(
            [CACHE_FORMAT, raw._fingerprint, tokenizer_fingerprint(self.tokenizer), self.input_length,
             self.max_target_length]).encode("utf-8")).hexdigest()[:16]
        keep = {"doc_id", "task"}
        return raw.map(_Tokenise(self.tokenizer, self.input_length, self.max_target_length), batched=True,
                       remove_columns=[name for name in raw.column_names if name not in keep],
                       new_fingerprint=fingerprint, desc=f"tokenising {Path(path).name}")

    def prepare_data(self) -> None:
        """One process per node: check both files and build the caches the other ranks then read."""
        self._connect_from_trainer()
        for path in (self.train_file, self.val_file):
            self._load_split(path)

    def setup(self, stage: str) -> None:
        self._connect_from_trainer()
        needed = {"fit": ("train", "val"), "validate": ("val",)}.get(stage)
        if needed is None:
            raise ValueError(f"SelfInstructDataModule serves fit and validate, not '{stage}'")
        for split in needed:
            if split not in self.datasets:
                self.datasets[split] = self._load_split(self.train_file if split == "train" else self.val_file)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        self.device_batch_size = per_device_batch_size(self.batch_size, world_size, accumulate)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not loaded; call setup('fit') first")
        return DataLoader(self.datasets[split], batch_size=self.device_batch_size, shuffle=shuffle,
                          collate_fn=self.collator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)  # under DDP Lightning swaps in a seeded DistributedSampler

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
