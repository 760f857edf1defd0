"""Tables of samples (synthetic texts kept and dropped, generations, retrieved documents) for people to read.

Why one function: every stage has examples worth eyeballing, and a number in a report is only
trusted once someone has looked at what it counts. W&B shows tables interactively; a run without
W&B (or with it offline and never synced) still needs them, so the table is always written as
Markdown into the run directory too, and sent to every WandbLogger among the loggers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from core.io import write_text_atomic

TABLES_DIR = "tables"


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, line breaks shown as <br>."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_path(run_dir: Path, key: str) -> Path:
    """Where the Markdown copy of table ``key`` goes ("filter/samples" -> tables/filter-samples.md)."""
    name = re.sub(r"[^\w.-]+", "-", key).strip("-") or "table"
    return Path(run_dir) / TABLES_DIR / f"{name}.md"


def log_table(key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], run_dir: Path,
              loggers: Logger | Iterable[Logger] | None = None) -> Path:
    """Write the table to ``run_dir/tables/<key>.md`` and log it to every WandbLogger in ``loggers``.

    Other loggers (CSV, TensorBoard) have no table type; the Markdown file is their copy. Every row
    must have one value per column. Returns the Markdown file's path.
    """
    columns = list(columns)
    rows = [list(row) for row in rows]
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"table '{key}': row {i} has {len(row)} values for {len(columns)} columns {columns}")
    path = table_path(run_dir, key)
    write_text_atomic(path, f"# {key}\n\n" + markdown_table(columns, rows))
    if isinstance(loggers, Logger):
        loggers = [loggers]
    for logger in loggers or ():
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=rows)
    return path
