"""The self-instruct training set: the filter's kept records, split by document, as padded training batches.

The split (the design card's): the kept synthetic texts (``synthetic/stage1.kept.jsonl``) become
(instruction, target) pairs, where the instruction is the task's prompt rendered on the document and the
target the kept text; documents are split into train and val with a seed, so no document's pairs are in
both. The split is written to ``split_dir/{train,val}.jsonl`` (with ``split.json``, its counts) for
inspection, and read back from there, rewritten only when it changes.

Why ``datasets``: tokenising tens of thousands of long instructions takes a while, and every rank
of every epoch of every resumed run needs the same token ids. The json builder stores each split file as
arrow and ``map`` stores the tokenised columns under a fingerprint of (file, tokenizer, encoding,
lengths), so a rerun or a resumed run reads them back. Under DDP, Lightning runs
:meth:`SelfInstructDataModule.prepare_data` on one process per node first (it writes the split and builds
the cache) and :meth:`~SelfInstructDataModule.setup` on every rank afterwards (cache readers). When several
nodes share ``cache_dir``, each node's first process builds the same cache; ``datasets`` writes cache files
to a temporary name and renames them, so this is redundant work, never a torn file.

Where tokenising and padding come from (one way): the generator (:class:`GeneratorModule`) owns them.
Under a Trainer the DataModule calls :meth:`connect` with ``trainer.lightning_module``; without one (a
notebook, a test) call ``connect(module)`` yourself first.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from core.fingerprint import plain, stable_hash
from core.io import InputError, atomic_open, jsonl_bytes, write_json_atomic
from core.paper import PAPER_TUNING
from datamodules.beir import content_name
from datamodules.downsample import DataConfig, load_dataset_from_config
from datamodules.prompts import PromptTemplates
from lightning_modules.generator import ExampleCollator, GeneratorModule
from lightning_modules.loading import tokenizer_fingerprint
from retrieval.synthetic import SyntheticRecord, read_synthetic

CACHE_FORMAT = 2
"""Bump when the tokenised columns change meaning, so old caches are not reused."""
SPLITS = ("train", "val")
SPLIT_SUMMARY = "split.json"


def split_documents(doc_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """A seeded split of documents into (train, val); the same ids and seed always give the same split."""
    docs = sorted(set(doc_ids))
    random.Random(seed).shuffle(docs)
    n_val = max(1, round(val_fraction * len(docs)))
    return set(docs[n_val:]), set(docs[:n_val])


def selfinstruct_pairs(records: Sequence[SyntheticRecord], corpus: dict[str, Any], templates: PromptTemplates,
                       docs: set[str]) -> list[dict[str, Any]]:
    """``{"doc_id", "task", "sample_idx", "instruction", "target"}`` for the records of ``docs``, in record order."""
    rows = []
    for r in records:
        if r.doc_id in docs:
            doc = corpus[r.doc_id]
            rows.append({"doc_id": r.doc_id, "task": r.task, "sample_idx": r.sample_idx,
                         "instruction": templates.render(r.task, doc.title, doc.text), "target": r.text})
    return rows


def write_split(kept_file: Path, corpus: dict[str, Any], templates: PromptTemplates, out_dir: Path,
                val_fraction: float, seed: int) -> dict[str, Any]:
    """Write ``out_dir/{train,val}.jsonl`` from the kept records (files whose contents change only) and
    ``out_dir/split.json``; return the summary."""
    records = read_synthetic(kept_file, corpus)
    for record in records:
        if not record.text.strip():  # an empty target would teach the model to stop at once
            raise InputError(f"document '{record.doc_id}', task '{record.task}', sample {record.sample_idx}: empty "
                             "text", path=kept_file, field="text", hint="the filter's empty rule drops these")
    documents = {r.doc_id for r in records}
    if len(documents) < 2:
        raise InputError(f"only {len(documents)} document(s) have kept records ({len(records)} records); the "
                         "self-instruct split needs at least 2 so that train and val are both non-empty",
                         path=kept_file, hint="loosen the filter (filter_report.json counts what each rule "
                                              "dropped), or generate for more documents")
    train_docs, val_docs = split_documents([r.doc_id for r in records], val_fraction, seed)
    summary: dict[str, Any] = {"kept_file": str(kept_file), "val_fraction": val_fraction, "seed": seed}
    for name, docs in zip(SPLITS, (train_docs, val_docs)):
        rows = selfinstruct_pairs(records, corpus, templates, docs)
        path, data = out_dir / f"{name}.jsonl", jsonl_bytes(rows)
        if not path.is_file() or path.read_bytes() != data:  # an unchanged file keeps its arrow cache
            with atomic_open(path, "wb") as handle:
                handle.write(data)
        summary[name] = {"records": len(rows), "documents": len(docs),
                         "per_task": dict(Counter(row["task"] for row in rows))}
    write_json_atomic(out_dir / SPLIT_SUMMARY, summary)
    return summary


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
    """Instruction -> target pairs from the filter's kept records, split by document, tokenised once and cached."""

    def __init__(self, kept_file: str, dataset: DataConfig, prompts: PromptTemplates = PromptTemplates(),
                 val_fraction: float = 0.1, split_seed: int = 0, split_dir: str | None = None,
                 batch_size: int = PAPER_TUNING.batch_size, max_input_length: int | None = None,
                 max_target_length: int = 64, num_workers: int = 0, cache_dir: str | None = None) -> None:
        """
        Args:
            kept_file: the synthetic records the filter kept (``synthetic/stage1.kept.jsonl``).
            dataset: the BEIR folder (and downsampling) the records were made for: titles and texts.
            prompts: the instruction per task, rendered on each document.
            val_fraction: share of documents held out for validation.
            split_seed: seed of the document split.
            split_dir: where ``train.jsonl``, ``val.jsonl`` and ``split.json`` go; null:
                ``<trainer.default_root_dir>/selfinstruct``.
            batch_size: GLOBAL batch, examples per optimizer step (the paper's: ``core.paper.PAPER_TUNING``);
                each process gets ``batch_size / (world_size * accumulate_grad_batches)``, a whole number.
            max_input_length: instruction tokens kept (the end of a long passage is cut); null: the
                model's ``max_input_length``. It may not exceed the model's.
            max_target_length: target tokens kept, EOS included (the default matches decoding.max_new_tokens).
            num_workers: DataLoader worker processes (batches are only padded, so 0-2 suffice).
            cache_dir: where ``datasets`` keeps the arrow and tokenised caches; null: HF_DATASETS_CACHE.
        """
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if max_input_length is not None and max_input_length < 1:
            raise ValueError(f"data.max_input_length must be >= 1 or null, got {max_input_length}")
        if max_target_length < 2:
            raise ValueError(f"data.max_target_length must be >= 2 (one token and EOS), got {max_target_length}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        # plain values only, so checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["dataset", "prompts"])
        self.hparams.update(dataset=plain(dataset), prompts=asdict(prompts))
        self.kept_file = Path(kept_file)
        self.dataset = dataset
        self.prompts = prompts
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.split_dir = Path(split_dir) if split_dir is not None else None
        self.batch_size = batch_size
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.generator: GeneratorModule | None = None
        self.datasets: dict[str, Any] = {}
        self.collator: ExampleCollator | None = None

    # ---- the generator --------------------------------------------------------------------------------------
    def connect(self, generator: GeneratorModule) -> None:
        """Tokenise and pad as ``generator`` does; inputs are cut to ``max_input_length`` or the model's limit."""
        if not isinstance(generator, GeneratorModule):
            raise TypeError(f"SelfInstructDataModule tokenises with a GeneratorModule, got {type(generator).__name__}")
        if self.max_input_length is not None and self.max_input_length > generator.max_input_length:
            raise ValueError(f"data.max_input_length={self.max_input_length} exceeds the model's max_input_length="
                             f"{generator.max_input_length}; lower the first or raise the second")
        self.generator = generator
        self.input_length = self.max_input_length or generator.max_input_length
        self.collator = generator.example_collator()

    def _connect_from_trainer(self) -> None:
        if self.trainer is not None:
            self.connect(self.trainer.lightning_module)
        elif self.generator is None:
            raise RuntimeError("SelfInstructDataModule has no generator: run it under a Trainer with a "
                               "GeneratorModule, or call connect(module) first")

    def split_folder(self) -> Path:
        if self.split_dir is not None:
            return self.split_dir
        if self.trainer is None:
            raise RuntimeError("SelfInstructDataModule: set split_dir (no Trainer gives a default_root_dir)")
        return Path(self.trainer.default_root_dir) / "selfinstruct"

    # ---- data -----------------------------------------------------------------------------------------------
    def write_split(self) -> dict[str, Any]:
        """Build the document split from the kept records and write it to :meth:`split_folder`."""
        corpus = load_dataset_from_config(self.dataset).corpus
        return write_split(self.kept_file, corpus, self.prompts, self.split_folder(), self.val_fraction,
                           self.split_seed)

    def _load_split(self, name: str) -> Any:
        """Read one written split through the json builder and tokenise it (both cached on disk)."""
        path = str(self.split_folder() / f"{name}.jsonl")
        raw = datasets.load_dataset("json", data_files={"records": path}, split="records",
                                    name=content_name(Path(path)), cache_dir=self.cache_dir)
        fingerprint = stable_hash([CACHE_FORMAT, raw._fingerprint, self.generator.example_format,
                                   tokenizer_fingerprint(self.generator.tokenizer), self.input_length,
                                   self.max_target_length])
        keep = {"doc_id", "task"}
        return raw.map(self.generator.example_encoder(self.input_length, self.max_target_length), batched=True,
                       remove_columns=[column for column in raw.column_names if column not in keep],
                       new_fingerprint=fingerprint, desc=f"tokenising {name}.jsonl")

    def prepare_data(self) -> None:
        """One process per node: write the split and build the caches the other ranks then read."""
        self._connect_from_trainer()
        self.write_split()
        for name in SPLITS:
            self._load_split(name)

    def setup(self, stage: str) -> None:
        self._connect_from_trainer()
        needed = {"fit": SPLITS, "validate": ("val",)}.get(stage)
        if needed is None:
            raise ValueError(f"SelfInstructDataModule serves fit and validate, not '{stage}'")
        for name in needed:
            if name not in self.datasets:
                self.datasets[name] = self._load_split(name)
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
