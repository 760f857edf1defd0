"""Every ``train.py`` command, in one table: its name, one line of help, and the function that runs it.

Why targets are ``"module:function"`` strings: ``train.py --help`` and a command's own parser must not pay
for importing torch, Lightning and transformers for every other command; the named function is imported
when its command runs. Each target is a plain ``def`` (grep finds it). The pipeline's stage commands run
:func:`pipeline.pipeline.run_pipeline` with ``stages`` fixed to that stage, so they take the pipeline's
options minus ``stages``. ``fit``/``validate``/``test``/``predict`` go to Lightning's CLI.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.registry import Registry

PIPELINE = "pipeline.pipeline:run_pipeline"


@dataclass(frozen=True)
class Command:
    summary: str
    """One line, shown by ``train.py --help``."""
    target: str
    """``module:function``; for a LightningCLI subcommand, the function that runs LightningCLI."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Arguments the command sets itself (left out of its options)."""
    lightning: bool = False
    """A LightningCLI subcommand: the arguments go to LightningCLI, the command name first."""

    def function(self) -> Callable[..., Any]:
        module_name, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), name)


COMMANDS: Registry[Command] = Registry("command")
for name, command in {
    "pipeline": Command("every stage in one run directory, skipping those already done", PIPELINE),
    "data": Command("stage: load and check the BEIR folder, downsample, record the kept ids", PIPELINE,
                    {"stages": ["data"]}),
    "stage1": Command("stage: synthetic questions and keywords from the configured source", PIPELINE,
                      {"stages": ["stage1"]}),
    "filter": Command("stage: quality-filter stage 1's outputs; kept records and a report", PIPELINE,
                      {"stages": ["filter"]}),
    "tune": Command("stage: instruction-tune the model on the kept records (LightningCLI fit)", PIPELINE,
                    {"stages": ["tune"]}),
    "stage2": Command("stage: generate again with the tuned model", PIPELINE, {"stages": ["stage2"]}),
    "filter2": Command("stage: filter stage 2's outputs", PIPELINE, {"stages": ["filter2"]}),
    "embed": Command("stage: embed documents, sentences, queries and synthetic texts", PIPELINE,
                     {"stages": ["embed"]}),
    "index": Command("stage: the run's index, Rao-Blackwellised vectors in <run_dir>/index/ (a prediction loop)",
                     PIPELINE, {"stages": ["index"]}),
    "evaluate": Command("stage: Rao-Blackwellise, search and score; the results table and sweep", PIPELINE,
                        {"stages": ["evaluate"]}),
    "search": Command("search an index with a queries file or one query; TREC run, metrics with qrels",
                      "pipeline.search:run_search"),
    "baselines": Command("BM25 and corpus-only dense retrieval on one BEIR split", "pipeline.baselines:run_baselines"),
    "downsample": Command("write a seeded slice of a BEIR folder", "pipeline.downsample:downsample_command"),
    "filter-file": Command("filter a synthetic file made elsewhere against a BEIR corpus",
                           "pipeline.filter_stage:filter_command"),
    "fit": Command("LightningCLI: instruction-tune a generator on kept records", "pipeline.fit:run_lightning_cli",
                   lightning=True),
    "validate": Command("LightningCLI: the validation loss of a generator", "pipeline.fit:run_lightning_cli",
                        lightning=True),
    "test": Command("LightningCLI test (the self-instruct DataModule serves fit and validate only)",
                    "pipeline.fit:run_lightning_cli", lightning=True),
    "predict": Command("LightningCLI predict (generation runs through the pipeline's stages)",
                       "pipeline.fit:run_lightning_cli", lightning=True),
}.items():
    COMMANDS.add(name, command)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python train.py <command> [-c CONFIG.yaml ...] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {COMMANDS.get(name).summary}" for name in COMMANDS]
    lines += ["", "`python train.py <command> --help` lists a command's options."]
    return "\n".join(lines)


def command_parser(name: str) -> Any:
    """The jsonargparse parser of a function command, built from its function's signature."""
    from jsonargparse import ActionConfigFile, ArgumentParser  # with the command, like its function (see above)

    command = COMMANDS.get(name)
    function = command.function()
    parser = ArgumentParser(prog=f"train.py {name}", description=command.summary, env_prefix="SIR",
                            default_env=False, exit_on_error=False)  # errors: parse_command's one line
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config; repeat to compose fragments")
    parser.add_function_arguments(function, fail_untyped=True, skip=set(command.fixed))
    return parser


def parse_command(name: str, args: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments ``args`` give the command's function (the command's fixed ones included).

    A bad key or value raises an :class:`InputError` naming the key and the YAML file and line that set it
    (:mod:`pipeline.config_errors`), instead of jsonargparse's usage.
    """
    from jsonargparse import ArgumentError

    from pipeline.config_errors import parse_error, parser_keys

    parser = command_parser(name)
    try:
        config = parser.parse_args(list(args))
        kwargs = parser.instantiate(config).as_dict()
    except (ArgumentError, ValueError, TypeError) as err:  # a bad key, or a config dataclass rejected a value
        raise parse_error(str(err), args, parser_keys(parser), name) from None
    kwargs.pop("config", None)
    kwargs.pop("__path__", None)
    return {**kwargs, **COMMANDS.get(name).fixed}


def named_run_dir(name: str, args: Sequence[str]) -> str | None:
    """The run directory a pipeline command's arguments name (``--run_dir``, else a ``-c`` file's ``run_dir:``),
    read without the parser (which imports torch) for ``run_lock.check_free``; None when none is named."""
    if COMMANDS.get(name).target != PIPELINE:
        return None
    found = None
    for flag, value in zip(args, [*args[1:], None]):
        if flag in ("-c", "--config") and value is not None and os.path.isfile(value):
            import yaml

            with contextlib.suppress(yaml.YAMLError, OSError):
                config = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
                if isinstance(config, dict) and isinstance(config.get("run_dir"), str):
                    found = config["run_dir"]
        elif flag == "--run_dir" and value is not None:
            found = value
        elif flag.startswith("--run_dir="):
            found = flag.partition("=")[2]
    return found


def run_command(name: str, args: Sequence[str]) -> Any:
    """Parse ``args`` for command ``name`` and run it."""
    command = COMMANDS.get(name)
    if command.lightning:
        return command.function()([name, *args])
    return command.function()(**parse_command(name, args))
