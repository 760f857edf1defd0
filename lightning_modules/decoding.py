"""Decoding configuration and per-document seeded sampling.

Why per-row seeds: Hugging Face ``generate`` draws every row of a batch from one global RNG,
so a document's sampled question would depend on which documents share its batch, on the
number of ranks and on where a resumed run restarts. Here each generated row carries its own
seed, derived from ``(seed, doc_id, task, sample_idx)`` by a stable hash, and its noise is a
pure function of ``(row seed, decoding step, token id)``: the same document gives the same
text alone, in any batch, in any order, on any number of ranks.

How: after Hugging Face's warpers (temperature, top-k, top-p), :class:`SeededSampler` draws
the next token of each row by inverse CDF from a uniform that a counter-based hash computes
from (row seed, step), and masks every other token, so ``generate`` running greedy search
picks exactly that draw. This is ordinary ancestral sampling, only with reproducible randomness.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

_MASK32 = 0xFFFFFFFF


@dataclass
class DecodingConfig:
    """How to decode: seeded sampling (default), beam search or greedy."""

    strategy: Literal["sample", "beam", "greedy"] = "sample"
    """``sample``: per-document seeded sampling; ``beam``: beam search; ``greedy``: argmax."""
    num_samples: int = 1
    """Outputs per task per document (beam: the best ``num_samples`` beams; greedy: must be 1)."""
    max_new_tokens: int = 64
    """Most tokens generated per output."""
    min_new_tokens: int = 0
    """Fewest tokens generated (EOS is blocked before); set equal to max_new_tokens for benchmarks (equal work)."""
    temperature: float = 1.0
    """Sampling temperature (sample only)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (sample only); None keeps all."""
    top_p: float | None = 0.95
    """Nucleus sampling mass (sample only); None or 1.0 keeps all."""
    num_beams: int = 4
    """Beam width (beam only)."""
    seed: int = 0
    """Base seed; each (document, task, sample) derives its own from it."""

    def __post_init__(self) -> None:
        if self.strategy not in ("sample", "beam", "greedy"):
            raise ValueError(f"decoding.strategy must be sample, beam or greedy, got '{self.strategy}'")
        if self.num_samples < 1:
            raise ValueError(f"decoding.num_samples must be >= 1, got {self.num_samples}")
        if self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"decoding needs 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens, got "
                             f"max_new_tokens={self.max_new_tokens}, min_new_tokens={self.min_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"decoding.temperature must be > 0, got {self.temperature} (use strategy: greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"decoding.top_k must be >= 1 or null, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"decoding.top_p must be in (0, 1] or null, got {self.top_p}")
        if self.strategy == "beam" and not 1 <= self.num_samples <= self.num_beams:
            raise ValueError(f"beam search returns at most num_beams={self.num_beams} outputs, "
                             f"num_samples={self.num_samples}")
        if self.strategy == "greedy" and self.num_samples != 1:
            raise ValueError("greedy decoding gives one output per prompt; set num_samples: 1 or strategy: sample")
        if self.seed < 0:
            raise ValueError(f"decoding.seed must be >= 0, got {self.seed}")


def document_seed(base_seed: int, doc_id: str, task: str, sample_idx: int) -> int:
    """A 63-bit seed from a stable hash (BLAKE2b, not Python's salted ``hash``) of the row's identity.

    The identity is JSON-encoded, so no two different (doc_id, task) pairs can give the same key.
    """
    key = json.dumps([base_seed, doc_id, task, sample_idx], ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow (16-bit halves)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (Wellons' "lowbias32"): every input bit flips each output bit about half the time."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_uniform(row_seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform (0, 1) float64 per row, a pure function of (row seed, step): a counter-based RNG."""
    seeds = row_seeds.to(torch.int64)
    state = _mix32(seeds & _MASK32)
    state = _mix32(state ^ ((seeds >> 32) & _MASK32))
    high = _mix32(state ^ (step & _MASK32))
    low = _mix32(high ^ 0x9E3779B9)
    return (((high << 21) | (low >> 11)).to(torch.float64) + 0.5) / 2.0**53  # 53 random bits


class SeededSampler(LogitsProcessor):
    """Samples each row from its own seed by inverse CDF, then leaves only that token for greedy search to pick.

    Exact sampling from ``softmax(scores)`` (the scores the warpers before it produced): the token is the
    first whose cumulative probability, in token-id order, exceeds the row's uniform for this step. One
    uniform per row per step; Gumbel-max would need one per vocabulary entry, which costs a large share of a
    decoding step on a CPU (``benchmarks/results/notes/docstring-measurements.md``). Probabilities are
    accumulated in float64, row by row, so a row's draw does not depend on the other rows of the batch.
    """

    def __init__(self, row_seeds: torch.Tensor, prompt_width: int = 0) -> None:
        """``prompt_width``: tokens in ``input_ids`` before the first generated one (a decoder-only model's
        left-padded prompts; 0 for an encoder-decoder), so the step count does not depend on the batch's padding."""
        self.row_seeds = row_seeds
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != self.row_seeds.shape[0]:
            raise ValueError(f"{scores.shape[0]} rows being decoded but {self.row_seeds.shape[0]} seeds")
        cumulative = torch.softmax(scores.to(torch.float64), dim=-1).cumsum(dim=-1)
        uniform = hashed_uniform(self.row_seeds.to(scores.device), input_ids.shape[-1] - self.prompt_width)
        targets = (uniform * cumulative[:, -1]).unsqueeze(-1)
        chosen = torch.searchsorted(cumulative, targets, right=True).clamp_(max=scores.shape[-1] - 1)
        only_chosen = torch.full_like(scores, float("-inf"))
        return only_chosen.scatter_(-1, chosen, 0.0)


def sampling_processors(config: DecodingConfig, row_seeds: torch.Tensor, prompt_width: int = 0) -> LogitsProcessorList:
    """Temperature, top-k, top-p (Hugging Face's warpers, in their usual order), then the seeded draw
    (``prompt_width``: see :class:`SeededSampler`)."""
    processors: list[LogitsProcessor] = []
    if config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None:
        processors.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        processors.append(TopPLogitsWarper(config.top_p))
    processors.append(SeededSampler(row_seeds, prompt_width))
    return LogitsProcessorList(processors)


def generation_config(config: DecodingConfig, base: GenerationConfig) -> GenerationConfig:
    """``base`` (the model's own, for its special token ids) with our length and search settings.

    Sampling runs as greedy search over scores where only the seeded draw survives, so ``do_sample`` is always off and
    Hugging Face's own sampling knobs are cleared (they would act on the global RNG).
    """
    settings: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens, "min_new_tokens": config.min_new_tokens or None,
        "do_sample": False, "temperature": None, "top_k": None, "top_p": None,
        "num_beams": config.num_beams if config.strategy == "beam" else 1,
        "num_return_sequences": config.num_samples if config.strategy == "beam" else 1,
        "max_length": None,
    }
    result = GenerationConfig.from_dict({**base.to_dict(), **settings})
    result.validate()
    return result
