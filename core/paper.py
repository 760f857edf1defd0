"""The paper's instruction-tuning settings (Zeng et al. 2024), written once.

The module's defaults (``lightning_modules.seq2seq``), the DataModule's (``datamodules.selfinstruct``) and
the fit CLI's (``pipeline.fit``) read them from here; ``configs/fit/selfinstruct.yaml`` does not restate them
(``tests/test_configs.py`` checks the resolved fit config against this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TuningSettings:
    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    """transformers' Adafactor with a fixed learning rate (not ``torch.optim.Adafactor``, another algorithm)."""
    learning_rate: float = 1e-4
    batch_size: int = 16
    """Global: examples per optimizer step, split over devices and accumulation steps."""
    max_epochs: int = 30
    monitor: str = "val/loss"
    """Early stopping and the best checkpoint watch this; lower is better."""
    patience: int = 5
    """Epochs without a better ``monitor`` before training stops."""


PAPER_TUNING = TuningSettings()
