"""The encoder module: texts -> pooled, L2-normalised vectors (``predict_step``), and token embeddings.

Why one module for every checkpoint kind: the paper embeds with the encoder of the same
seq2seq model it tunes (FLAN-T5), the offline profile with a MiniLM warm-started
encoder-decoder, and a user may plug a separate sentence-transformers encoder. All three
reduce to "run a transformer encoder, pool over non-padding tokens, normalise"; only the
loading differs:

* a sentence-transformers folder: its ``modules.json`` (Transformer, Pooling, Normalize),
  ``1_Pooling/config.json`` and ``sentence_bert_config.json`` (``max_seq_length``,
  ``do_lower_case``) decide pooling and truncation, so vectors equal sentence-transformers';
* a seq2seq checkpoint (T5 family, ``EncoderDecoderModel``, BART-like): only the encoder's
  weights are loaded (the decoder is never materialised, except for BART-like models where
  transformers has no encoder-only class: there it is dropped right after loading);
* any other encoder: ``AutoModel``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from lightning.pytorch import LightningModule
from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding
from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

from core.fingerprint import file_signature, stable_hash
from lightning_modules.loading import (check_all_weights_loaded, load_pretrained, load_tokenizer, quiet_transformers,
                                       resolve_model_source)

Pooling = Literal["mean", "cls"]
_SUPPORTED_ST_MODULES = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}
_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class EncoderSource:
    """Where the transformer lives and what a sentence-transformers config says about using it."""

    model_path: str  # local folder or hub name holding config.json and the tokenizer
    max_seq_length: int | None = None
    pooling: Pooling | None = None
    do_lower_case: bool = False
    is_sentence_transformers: bool = False


def _model_file(source: str, filename: str) -> Path | None:
    """A file of a local folder, or of a hub repository (cached or fetched), or None if it has none."""
    local = Path(source)
    if local.exists():
        return local / filename if (local / filename).is_file() else None
    try:
        return Path(hf_hub_download(source, filename))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def _read_json(path: Path) -> dict[str, Any] | list[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _st_pooling(path: Path) -> Pooling:
    """Pooling of a ``Pooling/config.json``: ``"pooling_mode": "mean"`` (v6+) or ``pooling_mode_*`` flags (older)."""
    config = _read_json(path)
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [key.removeprefix("pooling_mode_") for key, on in config.items() if key.startswith("pooling_mode_") and on]
    else:
        modes = list(mode) if isinstance(mode, list) else [mode]
    if modes in (["mean_tokens"], ["mean"]):
        return "mean"
    if modes in (["cls_token"], ["cls"]):
        return "cls"
    raise ValueError(f"{path}: pooling {modes} is not supported (only mean_tokens or cls_token); "
                     "pass pooling='mean' or 'cls' to override it knowingly")


def resolve_encoder_source(name_or_path: str) -> EncoderSource:
    """Read a sentence-transformers configuration if ``name_or_path`` has one; else a plain source.

    Modules other than Transformer/Pooling/Normalize (e.g. Dense) are refused: ignoring them
    would silently give other vectors than sentence-transformers does.
    """
    local = Path(str(name_or_path)).expanduser()
    # a local folder may lack a root config.json (transformer in a subfolder): the loader checks it later
    source = str(local.resolve()) if local.exists() else resolve_model_source(name_or_path)
    modules_file = _model_file(source, "modules.json")
    if modules_file is None:
        return EncoderSource(model_path=source)
    found: dict[str, str] = {}
    for module in _read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_ST_MODULES:
            raise ValueError(f"{modules_file}: module '{module.get('type')}' is not supported (only "
                             f"{', '.join(_SUPPORTED_ST_MODULES)}); its vectors would differ from sentence-transformers'")
        found[_SUPPORTED_ST_MODULES[kind]] = str(module.get("path", ""))
    if "transformer" not in found:
        raise ValueError(f"{modules_file}: no sentence_transformers.models.Transformer module")
    sub = found["transformer"]
    if sub and not Path(source).is_dir():
        raise ValueError(f"'{source}' keeps its transformer in the subfolder '{sub}'; download the model folder "
                         "and pass its local path")
    model_path = str(Path(source) / sub) if sub else source
    pooling = None
    if "pooling" in found and (pooling_file := _model_file(source, f"{found['pooling']}/config.json")):
        pooling = _st_pooling(pooling_file)
    max_seq_length, lower = None, False
    for name in ("sentence_bert_config.json", f"{sub}/sentence_bert_config.json" if sub else ""):
        if name and (config_file := _model_file(source, name)):
            config = _read_json(config_file)
            max_seq_length = config.get("max_seq_length") or max_seq_length
            lower = bool(config.get("do_lower_case", lower))
    return EncoderSource(model_path=model_path, max_seq_length=max_seq_length, pooling=pooling, do_lower_case=lower,
                         is_sentence_transformers=True)


def resolve_max_length(source: EncoderSource, tokenizer: Any) -> int:
    """Truncation length: sentence-transformers' ``max_seq_length``, else the tokenizer's limit, else 512."""
    if source.max_seq_length:
        return int(source.max_seq_length)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1_000_000 else 512


def load_text_encoder(model_path: str, trust_remote_code: bool = False,
                      allow_pickle_weights: bool = False) -> torch.nn.Module:
    """The encoder of any checkpoint, in float32, with every encoder weight loaded from the checkpoint."""
    config = AutoConfig.from_pretrained(resolve_model_source(model_path), trust_remote_code=trust_remote_code)
    common = dict(trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights,
                  dtype=torch.float32, output_loading_info=True)
    if config.model_type == "encoder-decoder":  # transformers' EncoderDecoderModel: keys "encoder.*" / "decoder.*"
        with quiet_transformers():
            model, info = load_pretrained(AutoModel, model_path, config=config.encoder,
                                          key_mapping={r"^encoder\.": ""}, **common)
    elif config.model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:  # BERT-like, or T5EncoderModel for T5 family
        model, info = load_pretrained(AutoModelForTextEncoding, model_path, **common)
    else:
        model, info = load_pretrained(AutoModel, model_path, **common)
        if getattr(config, "is_encoder_decoder", False):
            encoder = model.get_encoder()
            del model
            model = encoder
    check_all_weights_loaded(info, model_path, ignore_prefixes=("pooler.",))  # the pooler is unused here
    return model.eval()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens, in float32 (as sentence-transformers computes it)."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def weights_signature(model_path: str) -> list[tuple[str, object]]:
    """Each weight file of a local folder with its size and SHA-256: changes when a stage rewrites the model."""
    folder = Path(model_path)
    return [(name, file_signature(folder / name)) for name in _WEIGHT_NAMES if (folder / name).is_file()]


class EncoderModule(LightningModule):
    """Pooled (mean over non-padding tokens by default), L2-normalised text vectors from any encoder.

    ``predict_step`` takes the batches of :class:`datamodules.embedding.TextsDataModule`
    (``ids``, ``input_ids``, ``attention_mask``) and returns ``{"ids", "vectors"}`` (float32).
    Precision comes from the Trainer: ``bf16-mixed`` autocasts on GPU, pooling stays float32.
    """

    def __init__(self, model_name_or_path: str, max_length: int | None = None, pooling: Pooling | None = None,
                 normalize: bool = True, trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> None:
        """``max_length``/``pooling`` default to the sentence-transformers config if the folder has one,
        else to the tokenizer's limit and mean pooling."""
        super().__init__()
        self.save_hyperparameters()
        if pooling not in (None, "mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got '{pooling}'")
        self.source = resolve_encoder_source(model_name_or_path)
        self.encoder = load_text_encoder(self.source.model_path, trust_remote_code, allow_pickle_weights)
        self.pooling: Pooling = pooling or self.source.pooling or "mean"
        self.normalize = normalize
        self.tokenizer = load_tokenizer(self.source.model_path, trust_remote_code=trust_remote_code)
        self.max_length = int(max_length) if max_length else resolve_max_length(self.source, self.tokenizer)
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        if positions and self.max_length > positions:
            raise ValueError(f"max_length {self.max_length} exceeds the model's {positions} position embeddings")

    @property
    def tokenizer_path(self) -> str:
        """The folder or name that :class:`TextsDataModule` must tokenize with."""
        return self.hparams.model_name_or_path

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size if hasattr(self.encoder.config, "hidden_size")
                   else self.encoder.config.d_model)

    def fingerprint(self) -> str:
        """A short hash of everything that decides the vectors: model files, pooling, length, normalisation."""
        identity = {"model": self.source.model_path, "weights": weights_signature(self.source.model_path),
                    "pooling": self.pooling, "max_length": self.max_length, "normalize": self.normalize,
                    "lowercase": self.source.do_lower_case}
        return stable_hash(identity)

    @torch.inference_mode()
    def token_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``(B, L, d)`` (model precision; padding rows are not zeroed: use the mask)."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.inference_mode()
    def encode_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled and (by default) L2-normalised float32 vectors ``(B, d)``."""
        hidden = self.token_embeddings(input_ids, attention_mask)
        pooled = mean_pool(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0].float()
        return torch.nn.functional.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"ids": batch["ids"], "vectors": self.encode_batch(batch["input_ids"], batch["attention_mask"])}


def same_vectors(a: EncoderModule, b: EncoderModule) -> bool:
    """True when ``a`` and ``b`` compute the same vectors: equal encoder weights, pooling, truncation,
    normalisation and casing (e.g. a frozen encoder saved beside its tuned decoder), so one's vectors serve both."""
    settings = lambda m: (m.pooling, m.max_length, m.normalize, m.source.do_lower_case)  # noqa: E731
    if settings(a) != settings(b):
        return False
    mine, theirs = a.encoder.state_dict(), b.encoder.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
