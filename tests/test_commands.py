"""The command table: every command listed by ``train.py --help``, each resolving to a named function whose
signature builds its parser; the stage commands are the pipeline's stages."""

from __future__ import annotations

import inspect

import pytest

import train
from pipeline.commands import COMMANDS, command_parser, parse_command
from pipeline.config import STAGES
from pipeline.pipeline import run_pipeline

TINY_BEIR = "tests/data/tiny_beir"


def test_help_lists_every_command_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    train.main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        (line,) = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) > 2, line  # a description follows the name
    assert set(COMMANDS) >= {"pipeline", *STAGES, "baselines", "downsample", "filter-file", "fit", "validate",
                             "test", "predict"}


def test_every_command_names_a_defined_function() -> None:
    for name in COMMANDS:
        command = COMMANDS.get(name)
        function = command.function()
        assert inspect.isfunction(function) and command.target.endswith(f":{function.__name__}"), name
        assert function.__module__ == command.target.partition(":")[0], name  # defined there, not re-exported


def test_stage_commands_take_the_pipelines_options_minus_stages() -> None:
    assert [name for name in COMMANDS if COMMANDS.get(name).fixed.get("stages")] == list(STAGES)
    pipeline_options = {action.dest for action in command_parser("pipeline")._actions}
    for stage in STAGES:
        assert COMMANDS.get(stage).function() is run_pipeline
        options = {action.dest for action in command_parser(stage)._actions}
        assert options == pipeline_options - {"stages"}, stage
        assert parse_command(stage, ["--data.path", TINY_BEIR, "--model", "lightning_modules.seq2seq.Seq2SeqModule",
                                     "--model.init_args.model_name_or_path", "unused"])["stages"] == [stage]
    assert set(inspect.signature(run_pipeline).parameters) - {"stages"} <= {o.split(".")[0] for o in options}


def test_an_unknown_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["embedd"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'embedd'" in err and "filter-file" in err
