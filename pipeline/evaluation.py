"""The evaluate stage: every system of the results table, the document-weight sweep and its plot.

Rows (names fixed by the results schema): ``bm25``, ``dense``, ``dense-sentence``, ``dense-multi`` (the
multi level's units with no synthetic outputs: what the multi level gains before any synthetic text),
``expansion-dense``/``expansion-bm25`` (stage-2 questions appended; ``-stage1`` for stage 1),
and ``rb-<method>-<doc|sentence|multi>-<stage1|stage2>``. All read the vectors the embed stage wrote. When
tuning changed the encoder, ``dense-base``/``dense-sentence-base``/``dense-multi-base`` (the out-of-the-box
model) and every stage-1 row use the base encoder's vectors: before tuning vs after, as the paper compares.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from callbacks.tables import log_table
from core.fingerprint import stable_hash
from core.io import atomic_path, write_json_atomic
from core.record_key import RecordKey
from core.registry import Registry
from lightning_modules.encoder import EncoderModule, weights_signature
from pipeline import layout
from pipeline.config import EvaluateConfig
from pipeline.context import PipelineContext
from pipeline.run_export import RunExport
from pipeline.coverage import corpus_diagnostics, top10_diagnostic, with_fallback
from pipeline.selection import selected_row_settings, units_for
from retrieval.bertscore import bertscore_f1, check_layer
from retrieval.bm25 import bm25_search
from retrieval.index_files import load_index, search_index
from retrieval.metrics import evaluate_run
from retrieval.rao_blackwell import WEIGHTING_METHODS, RaoBlackwellConfig, mix_sentences, rao_blackwell_level
from retrieval.results import ResultRow, write_results
from retrieval.search import search
from retrieval.significance import BASE_SUFFIX, BASELINES, compare_to_baselines
from retrieval.synthetic import expansion_texts
from retrieval.vectors import load_vectors

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Units:
    """Vectors to search (documents or sentences) and the document each belongs to."""

    vectors: torch.Tensor
    unit_to_doc: torch.Tensor | None  # None: one unit per document, in document order


@dataclasses.dataclass
class Synthetic:
    """Synthetic embeddings (one stage's, or a combination), aligned with the corpus's document order."""

    vectors: torch.Tensor
    doc: torch.Tensor
    task: list[str]
    texts: list[str]
    sample_idx: torch.Tensor
    scores: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # per-output scores, by name
    parts: list[tuple[str, torch.Tensor]] | None = None  # (name, mask) it was combined from (see Evaluator.combine)


def _tensor(path: Path) -> tuple[list[str], torch.Tensor]:
    ids, vectors = load_vectors(path)
    return ids, torch.from_numpy(np.asarray(vectors, dtype=np.float32))


OutputScore = Callable[["Evaluator", str], torch.Tensor]
"""``(evaluator, synthetic name) -> (M,)`` non-negative score per output, for a weighting method that declares
it (``WeightingMethod.output_score``)."""
OUTPUT_SCORES: Registry[OutputScore] = Registry("per-output score")


@OUTPUT_SCORES.register("bertscore")
def bertscore_weights(evaluator: Evaluator, name: str) -> torch.Tensor:
    """BERTScore F1 (as ``bert_score`` computes it, at ``rao_blackwell.bertscore_layer``) of each synthetic text
    against its document, with the run's encoder, cached under ``cache/``; a negative F1 counts 0."""
    synthetic = evaluator.synthetic(name)
    references = [evaluator.dataset.doc_text(evaluator.doc_ids[i]) for i in synthetic.doc.tolist()]
    encoder_name = evaluator.encoder_name
    layer = evaluator.ctx.rao_blackwell.bertscore_layer
    # the encoder's weights by content: a retuned model in the same folder must not reuse the old weights
    key = stable_hash(["bert_score-0.3.13", layer, encoder_name, weights_signature(encoder_name), synthetic.texts,
                       references])
    cache = evaluator.ctx.run_dir / "cache" / f"bertscore-{name}-{key}.npy"
    if cache.is_file():
        weights = torch.from_numpy(np.load(cache))
    else:
        encoder = EncoderModule(encoder_name)
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
                    negative, len(weights), name)
    return weights.clamp(min=0.0)


class Evaluator:
    """The vectors of one run directory, scored against its qrels: what the results table and studies use.

    Public API (``benchmarks/rb_sweep.py`` uses only this): :meth:`units`, :meth:`synthetic` (a stage's
    outputs, or any set added with :meth:`add_synthetic` / :meth:`combine`), :meth:`output_scores`,
    :meth:`rao_blackwell`, :meth:`multi_units`, :meth:`corpus_only_units`, :meth:`score_units`,
    :meth:`score_run`, :meth:`set_queries`; ``keep_docs`` scores on a sub-corpus.
    """

    def __init__(self, ctx: PipelineContext, keep_docs: set[str] | None = None, base: bool = False) -> None:
        """``keep_docs``: score on these documents only (and the queries whose judged documents are all there);
        ``base``: read the base encoder's vectors (``vectors/base/``: documents, sentences, queries, stage 1)."""
        self.ctx = ctx
        self.base = base
        self.encoder_name = ctx.base_encoder if base else ctx.embedding_encoder
        self.dataset = ctx.dataset
        self.doc_ids = list(self.dataset.doc_ids)
        self.doc_index = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.query_ids, self.queries = _tensor(self.file(layout.QUERIES))
        ids, self.documents = _tensor(self.file(layout.DOCUMENTS))
        if ids != self.doc_ids:
            raise RuntimeError(f"{layout.DOCUMENTS} does not hold this corpus's documents in order: rerun `embed`")
        self.sentences: Units | None = None
        if ctx.embed.sentences:
            unit_ids, vectors = _tensor(self.file(layout.SENTENCES))
            owner = torch.tensor([self.doc_index[RecordKey.decode(unit).doc_id] for unit in unit_ids], dtype=torch.long)
            self.sentences = Units(vectors, owner)
        self.keep_mask: torch.Tensor | None = None
        if keep_docs is not None:
            self.keep_mask = torch.tensor([doc_id in keep_docs for doc_id in self.doc_ids])
            qrels = {qid: docs for qid, docs in self.dataset.qrels.items() if all(d in keep_docs for d in docs)}
            self.dataset = dataclasses.replace(self.dataset, qrels=qrels)
        self._synthetic: dict[str, Synthetic] = {}
        self.last_run: dict[str, dict[str, float]] = {}

    def file(self, path: str) -> Path:
        """A vector file of the run, the base encoder's copy for a ``base`` evaluator."""
        return self.ctx.run_dir / (layout.base_vectors(path) if self.base else path)

    def set_queries(self, query_ids: list[str], vectors: torch.Tensor) -> None:
        """Score other queries (e.g. another split's, embedded with the run's encoder) against the same vectors."""
        self.query_ids, self.queries = query_ids, vectors

    # --- scoring -------------------------------------------------------------------------------------
    def score_run(self, run: dict[str, dict[str, float]]) -> dict[str, float]:
        cfg = self.ctx.evaluate
        return evaluate_run(self.dataset.qrels, run, k_values=cfg.k_values,
                            ignore_identical_ids=cfg.search.ignore_identical_ids, per_query=True)

    def score_units(self, units: Units) -> dict[str, float]:
        return self.score_run(self.run_units(units))

    def run_units(self, units: Units) -> dict[str, dict[str, float]]:
        """The run (query id -> {doc id: score}) of searching ``units`` (on the sub-corpus, if one is kept)."""
        vectors, unit_to_doc, doc_ids = units.vectors, units.unit_to_doc, self.doc_ids
        if self.keep_mask is not None:
            owner = unit_to_doc if unit_to_doc is not None else torch.arange(len(self.doc_ids))
            kept_units = self.keep_mask[owner]
            new_index = torch.cumsum(self.keep_mask.long(), 0) - 1
            doc_ids = [doc_id for doc_id, keep in zip(self.doc_ids, self.keep_mask.tolist()) if keep]
            vectors = vectors[kept_units]
            unit_to_doc = None if unit_to_doc is None else new_index[owner[kept_units]]
        return search(self.query_ids, self.queries, doc_ids, vectors, self.ctx.evaluate.search, unit_to_doc=unit_to_doc)

    def units(self, level: str) -> Units:
        """``doc``: one vector per document; ``sentence``: the sentence units."""
        if level == "doc":
            return Units(self.documents, None)
        if self.sentences is None:
            raise ValueError("sentence level needs sentence vectors: set embed.sentences: true")
        return self.sentences

    # --- synthetic outputs ---------------------------------------------------------------------------
    def synthetic(self, name: str) -> Synthetic:
        """A pipeline stage's embedded outputs (``stage1``/``stage2``), or a set added under ``name``."""
        if name not in self._synthetic:
            keys, vectors = _tensor(self.file(layout.synthetic_vectors(name)))
            texts = {r.key.encode(): r.text for r in self.ctx.synthetic_records(name)}
            parsed = [RecordKey.decode(key) for key in keys]
            self._synthetic[name] = Synthetic(
                vectors=vectors, doc=torch.tensor([self.doc_index[k.doc_id] for k in parsed], dtype=torch.long),
                task=[k.task for k in parsed], texts=[texts[key] for key in keys],
                sample_idx=torch.tensor([k.index for k in parsed], dtype=torch.long))
        return self._synthetic[name]

    def has_synthetic(self, name: str) -> bool:
        return name in self._synthetic

    def add_synthetic(self, name: str, synthetic: Synthetic) -> None:
        """Make ``synthetic`` available as ``name`` to :meth:`rao_blackwell` (e.g. outputs the filter dropped)."""
        self._synthetic[name] = synthetic

    def combine(self, name: str, parts: Sequence[tuple[str, torch.Tensor]]) -> Synthetic:
        """The outputs of other sets, each masked (``(set name, bool mask)``), as one set ``name``; per-output
        scores are taken from the parts' (nothing is scored twice)."""
        pieces = [(self.synthetic(part), mask) for part, mask in parts]
        combined = Synthetic(vectors=torch.cat([s.vectors[m] for s, m in pieces]),
                             doc=torch.cat([s.doc[m] for s, m in pieces]),
                             task=[t for s, m in pieces for t, keep in zip(s.task, m.tolist()) if keep],
                             texts=[t for s, m in pieces for t, keep in zip(s.texts, m.tolist()) if keep],
                             sample_idx=torch.cat([s.sample_idx[m] for s, m in pieces]), parts=list(parts))
        self.add_synthetic(name, combined)
        return combined

    def output_scores(self, name: str, kind: str) -> torch.Tensor:
        """The per-output score ``kind`` (an :data:`OUTPUT_SCORES` name) of set ``name``, computed once."""
        synthetic = self.synthetic(name)
        if kind not in synthetic.scores:
            if synthetic.parts is not None:
                synthetic.scores[kind] = torch.cat([self.output_scores(part, kind)[mask] for part, mask in synthetic.parts])
            else:
                synthetic.scores[kind] = OUTPUT_SCORES.get(kind)(self, name)
        return synthetic.scores[kind]

    def rao_blackwell(self, level: str, stage: str, config: RaoBlackwellConfig,
                      sentence_weight: float | None = None) -> Units:
        """``level``'s units Rao-Blackwellised with the outputs of set ``stage``; ``sentence_weight``: the multi
        level's sentence mix (default ``evaluate.multi_sentence_weight``)."""
        if level == "multi":
            return self.multi_units(stage, config, sentence_weight)
        synthetic = self.synthetic(stage)
        needed = WEIGHTING_METHODS.get(config.method).output_score
        weights = self.output_scores(stage, needed) if needed is not None else None
        sentences = self.sentences if level == "sentence" else None
        vectors, owner = rao_blackwell_level(
            level, self.documents, synthetic.vectors, synthetic.doc, synthetic.task, config,
            sentence_vectors=None if sentences is None else sentences.vectors,
            sentence_doc=None if sentences is None else sentences.unit_to_doc, synthetic_weights=weights)
        return Units(vectors, owner)

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
        vectors = mix_sentences(sentences.vectors, owner, self.documents, weight)
        if stage is None:
            documents = self.documents
        elif config is None:
            raise ValueError("multi_units: a stage's outputs need a RaoBlackwellConfig")
        else:
            documents = self.rao_blackwell("doc", stage, config).vectors
        return Units(torch.cat([vectors, documents]), torch.cat([owner, torch.arange(len(self.doc_ids))]))


Run = dict[str, dict[str, float]]


def _scored_row(evaluator: Evaluator, system: str, retrieve: Callable[[], Run], extra: dict[str, Any] | None = None,
                export: RunExport | None = None) -> ResultRow:
    """Retrieve, score, and (with ``export``) write the run the scores came from."""
    start = time.perf_counter()
    run = retrieve()
    evaluator.last_run = run  # the ranking behind the scores (pipeline.coverage reads its top 10)
    metrics = evaluator.score_run(run)
    seconds = round(time.perf_counter() - start, 2)
    if export is not None:
        export(system, run)
    log.info("%-32s nDCG@10 %.4f", system, metrics.get("ndcg@10", float("nan")))
    return ResultRow(system, dict(metrics), {**(extra or {}), "seconds": seconds},
                     per_query=getattr(metrics, "per_query", None))


def available_stages(ctx: PipelineContext) -> list[str]:
    return [stage for stage in ctx.evaluate.stages if (ctx.run_dir / layout.synthetic_vectors(stage)).is_file()]


def table_rows(ctx: PipelineContext, evaluator: Evaluator, before: Evaluator | None = None,
               export: RunExport | None = None, with_index: bool = True) -> list[ResultRow]:
    """Every system of the results table, in a fixed order; ``export`` writes each row's run.

    ``with_index``: score the index's row by searching ``<run_dir>/index/`` (the pipeline, whose index stage ran
    before); False computes it like every other row, from the same vectors, for studies that build no index.

    ``before``: the base encoder's vectors, when tuning changed the encoder (the paper's comparison): it scores
    the ``*-base`` corpus-only rows (the out-of-the-box model) and every stage-1 row (before tuning); the
    other rows use the tuned encoder (``evaluator``).
    """
    cfg, dataset = ctx.evaluate, ctx.dataset
    stages = available_stages(ctx)
    final = stages[-1] if stages else None
    docs = [(doc_id, dataset.doc_text(doc_id)) for doc_id in evaluator.doc_ids]
    queries = list(dataset.queries.items())
    rows: list[ResultRow] = []

    def _row(system: str, retrieve: Callable[[], Run], extra: dict[str, Any] | None = None) -> ResultRow:
        return _scored_row(evaluator, system, retrieve, extra, export)

    if "bm25" in cfg.baselines:
        rows.append(_row("bm25", lambda: bm25_search(docs, queries, cfg.bm25, progress=False)))
    for suffix, scorer in (("", evaluator), *(((BASE_SUFFIX, before),) if before is not None else ())):
        rows += _corpus_only_rows(cfg, scorer, suffix, _row)
    for row in rows:
        if row.system == "dense":
            row.extra["before_tuning"] = _before_tuning(ctx, before)

    def scorer_of(stage: str) -> Evaluator:
        return before if before is not None and stage == "stage1" else evaluator

    if "expansion" in cfg.baselines:
        for stage in stages:
            suffix, scorer = "" if stage == final else f"-{stage}", scorer_of(stage)
            _, expanded = _tensor(scorer.file(layout.expansion_vectors(stage)))
            texts = expansion_texts(ctx.documents(), ctx.synthetic_records(stage))
            rows.append(_row(f"expansion-dense{suffix}", lambda v=expanded, e=scorer: e.run_units(Units(v, None)),
                             {"encoder": scorer.encoder_name}))
            rows.append(_row(f"expansion-bm25{suffix}",
                             lambda t=texts: bm25_search(t, queries, cfg.bm25, progress=False)))
    for stage in stages:
        scorer = scorer_of(stage)
        for method in cfg.methods:
            config = dataclasses.replace(ctx.rao_blackwell, method=method)
            for level in cfg.levels:
                if level in ("sentence", "multi") and scorer.sentences is None:
                    continue
                if (with_index and f"rb-{method}-{level}-{stage}" == ctx.index_system
                        and evaluator.keep_mask is None and scorer is evaluator):
                    rows.append(_shipped_row(ctx, evaluator, export))  # what is evaluated is what is shipped
                    rows[-1].extra.update(top10_diagnostic(evaluator, stage, evaluator.last_run))
                    continue
                rows.append(_row(f"rb-{method}-{level}-{stage}",
                                 lambda lv=level, st=stage, c=config, e=scorer: e.run_units(
                                     e.rao_blackwell(lv, with_fallback(e, st, cfg.coverage_fallback), c)),
                                 {"rao_blackwell": dataclasses.asdict(config), "encoder": scorer.encoder_name}))
                rows[-1].extra.update(top10_diagnostic(evaluator, stage, evaluator.last_run))
    selected = selected_row_settings(ctx, evaluator, stages)
    if selected is not None:
        name, setting, record = selected
        rows.append(_row(name, lambda: evaluator.run_units(units_for(evaluator, setting, ctx.rao_blackwell,
                                                                     cfg.coverage_fallback)), record))
        rows[-1].extra.update(top10_diagnostic(evaluator, setting.stage, evaluator.last_run))
    return rows


def _shipped_row(ctx: PipelineContext, evaluator: Evaluator, export: RunExport | None = None) -> ResultRow:
    """The index's row, scored by searching the files the index stage wrote (``<run_dir>/index/``)."""
    index = load_index(ctx.run_dir / layout.INDEX_DIR)
    expected = {"rao_blackwell": ctx.index_weighting, "system": ctx.index_system}
    found = {key: index.manifest.get(key) for key in expected}
    if found != expected or index.doc_ids != evaluator.doc_ids:
        raise RuntimeError(f"{index.path} was built for {found['system']} with other settings or documents than "
                           f"this evaluation's row {ctx.index_system}: rerun the index stage (`train.py index`)")
    return _scored_row(evaluator, ctx.index_system,
                       lambda: search_index(index, evaluator.query_ids, evaluator.queries, ctx.evaluate.search),
                       {"rao_blackwell": dataclasses.asdict(ctx.rao_blackwell), "index": str(index.path),
                        "encoder": evaluator.encoder_name}, export)


def _corpus_only_rows(cfg: EvaluateConfig, scorer: Evaluator, suffix: str,
                      row: Callable[..., ResultRow]) -> list[ResultRow]:
    """``dense``, ``dense-sentence``, ``dense-multi`` (as configured) from ``scorer``'s vectors, names + ``suffix``."""
    levels = [("dense", "doc", {})]
    if scorer.sentences is not None:
        levels += [("dense-sentence", "sentence", {}),
                   ("dense-multi", "multi", {"multi_sentence_weight": cfg.multi_sentence_weight})]
    return [row(name + suffix, lambda lv=level: scorer.run_units(scorer.corpus_only_units(lv)),
                {"encoder": scorer.encoder_name, **extra})
            for name, level, extra in levels if name in cfg.baselines]


def _before_tuning(ctx: PipelineContext, before: Evaluator | None) -> str:
    """Which encoder the before-tuning (stage-1) rows use, in words for ``results.md``."""
    if before is not None:
        return ("tuning changed the encoder: the `*-base` rows and every `*-stage1` row use the base model's encoder "
                "(before tuning; their markers compare with the `*-base` rows), the other rows the tuned one; each "
                "`*-stage2` row's `vs` in results.json also holds its comparison with the `*-base` rows")
    if ctx.embed.encoder not in ("tuned", "base"):
        return f"every row uses the separate encoder `{ctx.embed.encoder}` (embed.encoder)"
    if ctx.embed.encoder == "base" or ctx.fit.skip:
        return "every row uses the base model's encoder (" + ("fit.skip" if ctx.fit.skip else "embed.encoder: base") + ")"
    return ("the tuned model's encoder has the base model's weights (frozen): before- and after-tuning rows share "
            "its vectors")


def paired_tests(per_query: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every rb-*/expansion-* row against the corpus-only rows of its own encoder; with ``*-base`` rows, the
    stage-1 rows against those (same encoder, before tuning) and the others against both (after tuning vs the
    out-of-the-box model: the paper's comparison)."""
    vs = compare_to_baselines(per_query)
    base_rows = tuple(name + BASE_SUFFIX for name in BASELINES if name + BASE_SUFFIX in per_query)
    if base_rows:
        against_base = compare_to_baselines(per_query, systems=list(vs), baselines=base_rows)
        for system in vs:
            vs[system] = against_base[system] if system.endswith("-stage1") else {**vs[system], **against_base[system]}
    return vs


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
        equal = WEIGHTING_METHODS.get(method).equal_weights  # ignores the document weight: one point
        weights = ctx.evaluate.sweep_doc_weights[:1] if equal else ctx.evaluate.sweep_doc_weights
        curves[method] = []
        for weight in weights:
            config = dataclasses.replace(ctx.rao_blackwell, method=method, doc_weight=weight)
            source = with_fallback(evaluator, stage, ctx.evaluate.coverage_fallback)  # as the table's rows
            curves[method].append(evaluator.score_units(evaluator.rao_blackwell(level, source, config))["ndcg@10"])
    scored = {row.system: row.metrics for row in rows}
    corpus_only = scored.get(CORPUS_ONLY_ROW[level]) or evaluator.score_units(evaluator.corpus_only_units(level))
    return {"stage": stage, "level": level, "doc_weights": list(ctx.evaluate.sweep_doc_weights), "ndcg@10": curves,
            "corpus_only": corpus_only["ndcg@10"]}


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    """PNG of nDCG@10 against the document weight, one line per method, the corpus-only level dashed."""
    import matplotlib  # here, not at the top: choosing the Agg backend on import would change it for any
                       # program that imports the pipeline, and only this function draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def before_tuning_evaluator(ctx: PipelineContext) -> Evaluator | None:
    """The base encoder's vectors for ``table_rows(before=...)``, where the embed stage wrote them (it does when
    tuning changed the encoder); None otherwise."""
    return Evaluator(ctx, base=True) if (ctx.run_dir / layout.base_vectors(layout.DOCUMENTS)).is_file() else None


def evaluate_run_dir(ctx: PipelineContext, with_index: bool = True) -> list[ResultRow]:
    """Write ``results.json``/``results.md``, ``sweep.json`` and the sweep plot; log the table (``with_index``:
    as in :func:`table_rows`)."""
    evaluator = Evaluator(ctx)
    depth = ctx.evaluate.run_depth
    export = None if depth is None else RunExport(ctx.run_dir, depth, ctx.evaluate.search.ignore_identical_ids)
    rows = table_rows(ctx, evaluator, before_tuning_evaluator(ctx), export, with_index)
    if export is not None:
        log.info("TREC runs of every row (depth %d): %s", depth, export.finish())
    vs = paired_tests({row.system: row.per_query for row in rows if row.per_query})
    for row in rows:  # each rb-*/expansion-* row against dense, dense-sentence and dense-multi, query by query
        if row.system in vs:
            row.extra["vs"] = {base: comparison.to_json() for base, comparison in vs[row.system].items()}
    name = Path(ctx.data.path).name
    write_results(ctx.run_dir, name, ctx.data.split, rows, columns=ctx.evaluate.columns,
                  diagnostics=corpus_diagnostics(ctx, evaluator))
    sweep = weight_sweep(ctx, evaluator, rows)
    if sweep:
        write_json_atomic(ctx.run_dir / layout.SWEEP_JSON, sweep)
        plot_sweep(sweep, ctx.run_dir / layout.SWEEP_PLOT)
    columns = list(ctx.evaluate.columns)
    log_table("results", ["system", *columns], [[row.system, *(row.metrics.get(c) for c in columns)] for row in rows],
              ctx.run_dir, ctx.loggers)
    return rows

