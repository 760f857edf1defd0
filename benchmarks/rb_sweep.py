"""Which Rao-Blackwell setting raises nDCG@10: a grid sweep over a finished pipeline run.

    python -m benchmarks.rb_sweep --grid benchmarks/rb_sweep_grid.yaml --splits train test \\
        --output benchmarks/results/scifact-covered/study \\
        -- -c configs/profiles/scifact-covered.yaml --run_dir runs/scifact-covered

Everything after ``--`` is the pipeline command's own arguments (profile, run directory, overrides), so
the sweep reads exactly what that run wrote, through :class:`pipeline.evaluation.Evaluator`'s public API: its document,
sentence, query and synthetic vectors, its kept synthetic records, its BERTScore cache. Nothing is
retrained or regenerated; a setting costs one Rao-Blackwell pass and one search per split.

Splits: the run's own split uses the run's query vectors; another split (``train``) has its queries
embedded here with the run's encoder (``pipeline.embed.embed_texts``, cached in the run's ``cache/sweep``). The
corpus must be the run's: true for ``restrict_to``, not for ``n_queries``/``corpus_size`` downsampling
(which follows the split's qrels; the Evaluator then refuses).

Synthetic sources: besides a stage's kept outputs (what the pipeline uses), a setting may take only
some samples (``samples: [0]``), the unfiltered outputs (``filtered: false``: the texts the filter
dropped are embedded here), a stricter round trip (``roundtrip_k``: keep an output only if its own
document ranks within the top k of the run's document vectors), or several stages at once.

Selection: the first of ``--splits`` chooses the best setting (use ``train``); every split is reported,
so the other splits' figures of the chosen setting are a documented sweep, not a tuned result.

``--subcorpus FILE`` scores on the documents listed in FILE only (and the queries whose judged documents
are all there): e.g. the documents that have both teacher outputs, as the data README's reference did.

Grid file (YAML): ``base`` sets RaoBlackwellConfig fields and ``multi_sentence_weight`` over the code
defaults; each of ``blocks`` lists alternatives per key and contributes their Cartesian product::

    base: {rao_blackwell: {method: manual}, multi_sentence_weight: 1.0}
    blocks:
      - name: doc-weight
        level: [doc, multi]
        source: [{stages: [stage1]}, {stages: [stage2], samples: [0]}]
        multi_sentence_weight: [1.0, 0.6]
        rao_blackwell: {doc_weight: [0.5, 0.7], task_weights: [{question: 0.75, keywords: 0.25}]}
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from core.io import InputError, write_json_atomic, write_text_atomic
from datamodules.downsample import read_id_list
from lightning_modules.precision import resolve_trainer_precision
from pipeline import layout
from pipeline.commands import parse_command
from pipeline.context import PipelineContext
from pipeline.embed import embed_texts
from pipeline.evaluation import CORPUS_ONLY_ROW, Evaluator, Synthetic
from retrieval.rao_blackwell import RaoBlackwellConfig
from retrieval.synthetic import read_synthetic

log = logging.getLogger(__name__)

LEVELS = ("doc", "sentence", "multi")
RAW_RECORDS = {"stage1": layout.STAGE1, "stage2": layout.STAGE2}
METRICS = ("ndcg@10", "recall@100", "mrr@100")


@dataclasses.dataclass(frozen=True)
class Source:
    """Which synthetic outputs augment the vectors: stages, samples, filtered or not, a stricter round trip."""

    stages: tuple[str, ...] = ("stage2",)
    samples: tuple[int, ...] | None = None
    filtered: bool = True
    roundtrip_k: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(RAW_RECORDS))
        if not self.stages or unknown:
            raise ValueError(f"source.stages must name some of {sorted(RAW_RECORDS)}, got {list(self.stages)}")
        if self.roundtrip_k is not None and self.roundtrip_k < 1:
            raise ValueError(f"source.roundtrip_k must be >= 1 or null, got {self.roundtrip_k}")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Source:
        unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown source keys {unknown}; use stages, samples, filtered, roundtrip_k")
        spec = dict(spec)
        if isinstance(spec.get("stages"), str):
            spec["stages"] = [spec["stages"]]
        for key in ("stages", "samples"):
            if spec.get(key) is not None:
                spec[key] = tuple(spec[key])
        return cls(**spec)

    @property
    def key(self) -> str:
        """A readable name, also the Evaluator's stage name for these outputs: ``stage2[s0,1]-all-rt10``."""
        name = "+".join(self.stages)
        if self.samples is not None:
            name += "[s" + ",".join(map(str, self.samples)) + "]"
        if not self.filtered:
            name += "-unfiltered"
        if self.roundtrip_k is not None:
            name += f"-rt{self.roundtrip_k}"
        return name


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the study: a level, a source and a Rao-Blackwell configuration."""

    block: str
    level: str
    source: Source
    rao_blackwell: RaoBlackwellConfig
    multi_sentence_weight: float
    varied: tuple[str, ...]  # the keys this row's block varies (its table columns)

    def value(self, key: str) -> Any:
        if key == "level":
            return self.level
        if key == "source":
            return self.source.key
        if key == "multi_sentence_weight":
            return self.multi_sentence_weight
        value = getattr(self.rao_blackwell, key)
        if isinstance(value, dict):
            return ":".join(f"{v:g}" for v in value.values())
        return value

    def describe(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.rao_blackwell)
        config.pop("chunk_size")
        return {"block": self.block, "level": self.level, "source": dataclasses.asdict(self.source),
                "source_key": self.source.key, "multi_sentence_weight": self.multi_sentence_weight,
                "rao_blackwell": config}


def _alternatives(block: dict[str, Any], key: str, default: Any) -> list[Any]:
    values = block.get(key, [default])
    if not isinstance(values, list) or not values:
        raise ValueError(f"grid block '{block.get('name')}': '{key}' must be a non-empty list of alternatives")
    return values


def expand_grid(grid: dict[str, Any], default_stage: str) -> list[Setting]:
    """Every setting of the grid, duplicates (same level, source and weighting) removed."""
    base = dict(grid.get("base") or {})
    base_rb = dataclasses.asdict(RaoBlackwellConfig())
    base_rb.update(base.get("rao_blackwell") or {})
    base_msw = float(base.get("multi_sentence_weight", 1.0))
    settings: dict[str, Setting] = {}
    for index, block in enumerate(grid.get("blocks") or []):
        name = str(block.get("name", f"block{index}"))
        unknown = sorted(set(block) - {"name", "level", "source", "multi_sentence_weight", "rao_blackwell"})
        if unknown:
            raise ValueError(f"grid block '{name}': unknown keys {unknown}")
        levels = _alternatives(block, "level", "doc")
        bad = sorted(set(levels) - set(LEVELS))
        if bad:
            raise ValueError(f"grid block '{name}': levels {bad} are not among {LEVELS}")
        sources = [Source.from_dict(spec) for spec in _alternatives(block, "source", {"stages": [default_stage]})]
        weights = [float(w) for w in _alternatives(block, "multi_sentence_weight", base_msw)]
        rb_block = block.get("rao_blackwell") or {}
        rb_keys = sorted(rb_block)
        rb_values = [_alternatives(rb_block, key, None) for key in rb_keys]
        varied = tuple(key for key, values in [("level", levels), ("source", sources),
                                               ("multi_sentence_weight", weights), *zip(rb_keys, rb_values)]
                       if len(values) > 1)
        for level, source, weight, *chosen in itertools.product(levels, sources, weights, *rb_values):
            config = RaoBlackwellConfig(**{**base_rb, **dict(zip(rb_keys, chosen))})
            if level != "multi":
                weight = 1.0  # the sentence mix exists at the multi level only
            setting = Setting(name, level, source, config, weight, varied)
            key = json.dumps({k: v for k, v in setting.describe().items() if k != "block"}, sort_keys=True)
            settings.setdefault(key, setting)
    if not settings:
        raise ValueError("the grid has no settings: give at least one block")
    return list(settings.values())


class SweepSources:
    """Resolves sweep sources (``Source``) to synthetic sets of an :class:`Evaluator`, through its public API:
    a stage's kept outputs as they are; subsets, unfiltered outputs and stricter round trips combined from
    masked parts (each part's per-output scores reused, none computed twice)."""

    def __init__(self, evaluator: Evaluator, work_dir: Path) -> None:
        self.evaluator = evaluator
        self.work_dir = work_dir
        self._own_rank: dict[str, torch.Tensor] = {}

    def name(self, source: Source) -> str:
        """The evaluator's set name for ``source`` (built on first use)."""
        if source == Source(stages=source.stages[:1]) and len(source.stages) == 1:
            return source.stages[0]  # a stage's kept outputs, as the pipeline uses them
        if not self.evaluator.has_synthetic(source.key):
            self.evaluator.combine(source.key, self._parts(source))
        return source.key

    def _parts(self, source: Source) -> list[tuple[str, torch.Tensor]]:
        """(set name, mask) pairs whose concatenation is the source: each stage's kept outputs, and the
        dropped ones when unfiltered, masked by sample index and round trip."""
        parts = []
        for stage in source.stages:
            for part in [stage] + ([] if source.filtered else [self._dropped_part(stage)]):
                synthetic = self.evaluator.synthetic(part)
                mask = torch.ones(len(synthetic.vectors), dtype=torch.bool)
                if source.samples is not None:
                    mask &= torch.isin(synthetic.sample_idx, torch.tensor(source.samples))
                if source.roundtrip_k is not None:
                    mask &= self._rank_of_own_doc(part) <= source.roundtrip_k
                parts.append((part, mask))
        return parts

    def _rank_of_own_doc(self, part: str) -> torch.Tensor:
        """1-based rank of each output's own document among all document vectors (its round trip)."""
        if part not in self._own_rank:
            synthetic = self.evaluator.synthetic(part)
            scores = synthetic.vectors @ self.evaluator.documents.T
            own = scores.gather(1, synthetic.doc[:, None])
            self._own_rank[part] = (scores > own).sum(1) + 1
        return self._own_rank[part]

    def _dropped_part(self, stage: str) -> str:
        """The outputs of ``stage`` the filter dropped, embedded here with the run's encoder."""
        part = f"{stage}-dropped"
        evaluator, ctx = self.evaluator, self.evaluator.ctx
        if evaluator.has_synthetic(part):
            return part
        kept = {r.key for r in ctx.synthetic_records(stage)}
        raw = read_synthetic(ctx.run_dir / RAW_RECORDS[stage], evaluator.dataset.corpus)
        dropped = [r for r in raw if r.key not in kept]
        ids, vectors = embed_texts([(r.key.encode(), r.text) for r in dropped], ctx.embedding_encoder,
                                   self.work_dir / f"{part}.safetensors", batch_size=ctx.embed.batch_size,
                                   trainer_kwargs=ctx.trainer_kwargs())
        evaluator.add_synthetic(part, Synthetic(
            vectors=vectors.reshape(len(ids), evaluator.documents.shape[1]),
            doc=torch.tensor([evaluator.doc_index[r.doc_id] for r in dropped], dtype=torch.long),
            task=[r.task for r in dropped], texts=[r.text for r in dropped],
            sample_idx=torch.tensor([r.sample_idx for r in dropped], dtype=torch.long)))
        return part


def load_context(pipeline_args: Sequence[str]) -> PipelineContext:
    """The run's PipelineContext, parsed exactly as ``train.py pipeline`` parses these arguments."""
    kwargs = parse_command("pipeline", pipeline_args)
    for key in ("stages", "force"):
        kwargs.pop(key, None)
    kwargs["run_dir"] = Path(kwargs["run_dir"])
    # ``precision: auto`` resolved as the pipeline does (Lightning refuses "auto" when a stage embeds)
    kwargs["trainer"], kwargs["precision"] = resolve_trainer_precision(dict(kwargs.get("trainer") or {}))
    return PipelineContext(**kwargs)


def split_evaluator(ctx: PipelineContext, split: str, work_dir: Path, keep_docs: set[str] | None) -> Evaluator:
    """An evaluator of ``split``'s queries against the run's vectors (queries embedded here if not the run's)."""
    if split == ctx.data.split:
        return Evaluator(ctx, keep_docs)
    other = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, split=split))
    evaluator = Evaluator(other, keep_docs)
    items = list(other.dataset.queries.items())
    ids, vectors = embed_texts(items, ctx.embedding_encoder, work_dir / f"queries-{split}.safetensors",
                               batch_size=ctx.embed.batch_size, trainer_kwargs=ctx.trainer_kwargs())
    evaluator.set_queries(ids, vectors)
    return evaluator


def _metrics(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(scores[key], 5) for key in METRICS if key in scores}


def run_sweep(ctx: PipelineContext, grid: dict[str, Any], splits: Sequence[str],
              keep_docs: set[str] | None = None) -> dict[str, Any]:
    """Score every grid setting on every split (the first selects); the study as a JSON-able dict."""
    work_dir = ctx.run_dir / "cache" / "sweep"  # train queries and dropped outputs, embedded once
    evaluators = {split: split_evaluator(ctx, split, work_dir, keep_docs) for split in splits}
    chooser = evaluators[splits[0]]
    sources = SweepSources(chooser, work_dir)
    stages = [stage for stage in ("stage1", "stage2") if (ctx.run_dir / layout.synthetic_vectors(stage)).is_file()]
    if not stages:
        raise InputError("the run has no synthetic vectors: run the pipeline's embed stage first",
                         path=ctx.run_dir / layout.synthetic_vectors("stage2"))
    settings = expand_grid(grid, default_stage=stages[-1])
    splits_info = {split: {"queries": len([q for q, d in ev.dataset.qrels.items() if d]),
                           "documents": int(ev.keep_mask.sum()) if ev.keep_mask is not None else len(ev.doc_ids)}
                   for split, ev in evaluators.items()}
    baselines = {split: {name: _metrics(ev.score_units(ev.corpus_only_units(level, sentence_weight=1.0)))
                         for level, name in CORPUS_ONLY_ROW.items()} for split, ev in evaluators.items()}
    rows = []
    for setting in tqdm(settings, desc="settings", unit="setting"):
        start = time.perf_counter()
        units = chooser.rao_blackwell(setting.level, sources.name(setting.source), setting.rao_blackwell,
                                      sentence_weight=setting.multi_sentence_weight)
        scores = {split: _metrics(ev.score_units(units)) for split, ev in evaluators.items()}
        rows.append({**setting.describe(), "varied": list(setting.varied), "table": {
            key: setting.value(key) for key in setting.varied}, "metrics": scores,
            "seconds": round(time.perf_counter() - start, 2)})
    select = splits[0]
    best = max(rows, key=lambda row: row["metrics"][select]["ndcg@10"])
    study = {"run_dir": str(ctx.run_dir), "encoder": ctx.embedding_encoder, "selection_split": select,
             "splits": splits_info, "baselines": baselines, "best": best, "rows": rows,
             "subcorpus": None if keep_docs is None else len(keep_docs)}
    return study


def markdown(study: dict[str, Any], command: str) -> str:
    """The study as tables: baselines, then each block's rows with their nDCG@10 and gains per split."""
    splits = list(study["splits"])
    select = study["selection_split"]
    sentence = {s: study["baselines"][s]["dense-sentence"]["ndcg@10"] for s in splits}
    document = {s: study["baselines"][s]["dense"]["ndcg@10"] for s in splits}
    lines = [f"# Rao-Blackwell sweep over `{study['run_dir']}`", "", f"Command: `{command}`", "",
             f"Encoder: `{study['encoder']}`. Selection on **{select}**; the other splits are reported for the "
             "setting chosen there (a documented sweep, not tuned on them).", "",
             "| split | queries | documents | dense nDCG@10 | dense-sentence nDCG@10 | dense-multi nDCG@10 |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {s} | {study['splits'][s]['queries']} | {study['splits'][s]['documents']} | {document[s]:.4f} | "
              f"{sentence[s]:.4f} | {study['baselines'][s]['dense-multi']['ndcg@10']:.4f} |" for s in splits]
    lines += ["", "dense-multi: plain sentences plus each document's own vector as one more unit (the multi level "
              "with no synthetic outputs), so a multi row's gain over it is what the synthetic outputs add."]

    def gains(row: dict[str, Any]) -> list[str]:
        cells = []
        for s in splits:
            value = row["metrics"][s]["ndcg@10"]
            cells += [f"{value:.4f}", f"{100 * (value - sentence[s]):+.2f}", f"{100 * (value - document[s]):+.2f}"]
        return cells

    metric_head = [h for s in splits for h in (f"{s} nDCG@10", f"{s} Δsent", f"{s} Δdoc")]
    best = study["best"]
    lines += ["", f"Best by {select}: block `{best['block']}`, level `{best['level']}`, source `{best['source_key']}`, "
              f"multi_sentence_weight {best['multi_sentence_weight']}, rao_blackwell `{json.dumps(best['rao_blackwell'])}`",
              "", "| " + " | ".join(metric_head) + " |", "|" + "---:|" * len(metric_head), "| " + " | ".join(gains(best))
              + " |", "", "Δ columns: nDCG@10 points (×100) over dense-sentence (Δsent) and dense (Δdoc) on the same split."]
    blocks: dict[str, list[dict[str, Any]]] = {}
    for row in study["rows"]:
        blocks.setdefault(row["block"], []).append(row)
    for name, rows in blocks.items():
        first = rows[0]
        multi = next((row for row in rows if row["level"] == "multi"), first)  # the mix applies there only
        fixed = {"level": first["level"], "source": first["source_key"],
                 "multi_sentence_weight": multi["multi_sentence_weight"], **first["rao_blackwell"]}
        fixed = {k: v for k, v in fixed.items() if k not in first["varied"]}
        varied = first["varied"] or ["level"]
        lines += ["", f"## {name}", "", "Fixed: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in fixed.items()), "",
                  "| " + " | ".join([*varied, *metric_head]) + " |", "|" + "---|" * len(varied) + "---:|" * len(metric_head)]
        top = max(row["metrics"][select]["ndcg@10"] for row in rows)
        for row in rows:
            cells = [str(row["table"].get(key, row["level"])) for key in varied]
            mark = " **←**" if row["metrics"][select]["ndcg@10"] == top else ""
            lines.append("| " + " | ".join(cells + gains(row)) + mark + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, pipeline_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="after --: the pipeline's arguments (-c profile --run_dir DIR ...)")
    parser.add_argument("--grid", type=Path, required=True, help="YAML grid (see the module docstring)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="qrels splits to score; the first selects (default: the run's split)")
    parser.add_argument("--output", type=Path, required=True, help="folder for sweep.json and sweep.md")
    parser.add_argument("--subcorpus", type=Path, default=None, help="score on the document ids of this file only")
    args = parser.parse_args(own)
    logging.basicConfig(level=logging.WARNING)
    ctx = load_context(pipeline_args)
    grid = yaml.safe_load(args.grid.read_text(encoding="utf-8")) or {}
    keep_docs = set(read_id_list(args.subcorpus)) if args.subcorpus else None
    splits = args.splits or [ctx.data.split]
    start = time.perf_counter()
    study = run_sweep(ctx, grid, splits, keep_docs)
    study["seconds"] = round(time.perf_counter() - start, 1)
    command = "python -m benchmarks.rb_sweep " + shlex.join(argv)
    study["command"] = command
    args.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output / "sweep.json", study)
    write_text_atomic(args.output / "sweep.md", markdown(study, command))
    print(markdown(study, command).split("\n## ")[0])
    return study


if __name__ == "__main__":
    main()
