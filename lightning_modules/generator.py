"""What the pipeline, the DataModules and the fit CLI ask of a generator: the ``GeneratorModule`` interface.

Why an interface: the method writes synthetic texts with a model (stage 1), instruction-tunes that model
(fit) and writes again with the tuned one (stage 2). The paper's model is an encoder-decoder
(:class:`lightning_modules.seq2seq.Seq2SeqModule`); a decoder-only LLM (chat template, left padding, loss on
the target tokens only, LoRA adapters) differs in how it tokenises, pads, computes the loss, saves and
reloads, not in what the stages do with it. So everything model-specific is a member here, and a new kind
of generator is one file implementing it, chosen in a profile by ``model.class_path``.

Batch contracts (ids travel inside the batch, see docs/architecture.md):

* predict: what :meth:`prompt_encoder` returns (``input_ids``, ``attention_mask``, ...) plus ``doc_id``
  and ``task`` lists, one row per prompt; :meth:`predict_step` returns ``num_samples`` records per row:
  ``{"doc_id", "task", "sample_idx", "text", "model"}``;
* fit/validate: what :meth:`example_collator` builds from :meth:`example_encoder`'s rows (``input_ids``,
  ``attention_mask``, ``labels`` with :data:`LABEL_PAD_ID` where no loss is taken), plus ``doc_id``/``task``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from transformers import Adafactor

from core.fingerprint import chunks_hash
from lightning_modules.decoding import DecodingConfig
from lightning_modules.loading import tokenizer_fingerprint

LABEL_PAD_ID = -100
"""Label id that ``F.cross_entropy(ignore_index=-100)`` skips: padding, and a prompt's tokens in a causal LM."""

PromptEncoder = Callable[[list[str]], dict[str, torch.Tensor]]
"""Prompts -> a generation batch (padded the generator's way). Picklable: DataLoader workers call it."""
ExampleEncoder = Callable[[dict[str, list[Any]]], dict[str, list[list[int]]]]
"""``{"instruction": [...], "target": [...]}`` -> ``{"input_ids": [...], "labels": [...]}`` per row
(``datasets.map(batched=True)`` calls it; its result is cached under :attr:`GeneratorModule.example_format`)."""
ExampleCollator = Callable[[list[dict[str, Any]]], dict[str, Any]]
"""Tokenised rows (with ``doc_id``, ``task``) -> one padded training batch."""


@dataclass(frozen=True)
class ModelSource:
    """A model or tokenizer a generator's configuration names: preflight resolves each before a stage runs."""

    key: str  # the init argument, e.g. "model_name_or_path" (reported as model.init_args.<key>)
    source: str  # a local folder or a hub name
    weights: bool = True  # False: a tokenizer only (no weight-format check)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): the same weights, the same hash.

    The weights themselves rather than a path, so a model tuned in memory or re-saved to the same folder
    is told apart. About a second per GB.
    """
    def chunks() -> Iterator[bytes | memoryview]:
        for name, tensor in model.state_dict().items():
            data = tensor.detach().to("cpu").contiguous()
            yield f"{name}:{data.dtype}:{tuple(data.shape)}\0".encode()
            yield data.reshape(-1).view(torch.uint8).numpy().data  # a view: no copy of the weights
    return chunks_hash(chunks())


class GeneratorModule(LightningModule, ABC):
    """A model that writes texts from prompts and is instruction-tuned on (instruction, target) pairs.

    Subclasses set ``tokenizer``, ``max_input_length``, ``decoding``, ``model_label`` and ``model`` (the
    transformers model) in ``__init__`` and implement the abstract members.
    """

    identity_args: ClassVar[tuple[str, ...]] = ()
    """Init arguments that decide which model (architecture, starting weights) a checkpoint holds: resuming
    a checkpoint whose values differ is refused (``pipeline.fit.check_checkpoint_model``)."""
    example_format: ClassVar[str] = ""
    """Names how :meth:`example_encoder` tokenises; part of the tokenised cache's key (bump on a change)."""

    tokenizer: Any
    max_input_length: int
    decoding: DecodingConfig
    model_label: str
    model: torch.nn.Module

    # ---- what a configuration names, before anything is loaded ------------------------------------------
    @classmethod
    @abstractmethod
    def model_sources(cls, init_args: Mapping[str, Any]) -> list[ModelSource]:
        """Every model and tokenizer ``init_args`` loads (preflight checks each one resolves)."""

    @classmethod
    @abstractmethod
    def encoder_source(cls, init_args: Mapping[str, Any]) -> ModelSource | None:
        """The untuned model's text encoder (``embed.encoder: base``, the filter's round trip); None when the
        generator has none (a decoder-only LLM): the profile must then name ``embed.encoder`` and
        ``filter.encoder``. When not None, the tuned model's folder embeds too (``embed.encoder: tuned``)."""

    @classmethod
    @abstractmethod
    def from_tuned(cls, path: str | os.PathLike, init_args: Mapping[str, Any]) -> GeneratorModule:
        """Stage 2's generator: the folder :meth:`save_pretrained` wrote after tuning, with the configured
        arguments that still apply (decoding, input length, label...)."""

    # ---- inputs -------------------------------------------------------------------------------------------
    @abstractmethod
    def prompt_encoder(self, max_length: int) -> PromptEncoder:
        """How prompts become a generation batch, cut to ``max_length`` tokens."""

    @abstractmethod
    def example_encoder(self, max_input_length: int, max_target_length: int) -> ExampleEncoder:
        """How (instruction, target) pairs become training rows."""

    @abstractmethod
    def example_collator(self) -> ExampleCollator:
        """How training rows are padded into a batch."""

    @abstractmethod
    def prompt_part(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prompts of a training batch as a generation batch (``input_ids``, ``attention_mask``): what the
        samples table generates from while tuning."""

    # ---- steps --------------------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean token cross-entropy over the target tokens of a training batch."""

    @abstractmethod
    def generate_texts(self, batch: Mapping[str, Any], doc_ids: list[str], tasks: list[str]) -> list[list[str]]:
        """``decoding.num_samples`` texts per prompt row, seeded per (document, task, sample)."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Records ``{"doc_id", "task", "sample_idx", "text", "model"}`` (the writer adds ``stage``)."""
        missing = [key for key in ("input_ids", "doc_id", "task") if key not in batch]
        if missing:
            raise KeyError(f"batch lacks {', '.join(missing)}; a generation batch holds the prompt encoder's "
                           "tensors plus doc_id and task")
        doc_ids, tasks = list(batch["doc_id"]), list(batch["task"])
        rows = batch["input_ids"].shape[0]
        if not len(doc_ids) == len(tasks) == rows:
            raise ValueError(f"batch has {rows} prompts but {len(doc_ids)} doc_ids and {len(tasks)} tasks")
        texts = self.generate_texts(batch, doc_ids, tasks)
        return [{"doc_id": doc_id, "task": task, "sample_idx": index, "text": text, "model": self.model_label}
                for doc_id, task, outputs in zip(doc_ids, tasks, texts) for index, text in enumerate(outputs)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """transformers' ``Adafactor`` (not ``torch.optim.Adafactor``, a different algorithm) with a fixed rate,
        or AdamW, as the ``optimizer``, ``learning_rate`` and ``weight_decay`` hyperparameters say.

        ``scale_parameter=False, relative_step=False, warmup_init=False`` make it use ``learning_rate`` as
        given, as the paper's fixed 1e-4 requires. Frozen parameters (a frozen encoder, a LoRA base) are left out.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        hp = self.hparams
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        return Adafactor(params, lr=hp.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=hp.weight_decay)

    def set_decoding(self, decoding: DecodingConfig) -> None:
        """Decode with ``decoding`` from now on (stage 1 and stage 2 may differ from the configured one)."""
        self.decoding = replace(decoding)
        self.hparams["decoding"] = asdict(self.decoding)

    # ---- outputs ------------------------------------------------------------------------------------------
    @abstractmethod
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write what :meth:`from_tuned` loads into ``path``, atomically; only global rank zero writes."""

    def write_folder(self, path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
        """``write(staging)`` fills a folder beside ``path`` that is then renamed onto it, so a crash leaves the
        previous model intact (an old ``path`` is removed only afterwards). Under DDP only global rank zero
        writes; the other ranks return at once."""
        path = Path(path)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            write(staging)
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, old / path.name)
            os.replace(staging, path)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path

    def fingerprint(self) -> dict[str, str]:
        """What decides generated texts besides decoding and prompts: the weights and the tokenizer."""
        return {"weights": weights_fingerprint(self.model), "tokenizer": tokenizer_fingerprint(self.tokenizer)}
