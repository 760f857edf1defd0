"""BERTScore F1 (Zhang et al. 2020) from the retrieval encoder's own token embeddings.

Why here: the ``bertscore`` Rao-Blackwell method weights each synthetic output by how well its
tokens match its document's, measured in the same embedding space the retrieval vectors live in,
so no second model is loaded. Greedy matching: precision is the mean over candidate tokens of
the best cosine to any reference token, recall the same the other way, F1 their harmonic mean.
As in the reference implementation (``bert_score``), every non-padding token may be matched but
special tokens ([CLS], [SEP], </s>) weigh 0 in the means; idf weighting (off by default) uses
idf(w) = ln((N + 1) / (df(w) + 1)) over the distinct references. No baseline rescaling: the scores
are used as relative weights. A candidate or reference with no weighted token (empty) scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from lightning_modules.encoder import EncoderModule


def bertscore_f1(encoder: "EncoderModule", candidates: Sequence[str], references: Sequence[str],
                 batch_size: int = 32, idf: bool = False) -> Tensor:
    """F1 of each candidate against the reference at the same position, float32 ``(N,)``.

    Pairs are processed sorted by reference, so a document shared by many outputs is embedded
    once per batch; texts longer than the encoder's ``max_length`` are truncated.
    """
    if len(candidates) != len(references):
        raise ValueError(f"bertscore_f1 needs one reference per candidate, got {len(candidates)} candidates "
                         f"and {len(references)} references")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tokenizer = encoder_tokenizer(encoder)
    idf_weights = _idf_weights(encoder, tokenizer, references) if idf else None
    order = sorted(range(len(candidates)), key=lambda i: references[i])
    scores = torch.zeros(len(candidates), dtype=torch.float32)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="bertscore", unit="batch", disable=len(batches) < 10):
        unique_refs = list(dict.fromkeys(references[i] for i in batch))
        position = {text: k for k, text in enumerate(unique_refs)}
        cand = _embed_tokens(encoder, tokenizer, [candidates[i] for i in batch], idf_weights)
        ref, ref_mask, ref_weight = _embed_tokens(encoder, tokenizer, unique_refs, idf_weights)
        pick = torch.tensor([position[references[i]] for i in batch], device=ref.device)
        scores[batch] = greedy_f1(*cand, ref[pick], ref_mask[pick], ref_weight[pick]).cpu()
    return scores


def greedy_f1(cand: Tensor, cand_mask: Tensor, cand_weight: Tensor, ref: Tensor, ref_mask: Tensor,
              ref_weight: Tensor) -> Tensor:
    """BERTScore F1 of padded pairs: ``cand (B, Lc, d)`` and ``ref (B, Lr, d)`` unit-length token vectors;
    masks ``(B, L)`` mark real (non-padding) tokens, which may be matched; weights ``(B, L)`` (0 on
    special tokens, else 1 or idf) say how much each token's best match counts in the mean."""
    similarity = torch.bmm(cand, ref.transpose(1, 2))  # (B, Lc, Lr) cosines
    best_for_cand = similarity.masked_fill(~ref_mask[:, None, :], -math.inf).amax(2)
    best_for_ref = similarity.masked_fill(~cand_mask[:, :, None], -math.inf).amax(1)
    precision = _weighted_mean(best_for_cand, cand_weight)
    recall = _weighted_mean(best_for_ref, ref_weight)
    f1 = 2 * precision * recall / (precision + recall)
    empty = (cand_weight.sum(1) <= 0) | (ref_weight.sum(1) <= 0)
    return torch.where(empty, torch.zeros_like(f1), f1)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    values = torch.where(weights > 0, values, torch.zeros_like(values))  # padding rows hold -inf
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1e-12)


def _embed_tokens(encoder: "EncoderModule", tokenizer: Any, texts: list[str],
                  idf_weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-length token embeddings ``(B, L, d)`` in float32, the non-padding mask and per-token weights."""
    batch = tokenizer(_as_embedded(encoder, texts), padding=True, truncation=True,
                              max_length=encoder.max_length, return_tensors="pt", return_special_tokens_mask=True)
    device = encoder.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = encoder.token_embeddings(input_ids, attention_mask).float()
    mask = attention_mask.bool()
    weight = (mask & ~batch["special_tokens_mask"].to(device).bool()).float()
    if idf_weights is not None:
        weight = weight * idf_weights.to(device)[input_ids]
    return F.normalize(hidden, dim=-1), mask, weight


def _idf_weights(encoder: "EncoderModule", tokenizer: Any, references: Sequence[str]) -> Tensor:
    """idf indexed by token id over the distinct references; a token seen in no reference gets ln(N + 1)."""
    distinct = list(dict.fromkeys(references))
    document_frequency = torch.zeros(len(tokenizer), dtype=torch.float64)
    for ids in tokenizer(_as_embedded(encoder, distinct), truncation=True, max_length=encoder.max_length)["input_ids"]:
        document_frequency[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
    return torch.log((len(distinct) + 1) / (document_frequency + 1)).float()


def encoder_tokenizer(encoder: "EncoderModule") -> Any:
    """The tokenizer the embedding loop uses for this encoder (TextsDataModule loads the same one)."""
    return encoder.tokenizer


def _as_embedded(encoder: "EncoderModule", texts: Sequence[str]) -> list[str]:
    """The texts as the embedding loop feeds them (sentence-transformers' ``do_lower_case`` applied)."""
    return [text.lower() for text in texts] if encoder.source.do_lower_case else list(texts)
