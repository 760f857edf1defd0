"""Several samples per prompt without repeating the work their rows share: the decoder's projections of the
encoder output (cross-attention keys and values) run once per prompt, not once per sample.

Why: sampling ``n`` outputs per prompt decodes ``n`` rows that all attend to one encoder output. The encoder
already runs once per prompt (its output is repeated for the samples), but every decoder layer then projects
that repeated output to keys and values for each row, ``n`` times the same matrix products: for FLAN-T5-base
on a 350-token abstract that is ``24 * 350 * 768**2`` multiply-adds per row, more than 32 decoding steps of
the row cost. Hugging Face's ``num_return_sequences`` (BEIR's ``ques_per_passage``) repeats them too.

How, for any architecture: while ``generate`` runs, each ``Linear`` of the decoder is given a forward that
checks whether its input *is* the repeated encoder output (the very tensor object passed to ``generate``);
if so it projects the unrepeated output and repeats the result, which equals projecting the repeated rows
row for row. Any other input (or a model that transforms the encoder output first) takes the ordinary path,
so the worst case is no saving, never a different model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def project_once_per_prompt(decoder: torch.nn.Module, repeated: torch.Tensor, unique: torch.Tensor,
                            samples: int) -> Iterator[dict[str, int]]:
    """Within the block, a decoder ``Linear`` applied to ``repeated`` (= ``unique.repeat_interleave(samples, 0)``)
    computes on ``unique`` and repeats its output. Yields counters: ``{"shared": calls served once per prompt}``."""
    if repeated.shape[0] != unique.shape[0] * samples or repeated.shape[1:] != unique.shape[1:]:
        raise ValueError(f"repeated encoder output {tuple(repeated.shape)} is not {samples} x {tuple(unique.shape)}")
    counters = {"shared": 0}
    patched: list[torch.nn.Linear] = []

    def shared_forward(layer: torch.nn.Linear) -> object:
        ordinary = layer.forward

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            if inputs is repeated:
                counters["shared"] += 1
                return ordinary(unique).repeat_interleave(samples, dim=0)
            return ordinary(inputs)

        return forward

    try:
        for layer in decoder.modules():
            if isinstance(layer, torch.nn.Linear) and "forward" not in vars(layer):
                layer.forward = shared_forward(layer)  # type: ignore[method-assign]
                patched.append(layer)
        yield counters
    finally:
        for layer in patched:
            del layer.forward  # back to the class's own
