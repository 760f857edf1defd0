"""BERTScore F1 (Zhang et al. 2020) computed as the ``bert_score`` package computes it, on the retrieval encoder.

Why here: the ``bertscore`` Rao-Blackwell method weights each synthetic output by its BERTScore F1 against its
document. We score with the checkpoint the retrieval vectors come from, so no second model is loaded, and we
compute exactly what ``bert_score.score(candidates, references, model_type=<that checkpoint's folder>,
num_layers=L, idf=idf)`` returns as F (``tests/test_bertscore.py`` checks it against the package):

- **tokens**: the checkpoint's own tokenizer, ``tokenizer.encode(text.strip(), add_special_tokens=True)``
  truncated at ``tokenizer.model_max_length`` (capped at the model's position embeddings);
- **layer**: the hidden states after the first L layers of the encoder. ``bert_score`` has no default
  layer for MiniLM or the T5 encoders, so L is explicit: ``layer=None`` means all of them (the encoder's
  last layer, what the retrieval vectors pool). A T5 encoder cut at L < its depth gets its final layer
  norm, as ``bert_score``'s truncated model does;
- **weights**: every token may be matched; in the means each weighs 1 except the tokenizer's CLS and SEP
  ids, which weigh 0 (``bert_score``'s default idf dict; a T5 ``</s>`` therefore weighs 1). With ``idf``,
  weight = ln((N + 1) / (df + 1)) over the N references as given, repeats included (``get_idf_dict``);
- **greedy matching**: P = Σ_i w_i max_j cos(c_i, r_j) / Σ_i w_i over the candidate's tokens, R the same
  over the reference's, F = 2PR / (P + R).

Two corner cases are defined independently of the batch, where the package's answer depends on how its
batches are padded: padding never matches (in a batch ``bert_score`` scores a token against the padding of a
shorter reference as cosine 0, so a token whose every real cosine is negative counts 0 instead; with one
pair per batch the two agree to float precision), and a text whose weights sum to 0
(an empty one) scores F = 0 (as ``bert_score`` does for BERT tokenizers; its "two tokens means empty" rule,
which would zero a one-word T5 candidate, is not copied). F can be negative; the evaluator gives such
outputs weight 0. No baseline rescaling: ``bert_score`` ships baselines for none of the encoders used here
(MiniLM, FLAN-T5), and rescaling is affine, so it would change the relative weights, not only their scale.
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
                 batch_size: int = 32, idf: bool = False, layer: int | None = None) -> Tensor:
    """F1 of each candidate against the reference at the same position, float32 ``(N,)``.

    ``layer``: how many of the encoder's layers to run (``bert_score``'s ``num_layers``); None: all.
    Pairs are processed sorted by reference, so a document shared by many outputs is embedded once per batch.
    """
    if len(candidates) != len(references):
        raise ValueError(f"bertscore_f1 needs one reference per candidate, got {len(candidates)} candidates "
                         f"and {len(references)} references")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_layer(encoder, layer)
    tokenizer = encoder_tokenizer(encoder)
    limit = _max_tokens(encoder, tokenizer)
    idf_weights = _idf_weights(tokenizer, references, limit) if idf else None
    order = sorted(range(len(candidates)), key=lambda i: references[i])
    scores = torch.zeros(len(candidates), dtype=torch.float32)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="bertscore", unit="batch", disable=len(batches) < 10):
        unique_refs = list(dict.fromkeys(references[i] for i in batch))
        position = {text: k for k, text in enumerate(unique_refs)}
        cand = _embed_tokens(encoder, tokenizer, [candidates[i] for i in batch], limit, idf_weights, layer)
        ref, ref_mask, ref_weight = _embed_tokens(encoder, tokenizer, unique_refs, limit, idf_weights, layer)
        pick = torch.tensor([position[references[i]] for i in batch], device=ref.device)
        scores[batch] = greedy_f1(*cand, ref[pick], ref_mask[pick], ref_weight[pick]).cpu()
    return scores


def greedy_f1(cand: Tensor, cand_mask: Tensor, cand_weight: Tensor, ref: Tensor, ref_mask: Tensor,
              ref_weight: Tensor) -> Tensor:
    """BERTScore F1 of padded pairs: ``cand (B, Lc, d)`` and ``ref (B, Lr, d)`` unit-length token vectors;
    masks ``(B, L)`` mark real (non-padding) tokens, which may be matched; weights ``(B, L)`` (0 on
    CLS/SEP, else 1 or idf) say how much each token's best match counts in the mean."""
    similarity = torch.bmm(cand, ref.transpose(1, 2))  # (B, Lc, Lr) cosines
    best_for_cand = similarity.masked_fill(~ref_mask[:, None, :], -math.inf).amax(2)
    best_for_ref = similarity.masked_fill(~cand_mask[:, :, None], -math.inf).amax(1)
    precision = _weighted_mean(best_for_cand, cand_weight)
    recall = _weighted_mean(best_for_ref, ref_weight)
    f1 = 2 * precision * recall / (precision + recall)
    empty = (cand_weight.sum(1) <= 0) | (ref_weight.sum(1) <= 0) | ~torch.isfinite(f1)
    return torch.where(empty, torch.zeros_like(f1), f1)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    values = torch.where(weights > 0, values, torch.zeros_like(values))  # padding rows hold -inf
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1e-12)


def check_layer(encoder: "EncoderModule", layer: int | None) -> None:
    """``layer`` must lie in [0, the encoder's number of layers] (0: the token embeddings)."""
    if layer is None:
        return
    depth = encoder_depth(encoder)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= depth:
        raise ValueError(f"BERTScore layer must be an integer in [0, {depth}] for this encoder (it has {depth} "
                         f"layers; null uses the last), got {layer!r}")


def encoder_depth(encoder: "EncoderModule") -> int:
    config = encoder.encoder.config
    for name in ("num_hidden_layers", "num_layers", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ValueError(f"cannot tell how many layers {type(encoder.encoder).__name__} has")


@torch.inference_mode()
def layer_states(encoder: "EncoderModule", input_ids: Tensor, attention_mask: Tensor, layer: int | None) -> Tensor:
    """Hidden states ``(B, L, d)`` after the first ``layer`` layers (all when None), as ``bert_score``'s
    truncated model returns them."""
    model = encoder.encoder
    if layer is None or layer == encoder_depth(encoder):
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[layer]
    final_norm = getattr(getattr(model, "encoder", None), "final_layer_norm", None)  # T5 family: pre-norm stack
    return final_norm(hidden) if final_norm is not None else hidden


def _embed_tokens(encoder: "EncoderModule", tokenizer: Any, texts: list[str], limit: int,
                  idf_weights: dict[int, float] | None, layer: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-length token embeddings ``(B, L, d)`` in float32, the non-padding mask and per-token weights."""
    encoded = [_encode(tokenizer, text, limit) for text in texts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in encoded], dtype=torch.long)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded], dtype=torch.long)
    weight = torch.tensor([[_token_weight(tokenizer, token, idf_weights) for token in ids] + [0.0] * (width - len(ids))
                           for ids in encoded], dtype=torch.float32)
    device = encoder.device
    hidden = layer_states(encoder, input_ids.to(device), mask.to(device), layer).float()
    return F.normalize(hidden, dim=-1), mask.to(device).bool(), weight.to(device)


def _encode(tokenizer: Any, text: str, limit: int) -> list[int]:
    """``bert_score``'s ``sent_encode``: stripped text, special tokens added, truncated."""
    return list(tokenizer.encode(text.strip(), add_special_tokens=True, max_length=limit, truncation=True))


def _token_weight(tokenizer: Any, token: int, idf_weights: dict[int, float] | None) -> float:
    if idf_weights is not None:
        return idf_weights.get(token, idf_weights[-1])
    return 0.0 if token in (tokenizer.cls_token_id, tokenizer.sep_token_id) else 1.0


def _idf_weights(tokenizer: Any, references: Sequence[str], limit: int) -> dict[int, float]:
    """idf per token id over the references as given (repeats count); key -1: a token seen in none, ln(N + 1)."""
    frequency: dict[int, int] = {}
    for text in references:
        for token in set(_encode(tokenizer, text, limit)):
            frequency[token] = frequency.get(token, 0) + 1
    n = len(references)
    return {-1: math.log(n + 1), **{token: math.log((n + 1) / (count + 1)) for token, count in frequency.items()}}


def _max_tokens(encoder: "EncoderModule", tokenizer: Any) -> int:
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    positions = getattr(encoder.encoder.config, "max_position_embeddings", None)
    if limit <= 0 or limit > 1_000_000:
        limit = int(positions) if positions else 512
    return min(limit, int(positions)) if positions else limit


def encoder_tokenizer(encoder: "EncoderModule") -> Any:
    """The tokenizer saved with the encoder's checkpoint (the one ``bert_score`` would load from that folder)."""
    return encoder.tokenizer
