"""Label-free choice of the Rao-Blackwell setting: synthetic questions held out as pseudo-queries.

Why (issue 15): settings chosen on SciFact's labelled train queries need not transfer, and a user's corpus
has no labels. The method is unsupervised, so its settings can be too: hold out one synthetic question per
covered document, build every candidate's vectors from the remaining outputs (the held-out text is removed
from every set in play, so no document is scored with its own query mixed in), search with the held-out
questions' vectors and keep the setting that ranks each question's document highest (nDCG@10 with one
relevant document). Like the filter's round trip, it asks "does this text find its own document?".
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.coverage import with_fallback
from retrieval.rao_blackwell import RaoBlackwellConfig

if TYPE_CHECKING:  # the Evaluator imports nothing from here; its type only
    from pipeline.evaluation import Evaluator, Units

log = logging.getLogger(__name__)

LEVELS = ("doc", "sentence", "multi")
DOC_WEIGHTS = (0.8, 0.6, 0.4)  # the conservative end first: ties go to the setting that changes vectors least
SENTENCE_WEIGHTS = (1.0, 0.6)
PSEUDO_TASK = "question"


@dataclass(frozen=True)
class Setting:
    """One candidate: the level, whose outputs, the document weight and (multi level) the sentence mix."""

    level: str
    stage: str
    doc_weight: float
    sentence_weight: float = 1.0

    @property
    def label(self) -> str:
        mix = f", sentence mix {self.sentence_weight}" if self.level == "multi" else ""
        return f"{self.level} level, {self.stage}, document weight {self.doc_weight}{mix}"


def candidate_settings(stages: Sequence[str], levels: Sequence[str] = LEVELS,
                       doc_weights: Sequence[float] = DOC_WEIGHTS,
                       sentence_weights: Sequence[float] = SENTENCE_WEIGHTS) -> list[Setting]:
    """The grid: the sentence mix varies at the multi level only (the other levels ignore it)."""
    settings = []
    for stage, level, weight in itertools.product(stages, levels, doc_weights):
        for mix in (sentence_weights if level == "multi" else (1.0,)):
            settings.append(Setting(level, stage, weight, mix))
    return settings


def units_for(evaluator: Evaluator, setting: Setting, config: RaoBlackwellConfig, fallbacks: Sequence[str],
              rename: dict[str, str] | None = None) -> Units:
    """The setting's Rao-Blackwellised units (``rename`` maps set names to their held-out versions)."""
    rename = rename or {}
    source = with_fallback(evaluator, rename.get(setting.stage, setting.stage), [rename.get(f, f) for f in fallbacks])
    rb = dataclasses.replace(config, doc_weight=setting.doc_weight)
    return evaluator.rao_blackwell(setting.level, source, rb, sentence_weight=setting.sentence_weight)


@dataclass
class PseudoQueries:
    """Held-out synthetic questions: query ids, vectors, one relevant document each, and the held-out sets."""

    query_ids: list[str]
    vectors: torch.Tensor
    qrels: dict[str, dict[str, int]]
    rename: dict[str, str]  # set name -> the name of the same set without the held-out texts


def hold_out(evaluator: Evaluator, source: str, sets: Sequence[str]) -> PseudoQueries:
    """One question per covered document of ``source`` (its first sample) as a pseudo-query; every set in
    ``sets`` gets a copy without any output of that document with the same text."""
    synthetic = evaluator.synthetic(source)
    chosen: dict[int, int] = {}
    for row in sorted(range(len(synthetic.doc)), key=lambda i: (int(synthetic.doc[i]), int(synthetic.sample_idx[i]))):
        if synthetic.task[row] == PSEUDO_TASK:
            chosen.setdefault(int(synthetic.doc[row]), row)
    if not chosen:
        raise ValueError(f"label-free selection needs {PSEUDO_TASK} outputs in '{source}', and it has none")
    held = {(doc, synthetic.texts[row]) for doc, row in chosen.items()}
    rename = {}
    for name in dict.fromkeys([source, *sets]):
        outputs = evaluator.synthetic(name)
        keep = torch.tensor([(int(d), t) not in held for d, t in zip(outputs.doc.tolist(), outputs.texts)],
                            dtype=torch.bool)
        rename[name] = f"{name}-heldout"
        evaluator.combine(rename[name], [(name, keep)])
    rows = list(chosen.values())
    query_ids = [f"pseudo:{evaluator.doc_ids[doc]}" for doc in chosen]
    qrels = {qid: {evaluator.doc_ids[doc]: 1} for qid, doc in zip(query_ids, chosen)}
    return PseudoQueries(query_ids, synthetic.vectors[rows], qrels, rename)


@contextmanager
def scoring_with(evaluator: Evaluator, pseudo: PseudoQueries) -> Iterator[None]:
    """The evaluator scores the pseudo-queries against their documents, then its own queries again."""
    saved = evaluator.query_ids, evaluator.queries, evaluator.dataset
    evaluator.set_queries(pseudo.query_ids, pseudo.vectors)
    evaluator.dataset = dataclasses.replace(evaluator.dataset, qrels=pseudo.qrels)
    try:
        yield
    finally:
        evaluator.query_ids, evaluator.queries, evaluator.dataset = saved


def select_label_free(evaluator: Evaluator, settings: Sequence[Setting], config: RaoBlackwellConfig,
                      fallbacks: Sequence[str] = (), source: str = "stage1") -> dict[str, Any]:
    """Score every setting on pseudo-queries held out of ``source``; return the chosen one and all scores."""
    sets = sorted({s.stage for s in settings} | set(fallbacks))
    pseudo = hold_out(evaluator, source, sets)
    scores = []
    with scoring_with(evaluator, pseudo):
        for setting in settings:
            scores.append(evaluator.score_units(units_for(evaluator, setting, config, fallbacks, pseudo.rename))["ndcg@10"])
    best = max(range(len(settings)), key=lambda i: (scores[i], -i))  # ties: the earlier (more conservative) one
    log.info("label-free selection on %d pseudo-queries from %s: %s (pseudo nDCG@10 %.4f)", len(pseudo.query_ids),
             source, settings[best].label, scores[best])
    return {"chosen": dataclasses.asdict(settings[best]), "label": settings[best].label,
            "pseudo_queries": len(pseudo.query_ids), "source": source,
            "scores": [{**dataclasses.asdict(s), "ndcg@10": round(v, 5)} for s, v in zip(settings, scores)]}


def selected_row_settings(ctx: Any, evaluator: Evaluator, stages: Sequence[str]) -> tuple[str, Setting, dict[str, Any]] | None:
    """For ``evaluate.select: label-free``: the row name, the chosen setting and the record of the choice
    (every candidate's pseudo-query score); None when selection is off or no stage has outputs."""
    if ctx.evaluate.select != "label-free" or not stages:
        return None
    levels = [level for level in ctx.evaluate.levels if level == "doc" or evaluator.sentences is not None]
    settings = candidate_settings(stages, levels=levels)
    source = "stage1" if "stage1" in stages else stages[0]
    choice = select_label_free(evaluator, settings, ctx.rao_blackwell, ctx.evaluate.coverage_fallback, source=source)
    setting = Setting(**choice["chosen"])
    record = {"chosen_by": f"label-free: {choice['pseudo_queries']} synthetic questions of {source} held out as "
                           "pseudo-queries (pipeline/selection.py), no relevance labels",
              "setting": choice["chosen"], "selection": choice["scores"]}
    return "rb-selected-label-free", setting, record
