"""The one seq2seq LightningModule: it writes synthetic questions/keywords and is instruction-tuned.

Why one module: the paper generates with a model (stage 1), tunes that same model on its own
filtered outputs, and generates again (stage 2). Generation (``predict_step``) and teacher-forced
training (``training_step``) therefore share loading, tokenizer, input length and saving, and a
model saved by :meth:`Seq2SeqModule.save_pretrained` after tuning is loaded back unchanged for stage 2.

Batch contracts (the DataModules build these; ids travel inside the batch, see ARCHITECTURE.md):

* predict: ``{"input_ids", "attention_mask", "doc_id": list[str], "task": list[str]}``, one row per
  prompt; returns ``num_samples`` records per row: ``{"doc_id", "task", "sample_idx", "text", "model"}``.
* fit/validate: ``{"input_ids", "attention_mask", "labels"}``, labels padded with -100 and built by
  :func:`encode_targets` (target tokens then EOS, no BOS/CLS: the model prepends its start token).

Inputs come from :func:`encode_inputs` (truncated to ``max_input_length``); a longer batch is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from transformers import (Adafactor, AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          EncoderDecoderModel, PreTrainedModel, PreTrainedTokenizerBase)
from transformers.modeling_outputs import BaseModelOutput

from lightning_modules.decoding import DecodingConfig, document_seed, generation_config, sampling_processors
from lightning_modules.encoder import resolve_encoder_source
from lightning_modules.loading import (SAFE_WEIGHT_FILES, load_pretrained, load_tokenizer, quiet_transformers,
                                       resolve_model_source)
from lightning_modules.shared_encoder import project_once_per_prompt

# Model families whose activations overflow fp16 (T5's feed-forward outputs exceed 65504): bf16 or fp32 only.
FP16_UNSAFE_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})
PREDICT_KEYS = ("input_ids", "attention_mask", "doc_id", "task")
TRAIN_KEYS = ("input_ids", "attention_mask", "labels")


def encode_inputs(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise prompts for the encoder: truncated to ``max_length`` tokens, padded to the longest."""
    encoded = tokenizer(prompts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def target_eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends a target: EOS (T5 ``</s>``) or, for BERT-style tokenizers, SEP."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither an EOS nor a SEP token to end targets")
    return eos


def encode_targets(tokenizer: PreTrainedTokenizerBase, targets: list[str], max_length: int) -> list[list[int]]:
    """Label ids for teacher forcing: the target's tokens (at most ``max_length - 1``) then EOS.

    No BOS/CLS: the model shifts labels right behind its own ``decoder_start_token_id``.
    """
    eos = target_eos_id(tokenizer)
    encoded = tokenizer(targets, add_special_tokens=False, max_length=max_length - 1, truncation=True)
    return [ids + [eos] for ids in encoded["input_ids"]]


def _model_types(config: Any) -> set[str]:
    types = {getattr(config, "model_type", "")}
    for part in ("encoder", "decoder"):
        sub = getattr(config, part, None)
        if sub is not None and hasattr(sub, "model_type"):
            types.add(sub.model_type)
    return types


def warm_start_encoder_decoder(encoder_path: str, tokenizer: PreTrainedTokenizerBase, *,
                               trust_remote_code: bool = False, allow_pickle_weights: bool = False,
                               decoder_layers: int | None = None) -> PreTrainedModel:
    """A BERT2BERT-style ``EncoderDecoderModel``: encoder and decoder both initialised from ``encoder_path``.

    The encoder is exactly the checkpoint (its embeddings are unchanged); the decoder copies its weights
    (its first ``decoder_layers`` layers when set: a shallower decoder trains and generates faster),
    becomes causal and gains randomly initialised cross-attention. Special ids follow BERT: generation
    starts at CLS, stops at SEP, pads with PAD.
    """
    start, eos, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if start is None or eos is None or pad is None:
        raise ValueError(f"warm start from '{encoder_path}' needs a tokenizer with CLS, SEP and PAD tokens "
                         f"(got cls={start}, sep={eos}, pad={pad}); pass tokenizer_name_or_path")
    options = {"trust_remote_code": trust_remote_code, "allow_pickle_weights": allow_pickle_weights}
    encoder = load_pretrained(AutoModel, encoder_path, **options)
    if getattr(encoder, "pooler", None) is not None:  # BERT's pooler never feeds the decoder: a trainable unused
        encoder.pooler.requires_grad_(False)           # weight would stall DDP (its gradient never arrives); kept
                                                       # (frozen) so the saved model reloads with every weight
    decoder_config = AutoConfig.from_pretrained(resolve_model_source(encoder_path),
                                                trust_remote_code=trust_remote_code)
    decoder_config.is_decoder = True
    decoder_config.add_cross_attention = True
    if decoder_layers is not None:
        if not 1 <= decoder_layers <= decoder_config.num_hidden_layers:
            raise ValueError(f"decoder_layers must lie in [1, {decoder_config.num_hidden_layers}] (the layers of "
                             f"'{encoder_path}'), got {decoder_layers}")
        decoder_config.num_hidden_layers = decoder_layers
    with quiet_transformers():  # the report lists the cross-attention we add on purpose
        decoder = load_pretrained(AutoModelForCausalLM, encoder_path, config=decoder_config, **options)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = start
    model.config.eos_token_id = eos
    model.config.pad_token_id = pad
    model.config.vocab_size = model.config.decoder.vocab_size
    model.generation_config.decoder_start_token_id = start
    model.generation_config.bos_token_id = start
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def _replace_directory(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` onto ``target``; an old ``target`` is removed only afterwards."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


class Seq2SeqModule(LightningModule):
    """Any ``AutoModelForSeq2SeqLM`` (hub name or local path) or an encoder-decoder warm-started from an encoder."""

    def __init__(self, model_name_or_path: str | None = None, tokenizer_name_or_path: str | None = None,
                 warm_start_encoder: str | None = None, decoding: DecodingConfig = DecodingConfig(),
                 max_input_length: int = 512, learning_rate: float = 1e-4,
                 optimizer: Literal["adafactor", "adamw"] = "adafactor", weight_decay: float = 0.0,
                 freeze_encoder: bool = False, trust_remote_code: bool = False,
                 allow_pickle_weights: bool = False, model_label: str | None = None,
                 decoder_layers: int | None = None) -> None:
        """
        Args:
            model_name_or_path: a seq2seq model (hub name, e.g. google/flan-t5-base, or a local folder).
            tokenizer_name_or_path: where the tokenizer lives when not beside the model.
            warm_start_encoder: build an EncoderDecoderModel from this encoder checkpoint instead (offline
                profile: all-MiniLM-L6-v2); then model_name_or_path must be unset.
            decoding: sampling / beam / greedy settings for predict_step (a dict, as checkpoints store it, works too).
            max_input_length: longest input in tokens (prompts are truncated to it).
            learning_rate: optimizer learning rate (the paper: 1e-4).
            optimizer: ``adafactor`` (transformers' Adafactor with a fixed rate) or ``adamw``.
            weight_decay: decoupled weight decay for either optimizer.
            freeze_encoder: keep the encoder (and, in T5, the embeddings it shares) fixed while the decoder learns.
            trust_remote_code: allow model code from the checkpoint folder (off by default).
            allow_pickle_weights: accept pickled ``.bin`` weights (off: safetensors only).
            model_label: the ``model`` field of generated records (default: the model's name or path).
            decoder_layers: warm start only: keep the first this many layers in the decoder (default: all).
        """
        super().__init__()
        if (model_name_or_path is None) == (warm_start_encoder is None):
            raise ValueError("set exactly one of model_name_or_path (a seq2seq model) and warm_start_encoder (an "
                             f"encoder checkpoint to warm-start from); got model_name_or_path={model_name_or_path!r}, "
                             f"warm_start_encoder={warm_start_encoder!r}")
        if optimizer not in ("adafactor", "adamw"):
            raise ValueError(f"optimizer must be 'adafactor' or 'adamw', got '{optimizer}'")
        if decoder_layers is not None and warm_start_encoder is None:
            raise ValueError("decoder_layers applies to a warm start (warm_start_encoder); a pretrained seq2seq "
                             "model keeps its own decoder")
        if max_input_length < 1:
            raise ValueError(f"max_input_length must be >= 1, got {max_input_length}")
        if isinstance(decoding, dict):  # as stored in checkpoints (see below)
            decoding = DecodingConfig(**decoding)
        self.decoding = replace(decoding)  # a private copy: the default instance is shared between calls
        # Hyperparameters hold plain values only, so checkpoints load under torch.load(weights_only=True)
        # (the default since torch 2.6), which refuses pickled classes such as DecodingConfig.
        self.save_hyperparameters(ignore=["decoding"])
        self.hparams["decoding"] = asdict(self.decoding)
        self.max_input_length = max_input_length
        source = model_name_or_path or warm_start_encoder
        self.model_label = model_label or str(model_name_or_path or f"warm-start:{warm_start_encoder}")
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or source, trust_remote_code=trust_remote_code)
        if warm_start_encoder is not None:
            self.model = warm_start_encoder_decoder(warm_start_encoder, self.tokenizer,
                                                    trust_remote_code=trust_remote_code,
                                                    allow_pickle_weights=allow_pickle_weights,
                                                    decoder_layers=decoder_layers)
            # the encoder's sentence-transformers truncation (MiniLM: 256 tokens) travels with the saved tokenizer,
            # so the tuned model's encoder embeds documents exactly as the encoder it started from
            limit = resolve_encoder_source(resolve_model_source(warm_start_encoder)).max_seq_length
            if limit:
                self.tokenizer.model_max_length = int(limit)
        else:
            self.model = load_pretrained(AutoModelForSeq2SeqLM, model_name_or_path,
                                         trust_remote_code=trust_remote_code,
                                         allow_pickle_weights=allow_pickle_weights, require_all_weights=True)
        self.model.train()  # from_pretrained returns eval mode, and Lightning 2.x keeps a module's mode in fit
        if freeze_encoder:
            self.model.get_encoder().requires_grad_(False)

    # ---- checks -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse fp16 for T5-family models before any step runs (they overflow to inf/NaN)."""
        precision = str(self.trainer.precision)
        unsafe = _model_types(self.model.config) & FP16_UNSAFE_MODEL_TYPES
        if precision.startswith("16") and unsafe:
            raise ValueError(f"precision '{precision}' is not supported for {'/'.join(sorted(unsafe))} models: T5 "
                             "activations overflow float16 and give NaN losses and empty generations. Use "
                             "precision 'bf16-mixed' on GPUs that support it, or '32-true'.")

    def _check_batch(self, batch: dict[str, Any], keys: tuple[str, ...]) -> None:
        missing = [key for key in keys if key not in batch]
        if missing:
            raise KeyError(f"batch lacks {', '.join(missing)}; Seq2SeqModule expects {', '.join(keys)}")
        length = batch["input_ids"].shape[-1]
        if length > self.max_input_length:
            raise ValueError(f"batch inputs are {length} tokens but max_input_length is {self.max_input_length}; "
                             "the DataModule must truncate to the model's max_input_length (encode_inputs does)")

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced token cross-entropy, mean over label tokens (label -100 is ignored)."""
        self._check_batch(batch, TRAIN_KEYS)
        labels = batch["labels"]
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=decoder_input_ids).logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)

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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """transformers' ``Adafactor`` (not ``torch.optim.Adafactor``, a different algorithm) with a fixed rate.

        ``scale_parameter=False, relative_step=False, warmup_init=False`` make it use ``learning_rate`` as
        given, as the paper's fixed 1e-4 requires. Frozen parameters are left out.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        hp = self.hparams
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        return Adafactor(params, lr=hp.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=hp.weight_decay)

    # ---- generation ---------------------------------------------------------------------------------------
    def generate_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, doc_ids: list[str],
                       tasks: list[str]) -> list[list[str]]:
        """``num_samples`` decoded texts per prompt row, special tokens stripped.

        Sampling: the encoder runs once per prompt; its output is repeated for the samples, each row with its
        own seed from :func:`document_seed`, so results do not depend on the batch; the decoder projects it to
        cross-attention keys and values once per prompt too (:func:`project_once_per_prompt`).
        """
        config = self.decoding
        samples = config.num_samples
        settings = generation_config(config, self.model.generation_config)
        extra: dict[str, Any] = {}
        shared = contextlib.nullcontext()
        with torch.inference_mode():
            if config.strategy == "sample":
                seeds = torch.tensor([document_seed(config.seed, doc_id, task, index)
                                      for doc_id, task in zip(doc_ids, tasks) for index in range(samples)],
                                     dtype=torch.int64, device=input_ids.device)
                encoded = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask,
                                                   return_dict=True)
                hidden = encoded.last_hidden_state.repeat_interleave(samples, dim=0)
                input_ids = input_ids.repeat_interleave(samples, dim=0)
                attention_mask = attention_mask.repeat_interleave(samples, dim=0)
                extra = {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden),
                         "logits_processor": sampling_processors(config, seeds)}
                if samples > 1:
                    shared = project_once_per_prompt(self.model.get_decoder(), hidden, encoded.last_hidden_state,
                                                     samples)
            with shared:
                sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                                generation_config=settings, **extra)
        texts = [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]
        if len(texts) != len(doc_ids) * samples:
            raise RuntimeError(f"generate returned {len(texts)} sequences for {len(doc_ids)} prompts x {samples}")
        return [texts[row * samples:(row + 1) * samples] for row in range(len(doc_ids))]

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Records ``{"doc_id", "task", "sample_idx", "text", "model"}`` (the writer adds ``stage``)."""
        self._check_batch(batch, PREDICT_KEYS)
        doc_ids, tasks = list(batch["doc_id"]), list(batch["task"])
        rows = batch["input_ids"].shape[0]
        if not len(doc_ids) == len(tasks) == rows:
            raise ValueError(f"batch has {rows} prompts but {len(doc_ids)} doc_ids and {len(tasks)} tasks")
        texts = self.generate_texts(batch["input_ids"], batch["attention_mask"], doc_ids, tasks)
        return [{"doc_id": doc_id, "task": task, "sample_idx": index, "text": text, "model": self.model_label}
                for doc_id, task, outputs in zip(doc_ids, tasks, texts) for index, text in enumerate(outputs)]

    # ---- saving -------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Model (safetensors), generation config and tokenizer in one folder, written atomically.

        The folder is built beside ``path`` and renamed onto it, so a crash leaves the previous model intact.
        It loads back with ``Seq2SeqModule(model_name_or_path=path)`` (and ``AutoModelForSeq2SeqLM``).
        Under DDP only global rank zero writes; the other ranks return at once.
        """
        path = Path(path)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            if not any((staging / name).is_file() for name in SAFE_WEIGHT_FILES):
                raise RuntimeError(f"save_pretrained wrote no safetensors weights into {staging}")
            _replace_directory(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path
