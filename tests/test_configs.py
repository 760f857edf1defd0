"""Every YAML under configs/ parses against the code, so configs cannot drift from the signatures they feed.

Each folder has one parser (``PARSERS``): Lightning fragments (fit, model, trainer) go through the
LightningCLI parser of ``train.py fit`` composed on a minimal base, stage-command configs through
that command's parser, prompt files through their dataclass. A folder without a parser fails the
test: register one (e.g. ``"profiles": <the pipeline's parser>``) when adding a config folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from core.paper import PAPER_TUNING, TuningSettings
from pipeline.commands import command_parser
from pipeline.fit import parse_lightning_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# required data paths, so that a fragment that does not set them still parses (nothing is read)
FIT_BASE = json.dumps({"data": {"init_args": {"kept_file": "kept.jsonl", "dataset": {"path": "beir"}}}})


def parse_lightning(path: Path) -> None:
    parse_lightning_config(["fit", "--config", FIT_BASE, "--config", str(path)])


def parse_stage_command(command: str) -> Callable[[Path], None]:
    def parse(path: Path) -> None:
        command_parser(command).parse_args(["--config", str(path)])

    return parse


def parse_dataclass(module: str, name: str) -> Callable[[Path], None]:
    """A YAML file holding the fields of one dataclass; building it runs the dataclass's own checks."""
    def parse(path: Path) -> None:
        from jsonargparse import ArgumentParser

        parser = ArgumentParser()
        parser.add_class_arguments(getattr(importlib.import_module(module), name))
        parser.instantiate_classes(parser.parse_path(str(path)))

    return parse


def parse_data_fragment(path: Path) -> None:
    """A configs/data/ fragment composes onto a full pipeline profile (the paper's) and replaces its data."""
    base = CONFIGS / "profiles" / "paper-flan-t5-base.yaml"
    config = command_parser("pipeline").parse_args(["--config", str(base), "--config", str(path)])
    assert str(config.data.path) == yaml.safe_load(path.read_text())["data"]["path"]


def parse_budget_layer(path: Path) -> None:
    """A configs/budget/ layer composes onto the offline profile and changes only what it names."""
    base = CONFIGS / "profiles" / "offline.yaml"
    parser = command_parser("pipeline")
    plain, layered = (parser.parse_args(args) for args in (["--config", str(base)],
                                                           ["--config", str(base), "--config", str(path)]))
    layer = yaml.safe_load(path.read_text())
    assert layered.fit.trainer == {**(plain.fit.trainer or {}), **layer["fit"]["trainer"]}
    assert layered.generation.decoding.num_samples == layer["generation"]["decoding"]["num_samples"]
    assert layered.fit.configs == plain.fit.configs and layered.rao_blackwell == plain.rao_blackwell
    assert layered.data == plain.data and layered.filter == plain.filter and layered.embed == plain.embed


PARSERS: dict[str, Callable[[Path], None]] = {
    "budget": parse_budget_layer,
    "fit": parse_lightning,
    "model": parse_lightning,
    "trainer": parse_lightning,
    "baselines": parse_stage_command("baselines"),
    "prompts": parse_dataclass("datamodules.prompts", "PromptTemplates"),
    "filter": parse_dataclass("retrieval.filter", "FilterConfig"),
    "profiles": parse_stage_command("pipeline"),
    "data": parse_data_fragment,
}
"""configs/<folder> -> a function that raises when a YAML file there does not fit the code."""


def _yaml_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(path: Path) -> None:
    folder = path.relative_to(CONFIGS).parts[0]
    if folder not in PARSERS:
        pytest.fail(f"configs/{folder}/ has no parser in tests/test_configs.py PARSERS; register the parser its "
                    "YAML files are meant for")
    PARSERS[folder](path)


def test_fragments_compose_with_each_preset_and_profile() -> None:
    """selfinstruct.yaml + a trainer preset + a model profile: later files win, nothing is lost."""
    fit = CONFIGS / "fit" / "selfinstruct.yaml"
    trainers, models = sorted((CONFIGS / "trainer").glob("*.yaml")), sorted((CONFIGS / "model").glob("*.yaml"))
    pairs = zip(trainers, itertools.cycle(models)) if len(trainers) >= len(models) else \
        zip(itertools.cycle(trainers), models)  # every preset and every profile at least once (parses are slow)
    for trainer, model in pairs:
        config = parse_lightning_config(["fit", "--config", FIT_BASE, "--config", str(fit), "--config", str(trainer),
                                         "--config", str(model)]).fit
        expected_model = yaml.safe_load(model.read_text())["model"]["init_args"]
        for key, value in expected_model.items():
            assert config.model.init_args[key] == value, (trainer.name, model.name, key)
        assert config.trainer.accelerator == yaml.safe_load(trainer.read_text())["trainer"]["accelerator"]
        assert config.trainer.max_epochs == PAPER_TUNING.max_epochs
        assert config.early_stopping.patience == PAPER_TUNING.patience


def _paper_settings(config) -> dict:
    return {"optimizer": config.model.init_args.optimizer, "learning_rate": config.model.init_args.learning_rate,
            "batch_size": config.data.init_args.batch_size, "max_epochs": config.trainer.max_epochs,
            "monitor": config.early_stopping.monitor, "patience": config.early_stopping.patience}


def test_defaults_are_the_papers_written_once(tmp_path: Path) -> None:
    """The paper's settings come from core.paper alone: the same without any YAML and with selfinstruct.yaml,
    which does not restate them."""
    config = parse_lightning_config(["fit", "--config", FIT_BASE, "--trainer.default_root_dir", str(tmp_path)]).fit
    assert _paper_settings(config) == dataclasses.asdict(PAPER_TUNING)
    assert PAPER_TUNING == TuningSettings(optimizer="adafactor", learning_rate=1e-4, batch_size=16, max_epochs=30,
                                          monitor="val/loss", patience=5)  # Zeng et al. 2024
    with_yaml = parse_lightning_config(["fit", "--config", FIT_BASE, "--config",
                                        str(CONFIGS / "fit" / "selfinstruct.yaml")]).fit
    assert _paper_settings(with_yaml) == dataclasses.asdict(PAPER_TUNING)
    restated = yaml.safe_load((CONFIGS / "fit" / "selfinstruct.yaml").read_text())
    flat = json.dumps(restated)
    assert not any(f'"{key}"' in flat for key in ("optimizer", "learning_rate", "batch_size", "max_epochs",
                                                  "patience", "monitor"))
    assert config.model.class_path == "lightning_modules.seq2seq.Seq2SeqModule"
    assert config.early_stopping.mode == "min"
    assert (config.checkpoint.monitor, config.checkpoint.save_top_k) == ("val/loss", 1)
    assert (config.last_checkpoint.monitor, config.last_checkpoint.filename) == (None, "last")
    assert config.trainer.logger.class_path == "callbacks.wandb_logger.OfflineFirstWandbLogger"
    # run-directory layout and safe checkpoint loading are resolved before anything is built
    assert config.checkpoint.dirpath == config.last_checkpoint.dirpath == str(tmp_path.resolve() / "checkpoints")
    assert config.trainer.logger.init_args.save_dir == str(tmp_path.resolve() / ".")
    assert config.weights_only is True


def test_unknown_key_wrong_type_and_save_last_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_lightning_config(["fit", "--config", FIT_BASE, "--model.init_args.learning_rat", "0.1"])
    with pytest.raises(SystemExit):
        parse_lightning_config(["fit", "--config", FIT_BASE, "--data.init_args.batch_size", "sixteen"])
    with pytest.raises(ValueError, match="save_last must stay false"):
        parse_lightning_config(["fit", "--config", FIT_BASE, "--checkpoint.save_last", "true"])


def test_the_offline_profile_names_minilm_by_hub_name_and_gets_the_packaged_copy() -> None:
    from helpers import minilm_path
    from lightning_modules.loading import resolve_model_source

    profile = yaml.safe_load((CONFIGS / "model" / "minilm-warmstart.yaml").read_text())
    name = profile["model"]["init_args"]["warm_start_encoder"]
    assert not Path(name).exists()  # a name, not an install-dependent path
    assert resolve_model_source(name) == str(minilm_path().resolve())  # HF_HUB_OFFLINE=1: no hub involved
