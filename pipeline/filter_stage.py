"""The filter as a stage and as the ``filter-file`` command: run the rules, show samples, write what was kept.

The rules themselves are ``retrieval.filter``; here they get an encoder for the round trip, their
report and a table of kept and dropped examples per rule (to ``tables/`` and W&B), and the kept records
land in the run directory, where the self-instruct DataModule and the embed stage read them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from callbacks.tables import log_table
from core.io import write_json_atomic
from datamodules.beir import BeirDataset
from datamodules.downsample import DataConfig, load_dataset_from_config
from datamodules.synthetic_files import FileFormat, load_file_source
from lightning_modules.encoder import EncoderModule
from pipeline import layout
from pipeline.embed import embed_texts
from pipeline.run_lock import run_lock
from retrieval.filter import FILTER_RULES, Embed, FilterConfig, FilterResult, filter_records
from retrieval.synthetic import SyntheticRecord, UnknownDocPolicy, write_synthetic

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["status", "rule", "doc_id", "task", "text"]


def encoder_embedder(encoder: str | EncoderModule | None) -> Embed | None:
    """The round trip's ``embed``: ``embed_texts`` with ``encoder``, loaded on first use (None: no encoder)."""
    if encoder is None:
        return None
    loaded: list[EncoderModule] = [encoder] if isinstance(encoder, EncoderModule) else []

    def embed(items: Sequence[tuple[str, str]], output: Path) -> tuple[list[str], torch.Tensor]:
        if not loaded:
            loaded.append(EncoderModule(str(encoder)))  # once, for the corpus and the texts
        return embed_texts(items, loaded[0], output)
    return embed


def sample_rows(result: FilterResult, per_group: int, seed: int) -> list[list[Any]]:
    """Up to ``per_group`` kept records and ``per_group`` dropped records per rule, for a logger table.

    Rows are ``[status, rule, doc_id, task, text]``; the draw is seeded so a rerun logs the same rows.
    """
    rng = random.Random(seed)
    groups: dict[str, list[tuple[SyntheticRecord, str]]] = {"kept": [(r, "") for r in result.kept]}
    for record, rule in result.dropped:
        groups.setdefault(rule, []).append((record, rule))
    rows = []
    for name in ("kept", *FILTER_RULES):
        members = groups.get(name, [])
        for record, rule in rng.sample(members, min(per_group, len(members))):
            rows.append(["kept" if name == "kept" else "dropped", rule, record.doc_id, record.task, record.text])
    return rows


def run_filter(records: Sequence[SyntheticRecord], dataset: BeirDataset, config: FilterConfig, run_dir: Path,
               kept_path: Path, report_path: Path, encoder: str | EncoderModule | None = None,
               loggers: Logger | Sequence[Logger] | None = None) -> dict[str, Any]:
    """Filter, log samples and counts, write the kept records to ``kept_path`` and the report to ``report_path``.

    ``encoder`` embeds for the round trip when ``config.encoder`` is null. Its vectors are cached under
    ``run_dir/cache/filter``. The report is written last: it is the stage's proof of completion.
    """
    run_dir = Path(run_dir)
    embed = encoder_embedder(config.encoder if config.encoder is not None else encoder)
    result = filter_records(records, dataset, config, embed, work_dir=run_dir / "cache" / "filter")
    log_table("filter/samples", SAMPLE_COLUMNS, sample_rows(result, config.samples_to_log, config.seed), run_dir,
              loggers)
    if isinstance(loggers, Logger):
        loggers = [loggers]
    counts = {"filter/total": result.report["total"], "filter/kept": result.report["kept"],
              **{f"filter/dropped/{rule}": n for rule, n in result.report["per_rule"].items()}}
    for logger in loggers or ():
        logger.log_metrics(counts)
    write_synthetic(kept_path, result.kept)
    write_json_atomic(report_path, result.report)
    return result.report


def filter_command(synthetic: Path, data: DataConfig, run_dir: Path, filter: FilterConfig = FilterConfig(),
                   encoder: str | None = None, format: FileFormat = "jsonl",
                   on_unknown_doc: UnknownDocPolicy = "fail") -> dict[str, Any]:
    """Filter a synthetic file made elsewhere against a BEIR corpus; write what it kept and the report.

    The kept records (``<run_dir>/synthetic/stage1.kept.jsonl``) are what ``train.py fit`` tunes on
    (``--data.init_args.kept_file``), as after the pipeline's filter stage.

    Args:
        synthetic: the synthetic file (our JSONL, or BEIR GenQ's ``<prefix>-queries.jsonl``).
        data: the BEIR folder (and optional downsampling) whose corpus the file was made for.
        run_dir: where the kept records, ``filter_report.json``, ``tables/`` and the round-trip cache go.
        filter: the rules (configs/filter/default.yaml lists them with their defaults).
        encoder: round-trip encoder when ``filter.encoder`` is null (a sentence-transformers folder or model path).
        format: "jsonl" (ours) or "beir-genq".
        on_unknown_doc: "fail", or "warn" to drop records whose document is not in the corpus.
    """
    run_dir = Path(run_dir)
    dataset = load_dataset_from_config(data)
    records = load_file_source(synthetic, format, dataset.corpus, on_unknown_doc)
    kept = run_dir / layout.STAGE1_KEPT
    with run_lock(run_dir):
        report = run_filter(records, dataset, filter, run_dir, kept, run_dir / layout.FILTER_REPORT, encoder)
    log.info("filter: kept %d of %d records (%d documents) in %s", report["kept"], report["total"],
             report["documents_kept"], kept)
    return report
