"""The results table every evaluation writes: ``results.json`` for programs, ``results.md`` for people.

Why one module: baselines, the Rao-Blackwell variants and the pipeline each add rows to the
same table of one run (one dataset, one split). Rows are keyed by system name, so a stage
that is rerun replaces its own rows and leaves the others; both files are written atomically
so a crash never leaves a table that disagrees with itself.

``results.json`` schema::

    {"dataset": "scifact", "split": "test",
     "rows": [{"system": "bm25", "ndcg@10": 0.6780, "mrr@100": ..., ..., <extra keys>}]}

Metric keys are lower-case ``name@k``; any other key of a row is an ``extra`` (configuration,
timings) that the JSON keeps and the markdown table leaves out, except ``vs`` (paired comparisons with
the corpus-only rows, :mod:`retrieval.significance`), which the markdown shows as a marker column.

Rows that carry per-query values (``ResultRow.per_query``) also write ``per_query.json`` beside the
table: the table's metric columns (and each ``vs`` metric) for every query, so any difference in the
table can be tested again::

    {"dataset": ..., "split": ..., "metrics": ["ndcg@10", ...], "queries": ["q1", ...],
     "systems": {"bm25": {"ndcg@10": [0.63, ...], ...}, ...}}   # lists aligned with "queries"; null: not run
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io import InputError, write_json_atomic, write_text_atomic
from retrieval.significance import BASELINES, significance_marker, significance_note

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PER_QUERY_JSON = "per_query.json"
DEFAULT_COLUMNS = ("ndcg@10", "mrr@100", "recall@100")
METRIC_KEY = re.compile(r"^[a-z][a-z0-9_]*@\d+$")


@dataclass
class ResultRow:
    """One system's scores: ``metrics`` holds ``name@k`` keys, ``extra`` anything else worth keeping,
    ``per_query`` (optional) ``{query id: {name@k: value}}`` (written to ``per_query.json``)."""

    system: str
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.system or not isinstance(self.system, str):
            raise ValueError(f"a result row needs a non-empty system name, got {self.system!r}")
        bad = [key for key in self.metrics if not METRIC_KEY.match(key)]
        if bad:
            raise ValueError(f"row '{self.system}': metric keys must be lower-case name@k, got {bad}")
        clash = sorted(key for key in self.extra if key == "system" or METRIC_KEY.match(key))
        if clash:
            raise ValueError(f"row '{self.system}': extra keys {clash} look like 'system' or a metric name@k")

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, **{k: float(v) for k, v in self.metrics.items()}, **self.extra}


def merge_rows(old: Iterable[ResultRow], new: Iterable[ResultRow]) -> list[ResultRow]:
    """Old rows in their order with same-named ones replaced by the new; new systems appended."""
    merged = {row.system: row for row in old}
    for row in new:
        merged[row.system] = row
    return list(merged.values())


def _format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}"


def format_table(rows: Sequence[ResultRow], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A markdown table: one line per system, the chosen metric columns, 4 decimals (— when absent)."""
    marked = any("vs" in row.extra for row in rows)
    header = ["system", *columns, *([f"vs {' / '.join(BASELINES)}"] if marked else [])]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(columns) + (["---"] if marked else [])) + "|"]
    for row in rows:
        cells = [row.system, *(_format_value(row.metrics.get(column)) for column in columns)]
        if marked:
            cells.append(significance_marker(row.extra["vs"]) if "vs" in row.extra else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(run_dir: Path, dataset: str, split: str, rows: Sequence[ResultRow],
                  columns: Sequence[str] = DEFAULT_COLUMNS, diagnostics: dict[str, Any] | None = None) -> None:
    """Write ``results.json`` and ``results.md`` in ``run_dir`` (each atomically), replacing both.

    ``diagnostics``: facts about the corpus behind the table (units per document, coverage), kept under
    ``"diagnostics"`` in ``results.json``.

    Use :func:`update_results` to add rows to a table that other stages also write.
    """
    names = [row.system for row in rows]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate system names in the results table: {duplicates}")
    run_dir = Path(run_dir)
    payload = {"dataset": dataset, "split": split, "rows": [row.to_json() for row in rows]}
    if diagnostics:
        payload["diagnostics"] = diagnostics
    per_query = _per_query_payload(dataset, split, rows, columns)
    if per_query is not None:  # first, so a table never names per-query data that is not there
        write_json_atomic(run_dir / PER_QUERY_JSON, per_query)
    else:
        (run_dir / PER_QUERY_JSON).unlink(missing_ok=True)  # stale: no row of this table has per-query values
    write_json_atomic(run_dir / RESULTS_JSON, payload)
    notes = "".join(f"\n{note}\n" for note in _notes(rows) if note)
    write_text_atomic(run_dir / RESULTS_MD, f"# {dataset} ({split})\n\n{format_table(rows, columns)}\n{notes}")


def _notes(rows: Sequence[ResultRow]) -> list[str]:
    """What a reader of ``results.md`` needs below the table: the markers, and which rows are the paper's."""
    kinds = ""
    if any(row.system.startswith("rb-") for row in rows):
        kinds = ("Rows: `rb-<method>-doc-*` and `rb-<method>-sentence-*` are the paper's two levels of "
                 "Rao-Blackwellisation; the `multi` level (`rb-*-multi-*`, `dense-multi`) and `expansion-*` are this "
                 "project's extension and baselines; `docs/method.md` says which weighting methods and settings "
                 "depart from the paper.")
    encoders = next((f"Encoders: {row.extra['before_tuning']}." for row in rows if "before_tuning" in row.extra), "")
    chosen = " ".join(f"`{row.system}` is the setting the pipeline chose, by {row.extra['chosen_by']}: "
                      f"{row.extra.get('setting')}." for row in rows if "chosen_by" in row.extra)
    return [significance_note([row.extra["vs"] for row in rows if "vs" in row.extra]), kinds, encoders, chosen]


def _per_query_payload(dataset: str, split: str, rows: Sequence[ResultRow],
                       columns: Sequence[str]) -> dict[str, Any] | None:
    """``per_query.json``'s content: the table's columns and every ``vs`` metric, per query and system."""
    with_values = [row for row in rows if row.per_query]
    if not with_values:
        return None
    compared = [entry["metric"] for row in rows for entry in row.extra.get("vs", {}).values()]
    metrics = [m for m in dict.fromkeys([*columns, *compared])
               if any(m in values for row in with_values for values in row.per_query.values())]
    queries = sorted({query for row in with_values for query in row.per_query})
    systems = {row.system: {m: [row.per_query[q].get(m) if q in row.per_query else None for q in queries]
                            for m in metrics} for row in with_values}
    return {"dataset": dataset, "split": split, "metrics": metrics, "queries": queries, "systems": systems}


def read_per_query(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``per_query.json`` back as ``{system: {query id: {metric: value}}}`` (queries a system did not run left out)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        queries, metrics = payload["queries"], payload["metrics"]
        return {system: {q: {m: values[m][i] for m in metrics if values[m][i] is not None}
                         for i, q in enumerate(queries) if any(values[m][i] is not None for m in metrics)}
                for system, values in payload["systems"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
        raise InputError(f"not a per-query table ({type(err).__name__}: {err})", path=path,
                         hint="delete it and rerun the evaluation") from None


def read_results(path: Path) -> tuple[str, str, list[ResultRow]]:
    """Read a ``results.json`` back as ``(dataset, split, rows)``; a malformed file names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, hint="run the evaluation first or check the run directory")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not valid JSON ({err})", path=path, hint="delete it and rerun the evaluation") from None
    if not isinstance(payload, dict):
        raise InputError("expected a JSON object", path=path)
    for key in ("dataset", "split", "rows"):
        if key not in payload:
            raise InputError("missing", path=path, field=key)
    if not isinstance(payload["rows"], list):
        raise InputError("expected a list", path=path, field="rows")
    rows = []
    for index, item in enumerate(payload["rows"]):
        where = f"rows[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("system"), str):
            raise InputError("expected an object with a string 'system'", path=path, field=where)
        metrics, extra = {}, {}
        for key, value in item.items():
            if key == "system":
                continue
            if METRIC_KEY.match(key):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise InputError(f"metric must be a number, got {value!r}", path=path, field=f"{where}.{key}")
                metrics[key] = float(value)
            else:
                extra[key] = value
        rows.append(ResultRow(item["system"], metrics, extra))
    per_query_path = path.with_name(PER_QUERY_JSON)
    if per_query_path.is_file():  # keep each row's per-query values through a merge
        per_query = read_per_query(per_query_path)
        for row in rows:
            row.per_query = per_query.get(row.system)
    return str(payload["dataset"]), str(payload["split"]), rows


def update_results(run_dir: Path, dataset: str, split: str, rows: Sequence[ResultRow],
                   columns: Sequence[str] = DEFAULT_COLUMNS) -> list[ResultRow]:
    """Merge ``rows`` into the run's table (same system name: replaced) and rewrite both files.

    Refuses a table of another dataset or split: mixing them would make one table compare
    numbers that are not comparable. Returns the full merged table.
    """
    path = Path(run_dir) / RESULTS_JSON
    existing: list[ResultRow] = []
    if path.exists():
        old_dataset, old_split, existing = read_results(path)
        if (old_dataset, old_split) != (dataset, split):
            raise InputError(f"holds results for {old_dataset} ({old_split}), not {dataset} ({split})", path=path,
                             hint="choose another output directory, or delete the old results")
    merged = merge_rows(existing, rows)
    write_results(run_dir, dataset, split, merged, columns)
    return merged
