"""Which Rao-Blackwell setting raises nDCG@10: a grid sweep over a finished pipeline run.

    python -m benchmarks.rb_sweep --grid benchmarks/rb_sweep_grid.yaml --splits train test \\
        --output benchmarks/results/scifact-covered/study \\
        -- -c configs/profiles/scifact-covered.yaml --run_dir runs/scifact-covered

Everything after ``--`` is the pipeline command's own arguments (profile, run directory, overrides), so
the sweep reads exactly what that run wrote, through :class:`pipeline.evaluation.Evaluator`: its document,
sentence, query and synthetic vectors, its kept synthetic records, its BERTScore cache. Nothing is
retrained or regenerated; a setting costs one Rao-Blackwell pass and one search per split.

Splits: the run's own split uses the run's query vectors; another split (``train``) has its queries
embedded here with the run's encoder (``retrieval.embed.embed_texts``, cached in the run's ``cache/sweep``). The
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

from datamodules.downsample import read_id_list
from pipeline import layout
from pipeline.evaluation import CORPUS_ONLY_ROW, Evaluator, Synthetic, Units
from pipeline.pipeline import PipelineContext
from pipeline.stages import record_key
from retrieval.embed import embed_texts
from retrieval.io import InputError, write_json_atomic, write_text_atomic
from retrieval.rao_blackwell import RaoBlackwellConfig
from retrieval.search import search
from retrieval.synthetic import read_synthetic
from retrieval.vectors import read_vector_ids

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


class SweepEvaluator(Evaluator):
    """An :class:`Evaluator` that also resolves sweep sources (``Source.key``) as synthetic stages,
    and optionally scores on a sub-corpus."""

    def __init__(self, ctx: PipelineContext, work_dir: Path, keep_docs: set[str] | None = None) -> None:
        super().__init__(ctx)
        self.work_dir = work_dir
        self.sources: dict[str, Source] = {}
        self._sample_idx: dict[str, torch.Tensor] = {}
        self._own_rank: dict[str, torch.Tensor] = {}
        self.keep_mask: torch.Tensor | None = None
        if keep_docs is not None:
            self.keep_mask = torch.tensor([doc_id in keep_docs for doc_id in self.doc_ids])
            qrels = {qid: docs for qid, docs in self.dataset.qrels.items() if all(d in keep_docs for d in docs)}
            self.dataset = dataclasses.replace(self.dataset, qrels=qrels)

    # --- sources -------------------------------------------------------------------------------------
    def register(self, source: Source) -> str:
        """The stage name under which ``synthetic``/``rao_blackwell`` find the source's outputs."""
        if source == Source(stages=source.stages[:1]) and len(source.stages) == 1:
            return source.stages[0]  # a stage's kept outputs, as the pipeline uses them
        self.sources[source.key] = source
        return source.key

    def synthetic(self, stage: str) -> Synthetic:
        if stage in self.sources and stage not in self._synthetic:
            self._synthetic[stage] = self._assemble(self.sources[stage])
        return super().synthetic(stage)

    def bertscore_weights(self, stage: str) -> torch.Tensor:
        if stage not in self.sources:
            return super().bertscore_weights(stage)
        synthetic = self.synthetic(stage)
        if synthetic.weights is None:
            synthetic.weights = torch.cat([self.bertscore_weights(part)[mask]
                                           for part, mask in self._parts(self.sources[stage])])
        return synthetic.weights

    def _parts(self, source: Source) -> list[tuple[str, torch.Tensor]]:
        """(part name, mask) pairs whose concatenation is the source: each stage's kept outputs, and the
        dropped ones when unfiltered, masked by sample index and round trip."""
        parts = []
        for stage in source.stages:
            for part in [stage] + ([] if source.filtered else [self._dropped_part(stage)]):
                synthetic = self.synthetic(part)
                mask = torch.ones(len(synthetic.vectors), dtype=torch.bool)
                if source.samples is not None:
                    mask &= torch.isin(self._samples(part), torch.tensor(source.samples))
                if source.roundtrip_k is not None:
                    mask &= self._rank_of_own_doc(part) <= source.roundtrip_k
                parts.append((part, mask))
        return parts

    def _assemble(self, source: Source) -> Synthetic:
        pieces = [(self.synthetic(part), mask) for part, mask in self._parts(source)]
        return Synthetic(vectors=torch.cat([s.vectors[m] for s, m in pieces]),
                         doc=torch.cat([s.doc[m] for s, m in pieces]),
                         task=[t for s, m in pieces for t, keep in zip(s.task, m.tolist()) if keep],
                         texts=[t for s, m in pieces for t, keep in zip(s.texts, m.tolist()) if keep])

    def _samples(self, part: str) -> torch.Tensor:
        if part not in self._sample_idx:  # a pipeline stage: sample indices from its vector keys
            keys = read_vector_ids(self.ctx.run_dir / layout.synthetic_vectors(part))
            self._sample_idx[part] = torch.tensor([int(key.rsplit("|", 1)[1]) for key in keys])
        return self._sample_idx[part]

    def _rank_of_own_doc(self, part: str) -> torch.Tensor:
        """1-based rank of each output's own document among all document vectors (its round trip)."""
        if part not in self._own_rank:
            synthetic = self.synthetic(part)
            scores = synthetic.vectors @ self.documents.T
            own = scores.gather(1, synthetic.doc[:, None])
            self._own_rank[part] = (scores > own).sum(1) + 1
        return self._own_rank[part]

    def _dropped_part(self, stage: str) -> str:
        """The outputs of ``stage`` the filter dropped, embedded here with the run's encoder."""
        part = f"{stage}-dropped"
        if part in self._synthetic:
            return part
        kept = set(read_vector_ids(self.ctx.run_dir / layout.synthetic_vectors(stage)))
        raw = read_synthetic(self.ctx.run_dir / RAW_RECORDS[stage], self.dataset.corpus)
        dropped = [r for r in raw if record_key(r) not in kept]
        ids, vectors = embed_texts([(record_key(r), r.text) for r in dropped], self.ctx.embedding_encoder,
                                   self.work_dir / f"{part}.safetensors", batch_size=self.ctx.embed.batch_size,
                                   trainer_kwargs=self.ctx.trainer_kwargs())
        self._synthetic[part] = Synthetic(vectors=vectors.reshape(len(ids), self.documents.shape[1]),
                                          doc=torch.tensor([self.doc_index[r.doc_id] for r in dropped],
                                                           dtype=torch.long),
                                          task=[r.task for r in dropped], texts=[r.text for r in dropped])
        self._sample_idx[part] = torch.tensor([r.sample_idx for r in dropped], dtype=torch.long)
        return part

    # --- scoring on a sub-corpus ------------------------------------------------------------------------
    def score_units(self, units: Units) -> dict[str, float]:
        if self.keep_mask is None:
            return super().score_units(units)
        owner = units.unit_to_doc if units.unit_to_doc is not None else torch.arange(len(self.doc_ids))
        kept_units = self.keep_mask[owner]
        new_index = torch.cumsum(self.keep_mask.long(), 0) - 1
        doc_ids = [doc_id for doc_id, keep in zip(self.doc_ids, self.keep_mask.tolist()) if keep]
        unit_to_doc = None if units.unit_to_doc is None else new_index[owner[kept_units]]
        run = search(self.query_ids, self.queries, doc_ids, units.vectors[kept_units], self.ctx.evaluate.search,
                     unit_to_doc=unit_to_doc)
        return self.score_run(run)


def load_context(pipeline_args: Sequence[str]) -> PipelineContext:
    """The run's PipelineContext, parsed exactly as ``train.py pipeline`` parses these arguments."""
    import train

    parser = train.command_parser("pipeline")
    kwargs = parser.instantiate(parser.parse_args(list(pipeline_args))).as_dict()
    for key in ("config", "__path__", "stages", "force"):
        kwargs.pop(key, None)
    kwargs["run_dir"] = Path(kwargs["run_dir"])
    kwargs["trainer"] = dict(kwargs.get("trainer") or {})
    return PipelineContext(**kwargs)


def split_evaluator(ctx: PipelineContext, split: str, work_dir: Path, keep_docs: set[str] | None) -> SweepEvaluator:
    """An evaluator of ``split``'s queries against the run's vectors (queries embedded here if not the run's)."""
    if split == ctx.data.split:
        return SweepEvaluator(ctx, work_dir, keep_docs)
    other = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, split=split))
    evaluator = SweepEvaluator(other, work_dir, keep_docs)
    items = list(other.dataset.queries.items())
    ids, vectors = embed_texts(items, ctx.embedding_encoder, work_dir / f"queries-{split}.safetensors",
                               batch_size=ctx.embed.batch_size, trainer_kwargs=ctx.trainer_kwargs())
    evaluator.query_ids, evaluator.queries = ids, vectors
    return evaluator


def _metrics(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(scores[key], 5) for key in METRICS if key in scores}


def run_sweep(ctx: PipelineContext, grid: dict[str, Any], splits: Sequence[str],
              keep_docs: set[str] | None = None) -> dict[str, Any]:
    """Score every grid setting on every split (the first selects); the study as a JSON-able dict."""
    work_dir = ctx.run_dir / "cache" / "sweep"  # train queries and dropped outputs, embedded once
    evaluators = {split: split_evaluator(ctx, split, work_dir, keep_docs) for split in splits}
    chooser = evaluators[splits[0]]
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
        units = chooser.rao_blackwell(setting.level, chooser.register(setting.source), setting.rao_blackwell,
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
