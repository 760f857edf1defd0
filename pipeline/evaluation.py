"""The evaluate stage: every system of the results table, the document-weight sweep and its plot.

Rows (names fixed by the results schema): ``bm25``, ``dense``, ``dense-sentence``, ``dense-multi`` (the
multi level's units with no synthetic outputs: what the multi level gains before any synthetic text),
``expansion-dense``/``expansion-bm25`` (stage-2 questions appended; ``-stage1`` for stage 1),
and ``rb-<method>-<doc|sentence|multi>-<stage1|stage2>``. All read the vectors the embed stage wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline import layout
from pipeline.stages import expansion_texts, parse_record_key, record_key, synthetic_records
from retrieval.bm25 import bm25_search
from retrieval.io import write_json_atomic
from retrieval.metrics import evaluate_run
from retrieval.rao_blackwell import RaoBlackwellConfig, rao_blackwellise
from retrieval.results import ResultRow, write_results
from retrieval.search import search
from retrieval.significance import compare_to_baselines
from retrieval.vectors import load_vectors

if TYPE_CHECKING:
    from pipeline.pipeline import PipelineContext

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Units:
    """Vectors to search (documents or sentences) and the document each belongs to."""

    vectors: torch.Tensor
    unit_to_doc: torch.Tensor | None  # None: one unit per document, in document order


@dataclasses.dataclass
class Synthetic:
    """One stage's synthetic embeddings, aligned with the corpus's document order."""

    vectors: torch.Tensor
    doc: torch.Tensor
    task: list[str]
    texts: list[str]
    weights: torch.Tensor | None = None  # BERTScore F1, computed on demand


def _tensor(path: Path) -> tuple[list[str], torch.Tensor]:
    ids, vectors = load_vectors(path)
    return ids, torch.from_numpy(np.asarray(vectors, dtype=np.float32))


class Evaluator:
    """Holds the loaded vectors of one run directory and scores systems against its qrels."""

    def __init__(self, ctx: PipelineContext) -> None:
        self.ctx = ctx
        self.dataset = ctx.dataset
        self.doc_ids = list(self.dataset.doc_ids)
        self.doc_index = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.query_ids, self.queries = _tensor(ctx.run_dir / layout.QUERIES)
        ids, self.documents = _tensor(ctx.run_dir / layout.DOCUMENTS)
        if ids != self.doc_ids:
            raise RuntimeError(f"{layout.DOCUMENTS} does not hold this corpus's documents in order: rerun `embed`")
        self.sentences: Units | None = None
        if ctx.embed.sentences:
            unit_ids, vectors = _tensor(ctx.run_dir / layout.SENTENCES)
            owner = torch.tensor([self.doc_index[unit.rsplit("#", 1)[0]] for unit in unit_ids], dtype=torch.long)
            self.sentences = Units(vectors, owner)
        self._synthetic: dict[str, Synthetic] = {}

    # --- scoring -------------------------------------------------------------------------------------
    def score_run(self, run: dict[str, dict[str, float]]) -> dict[str, float]:
        cfg = self.ctx.evaluate
        return evaluate_run(self.dataset.qrels, run, k_values=cfg.k_values,
                            ignore_identical_ids=cfg.search.ignore_identical_ids, per_query=True)

    def score_units(self, units: Units) -> dict[str, float]:
        unit_to_doc = None if units.unit_to_doc is None else units.unit_to_doc
        run = search(self.query_ids, self.queries, self.doc_ids, units.vectors, self.ctx.evaluate.search,
                     unit_to_doc=unit_to_doc)
        return self.score_run(run)

    def doc_units(self) -> Units:
        return Units(self.documents, None)

    def units(self, level: str) -> Units:
        if level == "doc":
            return self.doc_units()
        if self.sentences is None:
            raise ValueError("sentence level needs sentence vectors: set embed.sentences: true")
        return self.sentences

    # --- synthetic outputs ---------------------------------------------------------------------------
    def synthetic(self, stage: str) -> Synthetic:
        if stage not in self._synthetic:
            keys, vectors = _tensor(self.ctx.run_dir / layout.synthetic_vectors(stage))
            texts = {record_key(r): r.text for r in synthetic_records(self.ctx, stage)}
            parsed = [parse_record_key(key) for key in keys]
            self._synthetic[stage] = Synthetic(
                vectors=vectors, doc=torch.tensor([self.doc_index[d] for d, _, _ in parsed], dtype=torch.long),
                task=[task for _, task, _ in parsed], texts=[texts[key] for key in keys])
        return self._synthetic[stage]

    def bertscore_weights(self, stage: str) -> torch.Tensor:
        """BERTScore F1 of each synthetic text against its document, cached under ``cache/``."""
        synthetic = self.synthetic(stage)
        if synthetic.weights is not None:
            return synthetic.weights
        references = [self.dataset.doc_text(self.doc_ids[i]) for i in synthetic.doc.tolist()]
        layer = self.ctx.rao_blackwell.bertscore_layer
        key = hashlib.sha256(json.dumps(["bert_score-0.3.13", layer, self.ctx.embedding_encoder, synthetic.texts,
                                         references]).encode())
        cache = self.ctx.run_dir / "cache" / f"bertscore-{stage}-{key.hexdigest()[:16]}.npy"
        if cache.is_file():
            weights = torch.from_numpy(np.load(cache))
        else:
            from lightning_modules.encoder import EncoderModule
            from retrieval.bertscore import bertscore_f1, check_layer
            from retrieval.io import atomic_path

            encoder = EncoderModule(self.ctx.embedding_encoder)
            try:
                check_layer(encoder, layer)
            except ValueError as err:
                raise ValueError(f"rao_blackwell.bertscore_layer: {err}") from None
            if torch.cuda.is_available():
                encoder = encoder.cuda()
            encoder.eval()
            weights = bertscore_f1(encoder, synthetic.texts, references, layer=layer).float()
            with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
                np.save(handle, weights.numpy())
        negative = int((weights < 0).sum())
        if negative:  # raw F1 below 0: no token of the output is closer to the document than chance, weight 0
            log.warning("BERTScore F1 < 0 for %d of %d %s outputs: they get weight 0 in rb-bertscore-* rows",
                        negative, len(weights), stage)
        synthetic.weights = weights.clamp(min=0.0)
        return synthetic.weights

    def rao_blackwell(self, level: str, stage: str, config: RaoBlackwellConfig,
                      sentence_weight: float | None = None) -> Units:
        """``sentence_weight``: the multi level's sentence mix (default ``evaluate.multi_sentence_weight``)."""
        if level == "multi":
            return self.multi_units(stage, config, sentence_weight)
        units, synthetic = self.units(level), self.synthetic(stage)
        unit_to_doc = units.unit_to_doc if units.unit_to_doc is not None else torch.arange(len(self.doc_ids))
        weights = self.bertscore_weights(stage) if config.method == "bertscore" else None
        needs_docs = config.parent_share > 0 or (level == "sentence" and config.similarity_to == "document")
        vectors = rao_blackwellise(units.vectors, unit_to_doc, synthetic.vectors, synthetic.doc, synthetic.task,
                                   config, synthetic_weights=weights,
                                   doc_vectors=self.documents if needs_docs else None)
        return Units(vectors, units.unit_to_doc)

    def corpus_only_units(self, level: str, sentence_weight: float | None = None) -> Units:
        """The level's units without synthetic outputs: rows ``dense``, ``dense-sentence``, ``dense-multi``."""
        return self.multi_units(sentence_weight=sentence_weight) if level == "multi" else self.units(level)

    def multi_units(self, stage: str | None = None, config: RaoBlackwellConfig | None = None,
                    sentence_weight: float | None = None) -> Units:
        """Sentences (optionally mixed with their document) plus each document's Rao-Blackwellised vector.

        ``stage=None`` adds each document's own vector instead: the ``dense-multi`` baseline, which separates
        what the multi level's structure gains from what the synthetic outputs add.
        """
        sentences = self.units("sentence")
        owner = sentences.unit_to_doc
        weight = self.ctx.evaluate.multi_sentence_weight if sentence_weight is None else sentence_weight
        vectors = sentences.vectors
        if weight < 1.0:
            vectors = torch.nn.functional.normalize(weight * vectors + (1 - weight) * self.documents[owner], dim=-1)
        if stage is None:
            documents = self.documents
        elif config is None:
            raise ValueError("multi_units: a stage's outputs need a RaoBlackwellConfig")
        else:
            documents = self.rao_blackwell("doc", stage, config).vectors
        return Units(torch.cat([vectors, documents]), torch.cat([owner, torch.arange(len(self.doc_ids))]))


def _row(system: str, scores: Callable[[], dict[str, float]], extra: dict[str, Any] | None = None) -> ResultRow:
    start = time.perf_counter()
    metrics = scores()
    log.info("%-32s nDCG@10 %.4f", system, metrics.get("ndcg@10", float("nan")))
    return ResultRow(system, dict(metrics), {**(extra or {}), "seconds": round(time.perf_counter() - start, 2)},
                     per_query=getattr(metrics, "per_query", None))


def available_stages(ctx: PipelineContext) -> list[str]:
    return [stage for stage in ctx.evaluate.stages if (ctx.run_dir / layout.synthetic_vectors(stage)).is_file()]


def table_rows(ctx: PipelineContext, evaluator: Evaluator) -> list[ResultRow]:
    """Every system of the results table, in a fixed order."""
    cfg, dataset = ctx.evaluate, ctx.dataset
    stages = available_stages(ctx)
    final = stages[-1] if stages else None
    docs = [(doc_id, dataset.doc_text(doc_id)) for doc_id in evaluator.doc_ids]
    queries = list(dataset.queries.items())
    rows: list[ResultRow] = []
    if "bm25" in cfg.baselines:
        rows.append(_row("bm25", lambda: evaluator.score_run(bm25_search(docs, queries, cfg.bm25, progress=False))))
    if "dense" in cfg.baselines:
        rows.append(_row("dense", lambda: evaluator.score_units(evaluator.corpus_only_units("doc")),
                         {"encoder": ctx.embedding_encoder}))
    if "dense-sentence" in cfg.baselines and evaluator.sentences is not None:
        rows.append(_row("dense-sentence", lambda: evaluator.score_units(evaluator.corpus_only_units("sentence"))))
    if "dense-multi" in cfg.baselines and evaluator.sentences is not None:
        rows.append(_row("dense-multi", lambda: evaluator.score_units(evaluator.corpus_only_units("multi")),
                         {"multi_sentence_weight": cfg.multi_sentence_weight}))
    if "expansion" in cfg.baselines:
        for stage in stages:
            suffix = "" if stage == final else f"-{stage}"
            _, expanded = _tensor(ctx.run_dir / layout.expansion_vectors(stage))
            texts = expansion_texts(ctx, synthetic_records(ctx, stage))
            rows.append(_row(f"expansion-dense{suffix}", lambda v=expanded: evaluator.score_units(Units(v, None))))
            rows.append(_row(f"expansion-bm25{suffix}",
                             lambda t=texts: evaluator.score_run(bm25_search(t, queries, cfg.bm25, progress=False))))
    for stage in stages:
        for method in cfg.methods:
            config = dataclasses.replace(ctx.rao_blackwell, method=method)
            for level in cfg.levels:
                if level in ("sentence", "multi") and evaluator.sentences is None:
                    continue
                rows.append(_row(f"rb-{method}-{level}-{stage}",
                                 lambda lv=level, st=stage, c=config: evaluator.score_units(
                                     evaluator.rao_blackwell(lv, st, c)),
                                 {"rao_blackwell": dataclasses.asdict(config)}))
    return rows


CORPUS_ONLY_ROW = {"doc": "dense", "sentence": "dense-sentence", "multi": "dense-multi"}


def weight_sweep(ctx: PipelineContext, evaluator: Evaluator, rows: Sequence[ResultRow] = ()) -> dict[str, Any]:
    """nDCG@10 against the document weight for each method (``sweep_stage``, else the last available stage).

    The corpus-only line is the table's row for the level when ``rows`` has it (no second search).
    """
    stages = available_stages(ctx)
    if not stages or not ctx.evaluate.sweep_doc_weights:
        return {}
    stage, level = ctx.evaluate.sweep_stage or stages[-1], ctx.evaluate.sweep_level
    if stage not in stages:
        raise ValueError(f"evaluate.sweep_stage: {stage} has no synthetic vectors in {ctx.run_dir} "
                         f"(available: {', '.join(stages)}); it must be one of evaluate.stages and embedded")
    if level in ("sentence", "multi") and evaluator.sentences is None:
        level = "doc"
    curves: dict[str, list[float]] = {}
    for method in ctx.evaluate.methods:
        weights = ctx.evaluate.sweep_doc_weights if method != "uniform" else ctx.evaluate.sweep_doc_weights[:1]
        curves[method] = []
        for weight in weights:
            config = dataclasses.replace(ctx.rao_blackwell, method=method, doc_weight=weight)
            curves[method].append(evaluator.score_units(evaluator.rao_blackwell(level, stage, config))["ndcg@10"])
    scored = {row.system: row.metrics for row in rows}
    corpus_only = scored.get(CORPUS_ONLY_ROW[level]) or evaluator.score_units(evaluator.corpus_only_units(level))
    return {"stage": stage, "level": level, "doc_weights": list(ctx.evaluate.sweep_doc_weights), "ndcg@10": curves,
            "corpus_only": corpus_only["ndcg@10"]}


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    """PNG of nDCG@10 against the document weight, one line per method, the corpus-only level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retrieval.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, values in sweep["ndcg@10"].items():
        xs = sweep["doc_weights"][:len(values)]
        if len(values) == 1:
            ax.axhline(values[0], linestyle=":", color="grey", label=f"{method} (no weight)")
        else:
            ax.plot(xs, values, marker="o", label=method)
    corpus_only = {"doc": "document vectors", "sentence": "sentence vectors",
                   "multi": "sentences + document vector"}[sweep["level"]]
    ax.axhline(sweep["corpus_only"], linestyle="--", color="black", label=f"{corpus_only}, no synthetic outputs")
    ax.set_xlabel("document weight w (synthetic outputs share 1 − w)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"Rao-Blackwell weight sweep ({sweep['level']} level, {sweep['stage']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def evaluate_run_dir(ctx: PipelineContext) -> list[ResultRow]:
    """Write ``results.json``/``results.md``, ``sweep.json`` and the sweep plot; log the table."""
    evaluator = Evaluator(ctx)
    rows = table_rows(ctx, evaluator)
    vs = compare_to_baselines({row.system: row.per_query for row in rows if row.per_query})
    for row in rows:  # each rb-*/expansion-* row against dense, dense-sentence and dense-multi, query by query
        if row.system in vs:
            row.extra["vs"] = {base: comparison.to_json() for base, comparison in vs[row.system].items()}
    name = Path(ctx.data.path).name
    write_results(ctx.run_dir, name, ctx.data.split, rows, columns=ctx.evaluate.columns)
    sweep = weight_sweep(ctx, evaluator, rows)
    if sweep:
        write_json_atomic(ctx.run_dir / layout.SWEEP_JSON, sweep)
        plot_sweep(sweep, ctx.run_dir / layout.SWEEP_PLOT)
    from callbacks.tables import log_table

    columns = list(ctx.evaluate.columns)
    log_table("results", ["system", *columns], [[row.system, *(row.metrics.get(c) for c in columns)] for row in rows],
              ctx.run_dir, ctx.loggers)
    return rows

