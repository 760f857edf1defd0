"""Prompt templates: defaults render the document after the instruction; bad templates fail at construction."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datamodules.prompts import TASKS, PromptTemplates

FLAN_YAML = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "flan.yaml"


def test_defaults_render_instruction_then_document() -> None:
    templates = PromptTemplates()
    for task in TASKS:
        prompt = templates.render(task, title="Glucose in mice", text="Fasting raises glucose.")
        assert "Glucose in mice" in prompt and prompt.endswith("Fasting raises glucose.")
        assert prompt.index("passage") < prompt.index("Fasting")  # truncation cuts the passage, not the instruction
    assert "question" in templates.render("question", "t", "x").lower()
    assert "keywords" in templates.render("keywords", "t", "x").lower()


def test_render_keeps_braces_in_the_document_and_literal_braces() -> None:
    templates = PromptTemplates(question="{{note}} Ask about: {text}")
    assert templates.render("question", title="", text="a {b} c") == "{note} Ask about: a {b} c"


def test_unknown_placeholder_names_template_and_placeholder() -> None:
    with pytest.raises(ValueError, match=r"'keywords'.*'\{txt\}'"):
        PromptTemplates(keywords="Keywords for {txt}")


def test_template_without_text_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'question'.*\{text\}"):
        PromptTemplates(question="Write a question about {title}.")


@pytest.mark.parametrize("template", ["Question: {text", "Question: {text} }", "{text:>10}", "{text!r}", "{}",
                                      "{0} {text}", "{text.upper}"])
def test_malformed_or_non_plain_placeholders_are_rejected(template: str) -> None:
    with pytest.raises(ValueError, match="'question'"):
        PromptTemplates(question=template)


def test_unknown_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown task 'summary'"):
        PromptTemplates().render("summary", "t", "x")


def test_flan_yaml_holds_the_defaults() -> None:
    assert PromptTemplates(**yaml.safe_load(FLAN_YAML.read_text(encoding="utf-8"))) == PromptTemplates()


def test_bad_template_in_config_fails_when_parsed(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    def command(prompts: PromptTemplates = PromptTemplates()) -> PromptTemplates:
        return prompts

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(command)
    good = parser.instantiate(parser.parse_args(["--prompts", str(FLAN_YAML)]))
    assert good.prompts == PromptTemplates()
    bad = tmp_path / "bad.yaml"
    bad.write_text("question: 'Ask about {passage}'\nkeywords: 'Keywords: {text}'\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'question'.*'\{passage\}'"):
        parser.instantiate(parser.parse_args(["--prompts", str(bad)]))
