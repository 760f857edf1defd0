"""A decoder-only LLM (Qwen2, Llama, Mistral, SmolLM...: ``AutoModelForCausalLM``) as a :class:`GeneratorModule`.

Why its own module: a causal LM sees prompt and answer as one sequence, so it differs from the paper's
encoder-decoder in how it tokenises (the tokenizer's chat template), pads (left, so every row's next token
sits at the same position), computes the loss (on the target tokens only: the prompt's labels are -100),
and what tuning saves (a LoRA adapter, or the whole model). What the stages do with it is the same.

Encoding, one way for generation and for training (:class:`ChatFormat`): the template is rendered once
around a marker and split into the token ids before and after the prompt; a prompt becomes
``prefix + prompt[:budget] + suffix``, so truncation cuts the end of the passage, never the template's
tail that tells the model to answer. A training row appends the target's tokens and the tokenizer's EOS
(for chat models the end-of-turn token), and only those carry labels.

Sampling keeps the project's guarantee (:mod:`lightning_modules.decoding`): every row has its own seed and
its draws are counted from the first generated token (``prompt_width``), not from the padded prompt's
width, so a document gives the same text alone, in any batch, on any number of ranks, after a resume.

Loading: a local folder or hub name (``model_name_or_path``, safetensors only unless allowed, offline: the
project's clear error) or a local GGUF file (``gguf_file``; transformers dequantises it, which needs the
``gguf`` package). ``trust_remote_code`` is never passed: architectures transformers implements only.
LoRA (``lora:``) needs ``peft`` (``pip install .[llm]``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from core.io import InputError
from core.paper import PAPER_TUNING
from lightning_modules.decoding import DecodingConfig, document_seed, generation_config, sampling_processors
from lightning_modules.generator import LABEL_PAD_ID, GeneratorModule, ModelSource
from lightning_modules.loading import (SAFE_WEIGHT_FILES, load_pretrained, load_tokenizer, quiet_transformers,
                                       resolve_gguf)

ADAPTER_CONFIG = "adapter_config.json"
TUNED_FROM = "tuned_from.json"
"""Beside a saved adapter: the base model it was trained on, checked when stage 2 loads base + adapter."""
BASE_KEYS = ("model_name_or_path", "gguf_file", "tokenizer_name_or_path")
MARKER = "\u2063PROMPT\u2063"
"""Stands in for the prompt while the chat template is rendered and split (an invisible separator: no
template or prompt text contains it)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """A LoRA adapter (peft) on the named linear layers; the base weights stay frozen."""

    rank: int = 8
    """Rank ``r`` of the update ``B @ A``."""
    alpha: float = 16.0
    """Scale: the update is multiplied by ``alpha / rank``."""
    dropout: float = 0.05
    """Dropout on the adapter's input while training."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names (suffixes) that get an adapter: attention projections in Qwen2/Llama/Mistral."""

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.target_modules:
            raise ValueError(f"model.init_args.lora needs rank >= 1, alpha > 0, 0 <= dropout < 1 and some "
                             f"target_modules, got {asdict(self)}")


class ChatFormat:
    """Token ids around a prompt: the chat template's (when the tokenizer has one and it is wanted) or a plain
    ``bos + prompt + answer_prefix``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, use_template: bool, system_prompt: str | None,
                 answer_prefix: str) -> None:
        self.templated = bool(use_template and getattr(tokenizer, "chat_template", None))
        if self.templated:
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
                       [{"role": "user", "content": MARKER}]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if rendered.count(MARKER) != 1:
                raise ValueError(f"the chat template of {type(tokenizer).__name__} does not place the user message "
                                 "once; set model.init_args.chat_template: false")
            before, after = rendered.split(MARKER)
        else:
            before, after = "", answer_prefix
        self.prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
        if not self.templated:  # the BOS the tokenizer would add (Llama), which the model was trained behind
            added = tokenizer("a")["input_ids"]
            if added[:1] != tokenizer("a", add_special_tokens=False)["input_ids"][:1] and \
                    added[0] == tokenizer.bos_token_id:
                self.prefix = [tokenizer.bos_token_id, *self.prefix]
        self.suffix = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []

    def encode(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int) -> list[list[int]]:
        """``prefix + prompt + suffix`` per prompt, the prompt cut so that the whole fits ``max_length`` tokens."""
        budget = max_length - len(self.prefix) - len(self.suffix)
        if budget < 1:
            raise ValueError(f"max_input_length={max_length} leaves no room for the prompt: the chat template alone "
                             f"takes {len(self.prefix) + len(self.suffix)} tokens")
        ids = tokenizer(prompts, add_special_tokens=False, max_length=budget, truncation=True)["input_ids"]
        return [self.prefix + row + self.suffix for row in ids]


def left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``: every row's last prompt token in the last column."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.as_tensor(row)
            attention_mask[i, width - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class CausalPromptEncoder:
    """Prompts -> a left-padded generation batch (picklable for DataLoader workers)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat: ChatFormat, max_length: int, pad_id: int) -> None:
        self.tokenizer, self.chat, self.max_length, self.pad_id = tokenizer, chat, max_length, pad_id

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return left_pad(self.chat.encode(self.tokenizer, prompts, self.max_length), self.pad_id)


class CausalExampleEncoder:
    """``datasets.map``: (instruction, target) -> one sequence, labels only on the target's tokens and EOS."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat: ChatFormat, max_input_length: int,
                 max_target_length: int, eos_id: int) -> None:
        self.tokenizer, self.chat, self.eos_id = tokenizer, chat, eos_id
        self.max_input_length, self.max_target_length = max_input_length, max_target_length

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        prompts = self.chat.encode(self.tokenizer, batch["instruction"], self.max_input_length)
        targets = self.tokenizer(batch["target"], add_special_tokens=False, max_length=self.max_target_length - 1,
                                 truncation=True)["input_ids"]
        inputs, labels = [], []
        for prompt, target in zip(prompts, targets):
            answer = [*target, self.eos_id]
            inputs.append(prompt + answer)
            labels.append([LABEL_PAD_ID] * len(prompt) + answer)
        return {"input_ids": inputs, "labels": labels}


class CausalCollator:
    """Right-pad training rows (positions then count from each row's first token, as in generation)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), LABEL_PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(row["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "doc_id": [row["doc_id"] for row in rows], "task": [row["task"] for row in rows]}


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs the peft package: pip install 'selfinstruct-retrieval[llm]' (or pip install "
                          "peft), or drop model.init_args.lora for full fine-tuning") from None
    return peft


class CausalLMModule(GeneratorModule):
    """Any ``AutoModelForCausalLM`` (local folder, hub name or local GGUF), fully tuned or through a LoRA adapter."""

    identity_args: ClassVar[tuple[str, ...]] = ("model_name_or_path", "gguf_file", "tokenizer_name_or_path",
                                                "adapter_path")
    example_format: ClassVar[str] = "causal-1"

    def __init__(self, model_name_or_path: str | None = None, gguf_file: str | None = None,
                 tokenizer_name_or_path: str | None = None, adapter_path: str | None = None,
                 lora: LoraSettings | None = None, merge_adapter: bool = False,
                 decoding: DecodingConfig = DecodingConfig(), max_input_length: int = 512,
                 learning_rate: float = PAPER_TUNING.learning_rate,
                 optimizer: Literal["adafactor", "adamw"] = PAPER_TUNING.optimizer, weight_decay: float = 0.0,
                 dtype: Literal["float32", "bfloat16", "float16"] = "float32", chat_template: bool = True,
                 system_prompt: str | None = None, answer_prefix: str = "\n", gradient_checkpointing: bool = False,
                 allow_pickle_weights: bool = False, model_label: str | None = None) -> None:
        """
        Args:
            model_name_or_path: a causal LM (hub name such as Qwen/Qwen2.5-1.5B-Instruct, or a local folder);
                with ``gguf_file``, the folder that holds it (optional when ``gguf_file`` is a path).
            gguf_file: a local GGUF file (a path, or a name inside ``model_name_or_path``), dequantised on load.
            tokenizer_name_or_path: where the tokenizer lives when not beside the model (or in the GGUF).
            adapter_path: a LoRA adapter folder saved by :meth:`save_pretrained`, loaded onto the base (stage 2).
            lora: tune through a LoRA adapter with these settings; null: full fine-tuning.
            merge_adapter: save the tuned model with the adapter merged into the base weights (a plain model
                folder) instead of the adapter alone.
            decoding: sampling / beam / greedy settings for predict_step.
            max_input_length: longest prompt in tokens, chat template included (the passage's end is cut).
            learning_rate: optimizer learning rate (the paper's: ``core.paper.PAPER_TUNING``).
            optimizer: ``adafactor`` (transformers' Adafactor with a fixed rate) or ``adamw``.
            weight_decay: decoupled weight decay for either optimizer.
            dtype: the weights' dtype once loaded (bfloat16 halves memory on GPUs; float32 on CPUs).
            chat_template: wrap prompts in the tokenizer's chat template when it has one.
            system_prompt: a system message for the chat template (null: the template's default, if any).
            answer_prefix: without a chat template, what follows the prompt before the answer.
            gradient_checkpointing: recompute activations in backward (less memory, about a third more time).
            allow_pickle_weights: accept pickled ``.bin`` weights (off: safetensors only).
            model_label: the ``model`` field of generated records (default: the model's name or file).
        """
        super().__init__()
        if model_name_or_path is None and gguf_file is None:
            raise ValueError("model.init_args: set model_name_or_path (a folder or hub name) or gguf_file")
        if lora is not None and adapter_path is not None:
            raise ValueError("model.init_args: set lora (train a new adapter) or adapter_path (load a trained one), "
                             "not both")
        if optimizer not in ("adafactor", "adamw"):
            raise ValueError(f"optimizer must be 'adafactor' or 'adamw', got '{optimizer}'")
        if dtype not in DTYPES:
            raise ValueError(f"model.init_args.dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
        if max_input_length < 2:
            raise ValueError(f"max_input_length must be >= 2, got {max_input_length}")
        if isinstance(decoding, dict):  # as stored in checkpoints
            decoding = DecodingConfig(**decoding)
        if isinstance(lora, dict):
            lora = LoraSettings(**lora)
        self.decoding = replace(decoding)
        self.lora = lora
        self.save_hyperparameters(ignore=["decoding", "lora"])  # plain values: checkpoints load with weights_only
        self.hparams.update(decoding=asdict(self.decoding), lora=None if lora is None else asdict(lora))
        self.max_input_length = max_input_length
        self.model_label = model_label or str(gguf_file or model_name_or_path)
        self.model, self.tokenizer = self._load(model_name_or_path, gguf_file, tokenizer_name_or_path,
                                                DTYPES[dtype], allow_pickle_weights)
        if self.tokenizer.pad_token_id is None:  # Llama-family tokenizers have none; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(self.tokenizer).__name__} has no EOS token to end targets")
        self.chat = ChatFormat(self.tokenizer, chat_template, system_prompt, answer_prefix)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.enable_input_require_grads()  # LoRA: frozen embeddings would cut the graph at layer 0
        if adapter_path is not None:
            self.model = _peft().PeftModel.from_pretrained(self.model, adapter_path, is_trainable=False)
        elif lora is not None:
            peft = _peft()
            config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
            self.model = peft.get_peft_model(self.model, config)
        self.model.train()  # from_pretrained returns eval mode, and Lightning 2.x keeps a module's mode in fit

    @staticmethod
    def _load(model_name_or_path: str | None, gguf_file: str | None, tokenizer_name_or_path: str | None,
              dtype: torch.dtype, allow_pickle_weights: bool) -> tuple[Any, Any]:
        if gguf_file is not None:
            folder, name = resolve_gguf(model_name_or_path, gguf_file)
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
                tokenizer = load_tokenizer(tokenizer_name_or_path) if tokenizer_name_or_path else \
                    AutoTokenizer.from_pretrained(folder, gguf_file=name)
            return model, tokenizer
        model = load_pretrained(AutoModelForCausalLM, model_name_or_path, allow_pickle_weights=allow_pickle_weights,
                                require_all_weights=True, dtype=dtype)
        return model, load_tokenizer(tokenizer_name_or_path or model_name_or_path)

    # ---- what a configuration names ------------------------------------------------------------------------
    @classmethod
    def model_sources(cls, init_args: Mapping[str, Any]) -> list[ModelSource]:
        if not (init_args.get("gguf_file") or init_args.get("model_name_or_path")):
            raise InputError("no model: set model.init_args.gguf_file (a local .gguf file) or "
                             "model.init_args.model_name_or_path (a folder or hub name)", field="model.init_args",
                             hint="configs/profiles/llm-offline.yaml needs --model.init_args.gguf_file PATH")
        if init_args.get("gguf_file"):
            folder = init_args.get("model_name_or_path")
            path = Path(init_args["gguf_file"]) if folder is None else Path(folder) / init_args["gguf_file"]
            sources = [ModelSource("gguf_file", str(path), weights=False)]
        else:
            sources = [ModelSource("model_name_or_path", str(init_args.get("model_name_or_path")))]
        if init_args.get("tokenizer_name_or_path"):
            sources.append(ModelSource("tokenizer_name_or_path", str(init_args["tokenizer_name_or_path"]), False))
        return sources

    @classmethod
    def encoder_source(cls, init_args: Mapping[str, Any]) -> ModelSource | None:
        """None: the LLM only writes; the retrieval encoder (``embed.encoder``, ``filter.encoder``) embeds."""
        return None

    @classmethod
    def from_tuned(cls, path: str | os.PathLike, init_args: Mapping[str, Any]) -> CausalLMModule:
        """The base plus the saved adapter, or the saved (merged or fully tuned) model itself."""
        path = Path(path)
        kept = {key: value for key, value in init_args.items() if key not in (*BASE_KEYS, "adapter_path", "lora")}
        if not (path / ADAPTER_CONFIG).is_file():
            return cls(**kept, model_name_or_path=str(path))
        base = {key: init_args.get(key) for key in BASE_KEYS}
        recorded = json.loads((path / TUNED_FROM).read_text(encoding="utf-8")) if (path / TUNED_FROM).is_file() else {}
        if recorded.get("base", base) != base:
            raise InputError(f"the adapter was trained on {recorded['base']} but the configuration names {base}",
                             path=path, field="model.init_args",
                             hint="configure the base model the adapter was trained on, or tune again")
        return cls(**kept, **base, adapter_path=str(path))

    # ---- inputs -------------------------------------------------------------------------------------------
    @property
    def eos_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's EOS and the model's own (chat models have several)."""
        configured = self._causal().generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
        return sorted({self.tokenizer.eos_token_id, *ids})

    def prompt_encoder(self, max_length: int) -> CausalPromptEncoder:
        return CausalPromptEncoder(self.tokenizer, self.chat, max_length, self.tokenizer.pad_token_id)

    def example_encoder(self, max_input_length: int, max_target_length: int) -> CausalExampleEncoder:
        return CausalExampleEncoder(self.tokenizer, self.chat, max_input_length, max_target_length,
                                    self.tokenizer.eos_token_id)

    def example_collator(self) -> CausalCollator:
        return CausalCollator(self.tokenizer.pad_token_id)

    def prompt_part(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each row's tokens before its first label, left-padded."""
        rows = []
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            targets = (labels != LABEL_PAD_ID).nonzero()
            end = int(targets[0]) if len(targets) else int(mask.sum())
            rows.append(ids[:end].tolist())
        return left_pad(rows, self.tokenizer.pad_token_id)

    # ---- training -----------------------------------------------------------------------------------------
    def _causal(self) -> Any:
        """The transformers model (under a peft wrapper when tuning LoRA; its layers carry the adapters)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token cross-entropy over the target tokens only; logits are computed for those positions alone
        (a 150k-token vocabulary over every prompt position would cost GBs)."""
        for key in ("input_ids", "attention_mask", "labels"):
            if key not in batch:
                raise KeyError(f"batch lacks {key}; CausalLMModule trains on input_ids, attention_mask and labels")
        causal = self._causal()
        hidden = causal.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        targets = batch["labels"][:, 1:]
        chosen = targets != LABEL_PAD_ID
        if not bool(chosen.any()):
            raise ValueError("a training batch has no target tokens (every label is -100)")
        logits = causal.get_output_embeddings()(hidden[:, :-1][chosen])
        return F.cross_entropy(logits.float(), targets[chosen])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """LoRA: the checkpoint keeps the adapter's weights only (the frozen base is in its own files)."""
        if self.lora is not None:
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """LoRA: a checkpoint must hold exactly the adapter's weights (see :meth:`on_save_checkpoint`)."""
        if self.lora is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(trainable - set(state_dict)), sorted(set(state_dict) - trainable)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not hold this LoRA adapter's weights ({len(missing)} missing, first "
                               f"{missing[:2]}; {len(unexpected)} unexpected, first {unexpected[:2]}): the lora settings "
                               "(rank, target_modules) must be the ones it was trained with")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    # ---- generation ---------------------------------------------------------------------------------------
    def generate_texts(self, batch: Mapping[str, Any], doc_ids: list[str], tasks: list[str]) -> list[list[str]]:
        """``num_samples`` texts per (left-padded) prompt row, the prompt and special tokens stripped."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if input_ids.shape[-1] > self.max_input_length:
            raise ValueError(f"batch prompts are {input_ids.shape[-1]} tokens but max_input_length is "
                             f"{self.max_input_length}; encode them with prompt_encoder")
        config = self.decoding
        samples = config.num_samples
        causal = self._causal()
        settings = generation_config(config, causal.generation_config)
        settings.eos_token_id, settings.pad_token_id = self.eos_ids, self.tokenizer.pad_token_id
        extra: dict[str, Any] = {}
        width = input_ids.shape[-1]
        if config.strategy == "sample":
            seeds = torch.tensor([document_seed(config.seed, doc_id, task, index)
                                  for doc_id, task in zip(doc_ids, tasks) for index in range(samples)],
                                 dtype=torch.int64, device=input_ids.device)
            input_ids = input_ids.repeat_interleave(samples, dim=0)
            attention_mask = attention_mask.repeat_interleave(samples, dim=0)
            extra["logits_processor"] = sampling_processors(config, seeds, prompt_width=width)
        with torch.inference_mode():
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            generation_config=settings, **extra)
        texts = [text.strip() for text in self.tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)]
        if len(texts) != len(doc_ids) * samples:
            raise RuntimeError(f"generate returned {len(texts)} sequences for {len(doc_ids)} prompts x {samples}")
        return [texts[row * samples:(row + 1) * samples] for row in range(len(doc_ids))]

    # ---- saving -------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """The tuned model, atomically: with LoRA the adapter (safetensors) plus the base's ``config.json`` and
        ``tuned_from.json`` (stage 2 loads base + adapter), or with ``merge_adapter`` / full tuning a plain
        model folder (safetensors); the tokenizer (with its chat template) either way."""
        def write(staging: Path) -> None:
            if self.lora is not None and not self.hparams.merge_adapter:
                self.model.save_pretrained(staging)  # adapter_model.safetensors + adapter_config.json
                self._causal().config.save_pretrained(staging)
                base = {key: self.hparams.get(key) for key in BASE_KEYS}
                (staging / TUNED_FROM).write_text(json.dumps({"base": base}, indent=2), encoding="utf-8")
                if not (staging / "adapter_model.safetensors").is_file():
                    raise RuntimeError(f"peft wrote no adapter_model.safetensors into {staging}")
            else:
                model = copy.deepcopy(self.model).merge_and_unload() if self.lora is not None else self.model
                model.save_pretrained(staging)
                if not any((staging / name).is_file() for name in SAFE_WEIGHT_FILES):
                    raise RuntimeError(f"save_pretrained wrote no safetensors weights into {staging}")
            self.tokenizer.save_pretrained(staging)
        return self.write_folder(path, write)
