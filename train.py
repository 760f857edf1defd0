#!/usr/bin/env python
"""The one entry point.

    python train.py pipeline -c configs/profiles/demo.yaml            # every stage, finished ones skipped
    python train.py baselines --data.path ../shared/data/scifact      # BM25 + corpus-only dense
    python train.py downsample --help                                 # seeded BEIR downsampling
    python train.py fit -c configs/fit/selfinstruct.yaml              # LightningCLI: fit/validate/test/predict

Lightning's own subcommands go to LightningCLI; the pipeline's stage commands are typed
functions whose signatures jsonargparse turns into parsers, so the same composable
``-c`` YAML fragments (``class_path``/``init_args``) drive both.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Importable command functions, resolved lazily so ``--help`` stays fast.
STAGE_COMMANDS: dict[str, str] = {
    "pipeline": "pipeline.pipeline:run_pipeline",
    **{stage: f"pipeline.pipeline:run_{stage}" for stage in
       ("data", "stage1", "filter", "tune", "stage2", "filter2", "embed", "evaluate")},
    "baselines": "retrieval.baselines:run_baselines",
    "downsample": "datamodules.downsample:downsample_command",
    "filter-file": "retrieval.filter:filter_command",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _usage() -> str:
    names = ", ".join([*STAGE_COMMANDS, *LIGHTNING_COMMANDS])
    return f"usage: python train.py <command> [-c CONFIG.yaml ...] [--key value ...]\ncommands: {names}\n" \
           f"`python train.py <command> --help` lists a command's options."


def command_parser(command: str) -> Any:
    """The jsonargparse parser of a stage command, built from its function's signature."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    function = _resolve(STAGE_COMMANDS[command])
    parser = ArgumentParser(prog=f"train.py {command}", description=(function.__doc__ or "").strip().split("\n")[0],
                            env_prefix="SIR", default_env=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config; repeat to compose fragments")
    parser.add_function_arguments(function, fail_untyped=True)
    return parser


def run_command(command: str, args: Sequence[str]) -> Any:
    """Parse ``args`` against the command function's signature and call it."""
    function = _resolve(STAGE_COMMANDS[command])
    parser = command_parser(command)
    config = parser.parse_args(list(args))
    try:
        kwargs = parser.instantiate(config).as_dict()
    except (ValueError, TypeError) as err:  # a config dataclass rejected a value: say which, no traceback
        parser.error(str(err))
    kwargs.pop("config", None)
    kwargs.pop("__path__", None)
    return function(**kwargs)


def main(argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return None
    command, rest = argv[0], argv[1:]
    if command not in LIGHTNING_COMMANDS and command not in STAGE_COMMANDS:
        print(f"unknown command '{command}'\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    from lightning_modules.loading import ModelNotAvailableError
    from retrieval.io import InputError, OutputError

    try:
        if command in LIGHTNING_COMMANDS:
            from lightning_modules.cli import run_lightning_cli

            return run_lightning_cli([command, *rest])
        return run_command(command, rest)
    except (InputError, ModelNotAvailableError, OutputError) as err:  # the message says where and what to do
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
