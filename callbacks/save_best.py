"""Hand stage 2 the best tuned model as a plain Hugging Face folder.

Why a callback: Lightning checkpoints hold the optimizer and loop state and load only through
Lightning, and the *last* checkpoint is not the best one once early stopping waited ``patience``
epochs. At the end of training the best checkpoint's weights (lowest ``val/loss``, tracked by
``ModelCheckpoint``) are loaded, read with ``weights_only=True``, and written with
``save_pretrained`` (safetensors + tokenizer) to ``<run dir>/model``, which stage-2 generation
loads as ``model_name_or_path``. A short ``fit_summary.json`` beside it records where the model came
from (checkpoint, epoch, validation loss, epochs run, whether early stopping ended the run).

Only global rank zero reads the checkpoint and writes; the other ranks wait at a barrier and keep
their last weights (nothing uses them after fit).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from core.io import write_json_atomic

MODEL_DIR = "model"
SUMMARY_FILE = "fit_summary.json"


class SaveBestPretrained(Callback):
    """After fit, write the best checkpoint's model with ``save_pretrained`` (the module must provide it)."""

    def __init__(self, dirpath: str | None = None) -> None:
        """``dirpath``: where the model folder goes; null: ``<trainer.default_root_dir>/model``."""
        self.dirpath = dirpath
        self.saved_path: Path | None = None
        self._started = time.monotonic()

    def model_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / MODEL_DIR

    @staticmethod
    def best_checkpoint_callback(trainer: Trainer) -> ModelCheckpoint | None:
        """The first ModelCheckpoint that monitors a metric (an unmonitored one only keeps last.ckpt)."""
        return next((cb for cb in trainer.checkpoint_callbacks
                     if isinstance(cb, ModelCheckpoint) and cb.monitor is not None), None)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            rank_zero_info("fast_dev_run: no checkpoints, so no best model is saved")
            return
        checkpoint = self.best_checkpoint_callback(trainer)
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if not best:
            raise RuntimeError("SaveBestPretrained found no best checkpoint: ModelCheckpoint(monitor='val/loss') must "
                               "save one, so validation has to run at least once (check limit_val_batches, "
                               "check_val_every_n_epoch and that the val split is not empty)")
        target = self.model_dir(trainer)
        if trainer.is_global_zero:
            loaded = torch.load(best, map_location="cpu", weights_only=True)
            pl_module.load_state_dict(loaded["state_dict"])
            pl_module.save_pretrained(target)
            write_json_atomic(Path(trainer.default_root_dir) / SUMMARY_FILE,
                              self._summary(trainer, best, loaded, target))
            rank_zero_info(f"best model (epoch {loaded['epoch']}, val/loss {checkpoint.best_model_score:.4f}) "
                           f"saved to {target}")
        trainer.strategy.barrier("save_best_pretrained")
        self.saved_path = target

    def _summary(self, trainer: Trainer, best: str, loaded: dict[str, Any], target: Path) -> dict[str, Any]:
        stopper = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)), None)
        score = self.best_checkpoint_callback(trainer).best_model_score
        return {"model_dir": str(target), "best_checkpoint": str(best), "best_epoch": loaded["epoch"],
                "best_val_loss": None if score is None else float(score), "epochs_run": trainer.current_epoch,
                "global_step": trainer.global_step,
                "stopped_early": bool(stopper is not None and stopper.stopped_epoch > 0),
                "seconds_this_run": round(time.monotonic() - self._started, 1)}
