"""The paper's generator: an encoder-decoder (FLAN-T5, or a warm-started BERT2BERT) as a :class:`GeneratorModule`.

Why one module: the paper generates with a model (stage 1), tunes that same model on its own
filtered outputs, and generates again (stage 2). Generation and teacher-forced training therefore
share loading, tokenizer, input length and saving, and a model saved by
:meth:`Seq2SeqModule.save_pretrained` after tuning is loaded back unchanged for stage 2.

Encoding: prompts and instructions go to the encoder as they are (:func:`encode_inputs`, right-padded,
truncated to ``max_input_length``; a longer batch is refused); labels are the target's tokens then EOS
(:func:`encode_targets`, no BOS/CLS: the model prepends its own decoder start token), padded with -100.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          EncoderDecoderModel, PreTrainedModel, PreTrainedTokenizerBase)
from transformers.modeling_outputs import BaseModelOutput

from core.paper import PAPER_TUNING
from lightning_modules.decoding import DecodingConfig, document_seed, generation_config, sampling_processors
from lightning_modules.encoder import resolve_encoder_source
from lightning_modules.generator import LABEL_PAD_ID, GeneratorModule, ModelSource
from lightning_modules.loading import (SAFE_WEIGHT_FILES, load_pretrained, load_tokenizer, quiet_transformers,
                                       resolve_model_source)
from lightning_modules.shared_encoder import project_once_per_prompt

# Model families whose activations overflow fp16 (T5's feed-forward outputs exceed 65504): bf16 or fp32 only.
FP16_UNSAFE_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})
TRAIN_KEYS = ("input_ids", "attention_mask", "labels")
TUNED_AWAY = ("model_name_or_path", "warm_start_encoder", "decoder_layers", "tokenizer_name_or_path")
"""How the untuned model was built: a tuned folder holds the model and its tokenizer, so these no longer apply."""


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


class PromptEncoder:
    """:func:`encode_inputs` with the tokenizer and length bound (picklable for DataLoader workers)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return encode_inputs(self.tokenizer, prompts, self.max_length)


class ExampleEncoder:
    """The ``datasets.map`` function: instruction -> input ids, target -> label ids (target tokens then EOS)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_input_length: int, max_target_length: int) -> None:
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


class Seq2SeqModule(GeneratorModule):
    """Any ``AutoModelForSeq2SeqLM`` (hub name or local path) or an encoder-decoder warm-started from an encoder."""

    identity_args: ClassVar[tuple[str, ...]] = ("model_name_or_path", "warm_start_encoder", "tokenizer_name_or_path",
                                                "decoder_layers")
    example_format: ClassVar[str] = "seq2seq-1"

    def __init__(self, model_name_or_path: str | None = None, tokenizer_name_or_path: str | None = None,
                 warm_start_encoder: str | None = None, decoding: DecodingConfig = DecodingConfig(),
                 max_input_length: int = 512, learning_rate: float = PAPER_TUNING.learning_rate,
                 optimizer: Literal["adafactor", "adamw"] = PAPER_TUNING.optimizer, weight_decay: float = 0.0,
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
            learning_rate: optimizer learning rate (the paper's: ``core.paper.PAPER_TUNING``).
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

    # ---- what a configuration names ------------------------------------------------------------------------
    @classmethod
    def model_sources(cls, init_args: Mapping[str, Any]) -> list[ModelSource]:
        return [ModelSource(key, str(init_args[key]), weights=key != "tokenizer_name_or_path")
                for key in ("model_name_or_path", "warm_start_encoder", "tokenizer_name_or_path") if init_args.get(key)]

    @classmethod
    def encoder_source(cls, init_args: Mapping[str, Any]) -> ModelSource | None:
        """The warm-start checkpoint, or the seq2seq checkpoint itself (its encoder half embeds)."""
        key = "warm_start_encoder" if init_args.get("warm_start_encoder") else "model_name_or_path"
        if not init_args.get(key):
            raise ValueError("model: set model_name_or_path or warm_start_encoder")
        return ModelSource(key, str(init_args[key]))

    @classmethod
    def from_tuned(cls, path: str | os.PathLike, init_args: Mapping[str, Any]) -> Seq2SeqModule:
        kept = {key: value for key, value in init_args.items() if key not in TUNED_AWAY}
        return cls(**{**kept, "model_name_or_path": str(path)})

    # ---- inputs -------------------------------------------------------------------------------------------
    def prompt_encoder(self, max_length: int) -> PromptEncoder:
        return PromptEncoder(self.tokenizer, max_length)

    def example_encoder(self, max_input_length: int, max_target_length: int) -> ExampleEncoder:
        return ExampleEncoder(self.tokenizer, max_input_length, max_target_length)

    def example_collator(self) -> Seq2SeqCollator:
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {type(self.tokenizer).__name__} has no PAD token; batches cannot be padded")
        return Seq2SeqCollator(self.tokenizer.pad_token_id)

    def prompt_part(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

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

    # ---- generation ---------------------------------------------------------------------------------------
    def generate_texts(self, batch: Mapping[str, Any], doc_ids: list[str], tasks: list[str]) -> list[list[str]]:
        """``num_samples`` decoded texts per prompt row, special tokens stripped.

        Sampling: the encoder runs once per prompt; its output is repeated for the samples, each row with its
        own seed from :func:`document_seed`, so results do not depend on the batch; the decoder projects it to
        cross-attention keys and values once per prompt too (:func:`project_once_per_prompt`).
        """
        self._check_batch(batch, ("input_ids", "attention_mask"))
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
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

    # ---- saving -------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Model (safetensors), generation config and tokenizer in one folder, written atomically.

        The folder is built beside ``path`` and renamed onto it, so a crash leaves the previous model intact.
        It loads back with ``Seq2SeqModule(model_name_or_path=path)`` (and ``AutoModelForSeq2SeqLM``).
        Under DDP only global rank zero writes; the other ranks return at once.
        """
        def write(staging: Path) -> None:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            if not any((staging / name).is_file() for name in SAFE_WEIGHT_FILES):
                raise RuntimeError(f"save_pretrained wrote no safetensors weights into {staging}")
        return self.write_folder(path, write)
