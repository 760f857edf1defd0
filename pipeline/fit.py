"""``python train.py fit|validate -c ...``: LightningCLI for instruction tuning, with the paper's settings as defaults.

Defaults (Zeng et al. 2024, ``core.paper.PAPER_TUNING``): transformers' Adafactor at a fixed lr 1e-4 (the
module's default), global batch 16 (the DataModule's), at most 30 epochs, early stopping when ``val/loss`` has
not improved for 5 epochs (set here). Any :class:`GeneratorModule` is tuned (``model.class_path``, default
:class:`Seq2SeqModule`) on :class:`SelfInstructDataModule` (the filter's kept records, split by document).
Every default is a config key, so YAML fragments (``-c configs/fit/selfinstruct.yaml -c configs/model/... -c
configs/trainer/gpu.yaml``) or ``--key value`` flags change it.

One run directory, ``trainer.default_root_dir`` (default ``runs/fit``), holds everything a fit writes:

* ``config.yaml``: the resolved configuration (also sent once to the logger as its hyperparameters);
* ``checkpoints/``: ``last.ckpt`` (after every validation) and the best one by ``val/loss``;
* ``model/``: the best model as safetensors + tokenizer, for stage 2 (:class:`callbacks.save_best.SaveBestPretrained`),
  and ``fit_summary.json``;
* ``selfinstruct/``: the train/val split (unless ``data.split_dir`` puts it elsewhere);
* ``wandb/`` or CSV logs: a logger's relative ``save_dir`` is taken inside the run directory;
* ``tables/fit-samples.md``: generated validation samples per epoch.

Resume with ``--ckpt_path last`` (continues at the next epoch with optimizer, early-stopping and
sample-table state; with no last checkpoint yet it starts fresh, so it is safe to always pass).
Checkpoints are read with ``torch.load(weights_only=True)`` unless ``--weights_only false`` is given.

The pipeline calls :func:`fit_selfinstruct`, the same path as the command line.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from callbacks.generation_samples import GenerationSamples
from callbacks.save_best import SaveBestPretrained
from callbacks.stop_on_signal import StopOnSignal
from callbacks.wandb_logger import OfflineFirstWandbLogger
from core.io import InputError, write_text_atomic
from core.paper import PAPER_TUNING
from datamodules.selfinstruct import SelfInstructDataModule
from lightning_modules.generator import GeneratorModule
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline.config_errors import parse_error

DEFAULT_RUN_DIR = "runs/fit"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
PAPER_TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": PAPER_TUNING.max_epochs,
    "default_root_dir": DEFAULT_RUN_DIR,
    "enable_autolog_hparams": False,  # the resolved config (which holds the module's arguments) is logged instead
}
PAPER_CALLBACK_DEFAULTS: dict[str, Any] = {
    "early_stopping.monitor": PAPER_TUNING.monitor, "early_stopping.mode": "min",
    "early_stopping.patience": PAPER_TUNING.patience,
    "checkpoint.monitor": PAPER_TUNING.monitor, "checkpoint.mode": "min", "checkpoint.save_top_k": 1,
    "checkpoint.save_last": False, "checkpoint.auto_insert_metric_name": False,
    "checkpoint.filename": "best-epoch={epoch}-val_loss={val/loss:.4f}",
    # Lightning 2.6 writes `save_last` only when a top-k checkpoint is saved at the same step, so with
    # save_top_k=1 last.ckpt would stay at the best epoch and a resume would lose the epochs after it.
    # A second, unmonitored checkpoint overwrites last.ckpt after every validation instead.
    "last_checkpoint.monitor": None, "last_checkpoint.save_top_k": 1, "last_checkpoint.filename": "last",
    "last_checkpoint.enable_version_counter": False,
}


def _same_source(saved: Any, configured: Any) -> bool:
    if saved == configured:
        return True
    if isinstance(saved, str) and isinstance(configured, str) and Path(saved).exists() and Path(configured).exists():
        return Path(saved).resolve() == Path(configured).resolve()
    return False


def check_checkpoint_model(ckpt_path: str | os.PathLike, model: Namespace) -> None:
    """Refuse a checkpoint made from another model than the configured one (``fit --ckpt_path FILE``).

    Why: given a checkpoint file, LightningCLI replaces the configured model's arguments with the ones
    saved in the checkpoint, so a wrong path would silently train (and hand stage 2) another model.
    Read with ``weights_only=True`` and memory-mapped: only the small hyperparameter dict is touched.
    """
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters") or {}
    if not saved:
        return
    configured = model.get("init_args") or Namespace()
    identity = _generator_class(model.get("class_path")).identity_args
    differences = [(key, saved.get(key), configured.get(key)) for key in identity
                   if not _same_source(saved.get(key), configured.get(key))]
    if saved.get("_class_path") not in (None, model.get("class_path")):
        differences.insert(0, ("class_path", saved.get("_class_path"), model.get("class_path")))
    if differences:
        said = "; ".join(f"{key} is {old!r} there but {new!r} in the configuration" for key, old, new in differences)
        raise InputError(f"checkpoint of a different model: {said}", path=ckpt_path, field="ckpt_path",
                         hint="resuming restores the checkpoint's model: pass the checkpoint of a run of the "
                              "configured model, configure the checkpoint's model, or start fresh (drop --ckpt_path, "
                              "or delete that checkpoint)")


def _generator_class(class_path: str | None) -> type[GeneratorModule]:
    """The class a ``model.class_path`` names (jsonargparse resolved and checked it while parsing)."""
    if not class_path:
        return Seq2SeqModule
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


class SaveRunConfig(SaveConfigCallback):
    """Write the resolved config to ``<run dir>/config.yaml`` (atomically, overwritten by a resumed run) and log it.

    Lightning's own callback refuses an existing ``config.yaml`` (so it would break ``--ckpt_path last``)
    and puts it in the logger's folder; the run directory is where the pipeline looks.
    """

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        text = self.parser.dump(self.config, skip_none=False)
        write_text_atomic(Path(trainer.default_root_dir) / CONFIG_FILE, text)
        resolved = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": json.loads(resolved)})


def _inside(run_dir: Path, path: str | os.PathLike) -> str:
    """``path`` taken relative to the run directory unless it is absolute."""
    return str(path) if Path(path).is_absolute() else str(run_dir / path)


def _resolve_run_paths(config: Namespace) -> None:
    """Put checkpoints and relative logger folders inside ``trainer.default_root_dir`` (made absolute)."""
    run_dir = Path(config.trainer.default_root_dir or os.getcwd()).resolve()
    config.trainer.default_root_dir = str(run_dir)
    for key in ("checkpoint", "last_checkpoint"):
        if config[key].dirpath is None:
            config[key].dirpath = str(run_dir / CHECKPOINT_DIR)
    if config.checkpoint.save_last:
        raise ValueError("checkpoint.save_last must stay false: last_checkpoint writes last.ckpt after every "
                         "validation (Lightning 2.6's save_last would only write it when the best changes)")
    loggers = config.trainer.logger
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if isinstance(init_args, Namespace) and init_args.get("save_dir") is not None:
            init_args.save_dir = _inside(run_dir, init_args.save_dir)


class SelfInstructCLI(LightningCLI):
    """LightningCLI over any :class:`GeneratorModule` and :class:`SelfInstructDataModule` with the paper's defaults."""

    def __init__(self, args: Sequence[str] | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {**PAPER_TRAINER_DEFAULTS,
                                               "logger": {"class_path": f"{OfflineFirstWandbLogger.__module__}."
                                                                        f"{OfflineFirstWandbLogger.__name__}"}})
        super().__init__(
            GeneratorModule, SelfInstructDataModule, subclass_mode_model=True, subclass_mode_data=True,
            save_config_callback=SaveRunConfig, seed_everything_default=0,
            auto_configure_optimizers=False,  # one way to pick the optimizer: the module's `optimizer` argument
            args=args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(GenerationSamples, "generation_samples")
        parser.add_lightning_class_args(SaveBestPretrained, "save_best")
        parser.add_lightning_class_args(StopOnSignal, "stop_on_signal")  # SIGTERM/SIGINT: stop, exit non-zero
        parser.set_defaults({
            **PAPER_CALLBACK_DEFAULTS,
            "model": {"class_path": f"{Seq2SeqModule.__module__}.{Seq2SeqModule.__name__}"},
            "data": {"class_path": f"{SelfInstructDataModule.__module__}.{SelfInstructDataModule.__name__}"},
            # a list (not a forced callback) so that `trainer.logger: false` stays possible: replace the list then
            "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                                   "init_args": {"logging_interval": "epoch"}}],
        })

    def _parse_ckpt_path(self) -> None:
        """Check a checkpoint file's model before Lightning adopts its hyperparameters."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_model(ckpt_path, self.config[subcommand].model)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _resolve_run_paths(config)
        last = Path(config.last_checkpoint.dirpath) / "last.ckpt"
        if self.subcommand and config.get("ckpt_path") == "last" and last.is_file():
            check_checkpoint_model(last, config.model)  # before anything is written into the run directory
        if self.subcommand and config.get("weights_only") is None:
            config.weights_only = True  # torch.load refuses pickled objects in checkpoints (issue 6, security)


class _ParseOnlyCLI(SelfInstructCLI):
    """Parses and resolves a config exactly as the command would, builds nothing, runs nothing.

    Only the requested subcommand's parser is built (each one costs about a second).
    """

    def __init__(self, args: Sequence[str]) -> None:
        self._only = args[0] if args and args[0] in LightningCLI.subcommands() else "fit"
        super().__init__(args=args)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        return {self._only: LightningCLI.subcommands()[self._only]}

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def _quiet_cli(cli_class: type[SelfInstructCLI], args: Sequence[str], **kwargs: Any) -> SelfInstructCLI:
    with warnings.catch_warnings():  # train.py passes argv on purpose; Lightning warns when both are present
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return cli_class(args=list(args), **kwargs)


def run_lightning_cli(args: Sequence[str]) -> SelfInstructCLI:
    """Run a LightningCLI subcommand (``["fit", "-c", "a.yaml", "--trainer.max_epochs", "3"]``); return the CLI.

    A bad key or value raises an :class:`InputError` naming the key and the YAML file and line that set it
    (:mod:`pipeline.config_errors`), instead of the subcommand's usage (about 130 lines) before the error.
    """
    no_exit = {"exit_on_error": False}
    try:
        return _quiet_cli(SelfInstructCLI, args, parser_kwargs={
            **no_exit, **{name: no_exit for name in LightningCLI.subcommands()}})
    except ArgumentError as err:
        raise parse_error(str(err), args, [], args[0] if args else "fit") from None


def parse_lightning_config(args: Sequence[str]) -> Namespace:
    """The resolved config of ``args`` without loading a model or reading data (for checks and tests)."""
    return _quiet_cli(_ParseOnlyCLI, args).config


def fit_selfinstruct(*configs: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()) -> Path:
    """Instruction-tune and return the folder of the best model (safetensors + tokenizer) for stage 2.

    ``configs`` are YAML files and/or dicts in the YAML's shape, composed in order (later wins), then
    ``overrides`` such as ``"--trainer.max_epochs=3"`` or ``"--ckpt_path=last"``. This is exactly
    ``python train.py fit -c a.yaml -c b.yaml --trainer.max_epochs=3``.
    """
    args = ["fit"]
    for config in configs:
        args += ["--config", json.dumps(dict(config)) if isinstance(config, Mapping) else str(config)]
    cli = run_lightning_cli([*args, *overrides])
    saver = next(cb for cb in cli.trainer.callbacks if isinstance(cb, SaveBestPretrained))
    if saver.saved_path is None:
        raise RuntimeError("fit ended without saving a model (fast_dev_run, or training stopped before its end)")
    return saver.saved_path
