"""``train.py fit`` end to end on a tiny random T5: learning, early stopping, resume, saving, DDP, safe loading."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors.torch import load_file

from callbacks.wandb_logger import OfflineFirstWandbLogger, choose_wandb_mode
from helpers import make_tiny_t5, one_thread  # noqa: F401 (a fixture)
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline.fit import fit_selfinstruct, run_lightning_cli

ROOT = Path(__file__).resolve().parents[1]
FIT_CONFIGS = [ROOT / "configs" / "fit" / "selfinstruct.yaml", ROOT / "configs" / "fit" / "csv_logger.yaml"]
KEPT = ROOT / "tests" / "data" / "selfinstruct" / "kept.jsonl"  # 20 documents x 2 tasks
TINY_BEIR = ROOT / "tests" / "data" / "tiny_beir"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_t5(tmp_path_factory.mktemp("model") / "t5")


def _config(run_dir: Path, model: Path, *, lr: float, max_epochs: int, patience: int = 5, kept: Path = KEPT,
            val_fraction: float = 0.3, batch_size: int = 4) -> dict:
    """With the default kept file: 14 training documents (28 records), 6 validation documents (12 records)."""
    return {"trainer": {"default_root_dir": str(run_dir), "max_epochs": max_epochs, "accelerator": "cpu",
                        "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                        "log_every_n_steps": 1},
            "model": {"init_args": {"model_name_or_path": str(model), "learning_rate": lr,
                                    "decoding": {"max_new_tokens": 4}}},
            "data": {"init_args": {"kept_file": str(kept), "dataset": {"path": str(TINY_BEIR)},
                                   "val_fraction": val_fraction, "batch_size": batch_size,
                                   "max_input_length": 48, "cache_dir": str(run_dir.parent / "datasets-cache")}},
            "early_stopping": {"patience": patience},
            "generation_samples": {"num_examples": 2}}


def _args(config: dict, *extra: str) -> list[str]:
    args = ["fit"]
    for path in FIT_CONFIGS:
        args += ["--config", str(path)]
    return [*args, "--config", json.dumps(config), *extra]


def _val_losses(run_dir: Path, version: int) -> dict[int, float]:
    with open(run_dir / "logs" / "csv" / f"version_{version}" / "metrics.csv", encoding="utf-8") as handle:
        return {int(row["epoch"]): float(row["val/loss"]) for row in csv.DictReader(handle) if row["val/loss"]}


def _train_losses(run_dir: Path, version: int) -> list[float]:
    with open(run_dir / "logs" / "csv" / f"version_{version}" / "metrics.csv", encoding="utf-8") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def _adafactor_steps(optimizer_state: dict) -> set[int]:
    return {int(state["step"]) for state in optimizer_state["state"].values()}


def test_overfitting_a_few_examples_lowers_the_loss_and_saves_the_best_model(tmp_path: Path, tiny_t5: Path) -> None:
    few = tmp_path / "few.jsonl"  # two documents: one to train on, one to validate on
    few.write_text("".join(KEPT.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    run_dir = tmp_path / "run"
    model_dir = fit_selfinstruct(*FIT_CONFIGS, _config(run_dir, tiny_t5, lr=3e-2, max_epochs=12, kept=few,
                                                       val_fraction=0.5, patience=12))  # unseen val document

    losses = _val_losses(run_dir, 0)
    assert sorted(losses) == list(range(12))
    train_losses = _train_losses(run_dir, 0)
    assert len(train_losses) == 12 and train_losses[-1] < 0.5 * train_losses[0], train_losses
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["best_val_loss"] == pytest.approx(min(losses.values()), rel=1e-5)
    assert summary["model_dir"] == str(model_dir) == str(run_dir.resolve() / "model")
    # the folder holds the best checkpoint's weights as safetensors, and loads back for stage 2
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    saved = load_file(model_dir / "model.safetensors")
    assert all(torch.equal(saved[key], best[f"model.{key}"]) for key in saved)
    assert not list(model_dir.glob("*.bin"))
    assert Seq2SeqModule(model_name_or_path=str(model_dir)).tokenizer.pad_token_id == 0
    # the resolved config is in the run directory and was logged once as hyperparameters
    config_text = (run_dir / "config.yaml").read_text()
    assert "learning_rate: 0.03" in config_text and f"dirpath: {run_dir.resolve() / 'checkpoints'}" in config_text
    assert "learning_rate: 0.03" in (run_dir / "logs" / "csv" / "version_0" / "hparams.yaml").read_text()
    table = (run_dir / "tables" / "fit-samples.md").read_text()
    assert table.count("| before training |") == 2 and table.count("| epoch 11 |") == 2


def test_early_stopping_stops_a_run_that_cannot_improve_and_resume_keeps_its_state(tmp_path: Path,
                                                                                 tiny_t5: Path) -> None:
    """lr 0: the validation loss never improves. Patience 3 stops at epoch 3, also across an interruption."""
    run_dir = tmp_path / "run"
    config = _config(run_dir, tiny_t5, lr=0.0, max_epochs=2, patience=3)
    first = run_lightning_cli(_args(config))
    assert first.trainer.current_epoch == 2 and first.trainer.early_stopping_callback.wait_count == 1
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    steps_per_epoch = 7  # 28 train records, batch 4
    assert _adafactor_steps(last["optimizer_states"][0]) == {2 * steps_per_epoch}

    config["trainer"]["max_epochs"] = 10  # "interrupted" after 2 of 10 epochs: resume
    second = run_lightning_cli(_args(config, "--ckpt_path=last"))
    assert sorted(_val_losses(run_dir, 1)) == [2, 3]  # continued at the next epoch, stopped after wait 3
    assert second.trainer.early_stopping_callback.stopped_epoch == 3
    assert _adafactor_steps(second.trainer.optimizers[0].state_dict()) == {4 * steps_per_epoch}
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs_run"] == 4 and summary["best_epoch"] == 0
    table = (run_dir / "tables" / "fit-samples.md").read_text()
    assert table.count("| before training |") == 2 and table.count("| epoch 3 |") == 2  # rows survived the resume


def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path: Path, tiny_t5: Path) -> None:
    run_dir = tmp_path / "run"
    config = _config(run_dir, tiny_t5, lr=0.0, max_epochs=1)
    run_lightning_cli(_args(config))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["output"] = PurePosixPath("/tmp/x")  # any class instance needs unpickling
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    config["trainer"]["max_epochs"] = 2
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_lightning_cli(_args(config, f"--ckpt_path={tampered}"))


@pytest.mark.ddp
def test_two_process_ddp_fit_on_cpu(tmp_path: Path, tiny_t5: Path) -> None:
    run_dir = tmp_path / "run"
    config = _config(run_dir, tiny_t5, lr=1e-2, max_epochs=2, batch_size=4)
    command = [sys.executable, str(ROOT / "train.py"), *_args(config), "--trainer.strategy=ddp",
               "--trainer.devices=2", "--trainer.accelerator=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in result.stderr + result.stdout
    assert sorted(_val_losses(run_dir, 0)) == [0, 1]
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["global_step"] == 2 * 7  # 28 records / (2 processes x 2 per device) = 7 steps per epoch
    assert (run_dir / "model" / "model.safetensors").is_file()
    print(f"2-process DDP fit: {time.monotonic() - started:.1f} s")


@pytest.fixture
def no_wandb_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No WANDB_MODE, no API key, an empty home: what a fresh cluster account looks like."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return tmp_path / ".netrc"


def test_wandb_mode_follows_the_config_then_wandb_mode_then_an_api_key(no_wandb_key: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_wandb_mode(None) == "offline"
    no_wandb_key.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    no_wandb_key.chmod(0o600)
    assert choose_wandb_mode(None) == "online"  # `wandb login` writes this entry
    no_wandb_key.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert choose_wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode(None) is None  # wandb.init reads WANDB_MODE itself
    assert choose_wandb_mode(True) == "offline" and choose_wandb_mode(False) == "online"


def _wandb_log_bytes(log: Path) -> bytes:
    """The run's transaction log once W&B's service has written all of it: its service process writes after
    ``finish()`` returns (seen on a fresh CI machine: only the file header at first, the whole run a moment
    later), and ``wandb.teardown()`` waits for that service instead of racing it with a deadline."""
    import wandb

    wandb.teardown()
    return log.read_bytes()


def test_wandb_offline_by_default_writes_its_run_without_network(no_wandb_key: Path, tmp_path: Path, tiny_t5: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port: any network use would fail
    monkeypatch.setenv("WANDB_NAME", "tiny-run")
    monkeypatch.setenv("WANDB_RUN_GROUP", "pipeline-42")
    run_dir = tmp_path / "run"
    config = _config(run_dir, tiny_t5, lr=1e-2, max_epochs=1)
    cli = run_lightning_cli(["fit", "--config", str(FIT_CONFIGS[0]), "--config", json.dumps(config)])  # no CSV
    logger = cli.trainer.logger
    assert isinstance(logger, OfflineFirstWandbLogger) and logger.mode == "offline"
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = offline_run.glob("run-*.wandb")
    data = _wandb_log_bytes(log)
    assert b"tiny-run" in data and b"pipeline-42" in data  # name and group from the environment
    assert b'"learning_rate":0.01' in data.replace(b" ", b"")  # the resolved config, logged as hyperparameters
    assert list((offline_run / "files" / "media" / "table" / "fit").glob("samples_*.table.json"))
