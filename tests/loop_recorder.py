"""A callback a profile names by ``class_path`` (tests/ is on the path under pytest): it records each loop it joins."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class LoopRecorder(Callback):
    """Appends ``<trainer fn> <module class> <batches> <trainer's root dir>`` to ``path`` when a fit or predict
    loop ends (the root dir tells which run directory the loop belonged to)."""

    def __init__(self, path: str) -> None:
        self.path, self.batches = Path(path), 0

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        self.batches += 1

    def on_predict_batch_end(self, *args: object, **kwargs: object) -> None:
        self.batches += 1

    def _record(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{trainer.state.fn.value} {type(pl_module).__name__} {self.batches} {trainer.default_root_dir}\n")
        self.batches = 0

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, pl_module)
