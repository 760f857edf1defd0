"""Instruction templates for the two generation tasks, checked when they are configured.

Why checked up front: a typo in a placeholder (``{txt}``) would otherwise surface as a
``KeyError`` hours into a generation run, or, worse, a template without ``{text}`` would
run to the end and produce questions about nothing. Templates come from YAML
(``configs/prompts/flan.yaml`` holds the defaults below).

The defaults follow our reading of Zeng et al. (2024): an instruction-tuned FLAN-T5 is asked
to write a question that the passage answers, and to summarise the passage with keywords.
The instruction comes *before* the passage so that truncating a long input to the model's
token limit cuts the end of the passage, never the instruction.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from core.tasks import TASKS

PLACEHOLDERS = frozenset({"title", "text"})

DEFAULT_QUESTION = ("Write a question that is answered by the following passage.\n\n"
                    "Title: {title}\nPassage: {text}")
DEFAULT_KEYWORDS = ("Summarize the following passage with a list of keywords, separated by commas.\n\n"
                    "Title: {title}\nPassage: {text}")


def _placeholders(task: str, template: str) -> set[str]:
    """Names used in ``template``; anything but a plain ``{title}``/``{text}`` is an error naming the task."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:  # a lone "{" or "}"
        raise ValueError(f"prompt template '{task}' is malformed ({err}); write a literal brace as '{{{{' or "
                         "'}}}}'") from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise ValueError(f"prompt template '{task}' has unknown placeholder '{{{name}}}'; allowed: "
                             f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}")
        if spec or conversion:
            raise ValueError(f"prompt template '{task}': placeholder '{{{name}}}' may not carry a format "
                             "spec or conversion; use the plain name")
        names.add(name)
    return names


@dataclass
class PromptTemplates:
    """One instruction template per task, with ``{title}`` and ``{text}`` placeholders."""

    question: str = DEFAULT_QUESTION
    """Asks for a question the passage answers."""
    keywords: str = DEFAULT_KEYWORDS
    """Asks for a comma-separated keyword summary of the passage."""

    def __post_init__(self) -> None:
        for task in TASKS:
            template = getattr(self, task)
            if not isinstance(template, str):
                raise ValueError(f"prompt template '{task}' must be a string, got {type(template).__name__}")
            if "text" not in _placeholders(task, template):
                raise ValueError(f"prompt template '{task}' has no {{text}} placeholder, so the model would never "
                                 "see the document; add {text}")

    def render(self, task: str, title: str, text: str) -> str:
        """The prompt for ``task`` on one document (an empty title leaves an empty ``Title:`` line)."""
        if task not in TASKS:
            raise ValueError(f"unknown task '{task}'; expected one of {', '.join(TASKS)}")
        return getattr(self, task).format(title=title, text=text)
