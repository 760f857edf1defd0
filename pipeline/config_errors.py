"""Configuration errors that say where: the YAML file, its line and the key, in one line, not the usage.

Why: a profile is composed of several ``-c`` fragments and ``--key value`` options; jsonargparse names the
key but not the file, and prints its whole usage (about 100 lines for the pipeline) before the one line
that matters. A key set in several places is reported where it was set last (the value that counts).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from core.io import InputError

_KEY_PATTERNS = (
    re.compile(r"Group '(?P<group>[\w.]+)' does not accept option '(?P<option>[\w.]+)'"),
    re.compile(r"Subcommand '\w+' does not accept option '(?P<key>[\w.]+)'"),
    re.compile(r'Parser key "(?P<group>[\w.]+)":.*?Option \'(?P<option>\w+)\' is not accepted', re.S),
    re.compile(r'Parser key "(?P<key>[\w.]+)"'),
    re.compile(r"unrecognized arguments: --(?P<key>[\w.]+)"),
    re.compile(r"^(?P<key>[a-z_]\w*(\.\w+)+): "),  # a config dataclass's own check names its key first
)


def error_key(message: str) -> str | None:
    """The config key a jsonargparse error message is about, or None."""
    for pattern in _KEY_PATTERNS:
        match = pattern.search(message)
        if match is None:
            continue
        found = match.groupdict()
        if found.get("key"):
            return found["key"]
        group, option = found["group"], found["option"]
        return f"{group}.init_args.{option}" if "Option '" in match.group(0) else f"{group}.{option}"
    return None


def key_line(text: str, parts: list[str]) -> int | None:
    """The 1-based line of the nested key ``parts`` in YAML ``text``, or None when it is not there."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in parts:
        if not isinstance(node, yaml.MappingNode):
            return None
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None:
            return None
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _config_file(arg: str) -> Path | None:
    """``arg`` as a config file, or None for inline YAML/JSON (which may be too long to be a file name)."""
    try:
        return Path(arg) if Path(arg).is_file() else None
    except OSError:
        return None


def where_set(args: Sequence[str], key: str) -> tuple[str, int | None] | None:
    """Where in ``args`` the key was set last: ``(YAML file, line)``, ``("-c text", line)`` for inline YAML, or
    ``("the command line", None)`` for a ``--key value`` option; None when it was not set there."""
    parts, found = key.split("."), None
    for i, arg in enumerate(args):
        previous = args[i - 1] if i else ""
        if previous in ("-c", "--config"):
            path = _config_file(arg)
            line = key_line(path.read_text(encoding="utf-8-sig") if path else arg, parts)
            if line is not None:
                found = (str(path) if path else "-c text", line)
        elif arg.startswith("--"):
            name = arg[2:].partition("=")[0]
            if name == key or key.startswith(f"{name}."):
                found = ("the command line", None)
    return found


def _close_keys(key: str, known: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)


def located(err: InputError, args: Sequence[str]) -> InputError:
    """``err`` (a key named, no file) with the file and line in ``args`` that set the key, when found."""
    if err.path is not None or err.field is None:
        return err
    where = where_set(args, err.field)
    if where is None or where[0] == "the command line":
        return err
    return InputError(err.message, path=where[0], line=where[1], field=err.field, hint=err.hint)


def parse_error(message: str, args: Sequence[str], known_keys: Iterable[str], command: str) -> InputError:
    """A one-line :class:`InputError` for a failed parse: the key, where it was set, a close known key."""
    text = " ".join(message.split())
    key = error_key(message)
    if key is not None:  # the key is named once, as the field
        text = text.removeprefix(f'Parser key "{key}": ').removeprefix(f"{key}: ")
    hints = []
    if key is not None:
        close = _close_keys(key, known_keys)
        if close and close[0] != key:
            hints.append(f"did you mean '{close[0]}'?")
    hints.append(f"`train.py {command} --help` lists the options")
    where = where_set(args, key) if key is not None else None
    path, line = (None, None) if where is None or where[0] == "the command line" else where
    return InputError(text, path=path, line=line, field=key, hint="; ".join(hints))


def parser_keys(parser: Any) -> list[str]:
    """Every option key a jsonargparse parser knows (``embed.batch_size``...), for suggestions."""
    return [action.dest for action in parser._actions if getattr(action, "dest", None) not in (None, "help")]
