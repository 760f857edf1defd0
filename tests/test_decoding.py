"""Decoding settings and per-row seeded sampling, without a model."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from lightning_modules.decoding import (DecodingConfig, SeededSampler, document_seed, generation_config,
                                        hashed_uniform, sampling_processors)


def test_document_seed_is_pinned_and_distinct() -> None:
    # Pinned: Python's salted hash() would give another value in almost every interpreter run (and break resume).
    assert document_seed(0, "doc-1", "question", 0) == 4768643337519164779
    seeds = {document_seed(base, doc, task, index) for base in (0, 1) for doc in ("a", "b", "ab")
             for task in ("question", "keywords") for index in range(3)}
    assert len(seeds) == 2 * 3 * 2 * 3 and all(0 <= seed < 2**63 for seed in seeds)
    assert document_seed(0, "a", "b\x1fc", 0) != document_seed(0, "a\x1fb", "c", 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "greedy", "num_samples": 2}, "greedy"),
    ({"strategy": "beam", "num_samples": 5, "num_beams": 4}, "num_beams=4"),
    ({"temperature": 0.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens"),
    ({"strategy": "nucleus"}, "strategy"),
    ({"num_samples": 0}, "num_samples"),
])
def test_invalid_decoding_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)


def test_uniform_depends_only_on_its_own_seed_and_step() -> None:
    seeds = torch.tensor([document_seed(0, f"d{i}", "question", 0) for i in range(5)])
    batch = hashed_uniform(seeds, step=3)
    alone = torch.cat([hashed_uniform(seeds[i:i + 1], step=3) for i in range(5)])
    assert torch.equal(batch, alone)
    assert torch.equal(hashed_uniform(seeds.flip(0), step=3), batch.flip(0))
    assert not torch.equal(hashed_uniform(seeds, step=4), batch)
    many = hashed_uniform(torch.arange(20_000), step=0)
    assert 0 < many.min() and many.max() < 1 and len(torch.unique(many)) == 20_000
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() * 12 - 1) < 0.03


def test_seeded_sampler_draws_from_the_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf"), 0.5]])
    rows = 50_000
    processed = SeededSampler(torch.arange(rows))(torch.zeros(rows, 2, dtype=torch.long), logits.expand(rows, -1))
    assert (torch.isfinite(processed).sum(dim=1) == 1).all()  # greedy search can only pick the draw
    frequencies = torch.bincount(processed.argmax(dim=1), minlength=5).double() / rows
    assert frequencies[3] == 0
    assert torch.allclose(frequencies, torch.softmax(logits[0].double(), dim=0), atol=0.01)


def test_warpers_apply_before_the_draw() -> None:
    scores = torch.tensor([[3.0, 2.9, 0.0, -1.0]]).expand(200, -1)
    config = DecodingConfig(top_k=1, top_p=None)
    picked = sampling_processors(config, torch.arange(200))(torch.zeros(200, 1, dtype=torch.long), scores.clone())
    assert (picked.argmax(dim=1) == 0).all()
    spread = sampling_processors(DecodingConfig(top_p=None), torch.arange(200))(
        torch.zeros(200, 1, dtype=torch.long), scores.clone())
    assert len(torch.unique(spread.argmax(dim=1))) > 1


def test_generation_config_keeps_special_ids_and_never_samples_globally() -> None:
    base = GenerationConfig(decoder_start_token_id=101, eos_token_id=102, pad_token_id=0, do_sample=True, top_k=50)
    sample = generation_config(DecodingConfig(max_new_tokens=12, min_new_tokens=12), base)
    assert (sample.decoder_start_token_id, sample.eos_token_id, sample.pad_token_id) == (101, 102, 0)
    assert not sample.do_sample and sample.top_k is None and sample.num_beams == 1
    assert sample.max_new_tokens == 12 and sample.min_new_tokens == 12
    beam = generation_config(DecodingConfig(strategy="beam", num_beams=5, num_samples=3), base)
    assert (beam.num_beams, beam.num_return_sequences, beam.do_sample) == (5, 3, False)
