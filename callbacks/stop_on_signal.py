"""Stop a Lightning loop at a safe point when the run received SIGTERM or SIGINT (``core.interrupt``).

Why a callback, in every loop: Lightning handles SIGTERM in fit only (it raises a ``SystemExit`` with code
None after the batch, so runs ended with exit 0) and not at all in predict, where generation ran on and the
pipeline started the next stage; SIGINT became a ``KeyboardInterrupt`` wherever it landed. While a loop with
this callback runs, the run's handlers only record the signal; after each batch (listed after the prediction
writers, so the batch's part file is written) it raises :class:`core.interrupt.RunInterrupted` (exit 128 +
the signal; the part files stay and the rerun resumes from them). Under DDP every rank receives the signal
from its launcher (torchrun, srun and Lightning's own launcher forward it) and stops at its next batch.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from core import interrupt


class StopOnSignal(Callback):
    """Defers SIGTERM/SIGINT while a loop runs and stops it after the batch in flight."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        interrupt.defer(self, True)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        interrupt.defer(self, False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        interrupt.defer(self, False)  # Lightning calls no teardown hook after an exception

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        interrupt.signal_point("train-batch")
        interrupt.raise_if_requested("during training")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        interrupt.raise_if_requested("during validation")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        interrupt.raise_if_requested("during prediction")
