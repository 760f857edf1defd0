"""Coverage-neutral Rao-Blackwellisation: which documents have synthetic outputs, fallbacks for those
that have none, and whether covered documents take more than their share of the top 10.

Why (issue 15): the filter keeps a stage's outputs for some documents only. A document with synthetic
questions mixed into its vector moves toward "question space" and outscores documents that have none,
whatever the query (on one collection 129 covered documents of 1,400 took 518 of 2,250 top-10 slots). A
fallback gives every document synthetic vectors: a document without kept outputs in the row's stage takes
those of an earlier stage, then its own extractive title question and keyphrases (``retrieval.extractive``,
no model needed). The top-10 share of covered documents against their share of the corpus is the
diagnostic that shows the bias, or its absence, in ``results.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from pipeline import layout

if TYPE_CHECKING:  # the Evaluator imports this module; only its type is needed here
    from pipeline.evaluation import Evaluator

log = logging.getLogger(__name__)

FALLBACK_SOURCES = ("stage1", "extractive")
"""Sets a document without outputs in a row's stage may fall back to, in the order given."""


def covered(evaluator: Evaluator, name: str) -> torch.Tensor:
    """(D,) bool: the documents with at least one output in set ``name``."""
    mask = torch.zeros(len(evaluator.doc_ids), dtype=torch.bool)
    mask[evaluator.synthetic(name).doc] = True
    return mask


def with_fallback(evaluator: Evaluator, stage: str, fallbacks: Sequence[str]) -> str:
    """The name of a set holding ``stage``'s outputs plus, for each document still without any, the outputs
    of the first of ``fallbacks`` that has some (a fallback equal to ``stage`` is skipped). Built once."""
    chain = [name for name in fallbacks if name != stage]
    if not chain:
        return stage
    name = "+".join([stage, *chain])
    if evaluator.has_synthetic(name):
        return name
    have = covered(evaluator, stage)
    parts = [(stage, torch.ones(len(evaluator.synthetic(stage).doc), dtype=torch.bool))]
    for source in chain:
        outputs = evaluator.synthetic(source)
        take = ~have[outputs.doc]
        parts.append((source, take))
        have |= covered(evaluator, source)
    evaluator.combine(name, parts)
    return name


def top_k_share(run: Mapping[str, Mapping[str, float]], covered_ids: set[str], k: int = 10) -> float:
    """Share of the top-``k`` slots of all queries taken by documents in ``covered_ids``."""
    slots = hits = 0
    for scores in run.values():
        top = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        slots += len(top)
        hits += sum(doc_id in covered_ids for doc_id, _ in top)
    return hits / slots if slots else 0.0


def coverage_of(evaluator: Evaluator, name: str) -> dict[str, Any]:
    """Documents with outputs in set ``name``, as a count and a share of the corpus."""
    count = int(covered(evaluator, name).sum())
    return {"documents": count, "corpus": len(evaluator.doc_ids), "share": round(count / max(len(evaluator.doc_ids), 1), 4)}


def top10_diagnostic(evaluator: Evaluator, stage: str, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The covered documents' (outputs in ``stage`` itself, before any fallback) share of the top 10 of
    ``run`` against their share of the corpus: well above it means covered documents are promoted."""
    mask = covered(evaluator, stage)
    ids = {doc_id for doc_id, keep in zip(evaluator.doc_ids, mask.tolist()) if keep}
    return {"covered_top10_share": round(top_k_share(run, ids), 4),
            "covered_corpus_share": round(len(ids) / max(len(evaluator.doc_ids), 1), 4)}


def corpus_diagnostics(ctx: Any, evaluator: Evaluator) -> dict[str, Any]:
    """What ``results.json`` says about the corpus behind the table: the sentence units per document (the
    embed stage's ``layout.SENTENCE_UNITS``) and the documents each stage's kept outputs cover; both logged."""
    diagnostics: dict[str, Any] = {}
    units_file = ctx.run_dir / layout.SENTENCE_UNITS
    if ctx.embed.sentences and units_file.is_file():
        diagnostics["sentence_units"] = json.loads(units_file.read_text())
        histogram = diagnostics["sentence_units"]["units_per_document"]
        log.info("sentence units (%s): documents with 1 unit %d, 2-5 %d, more %d", diagnostics["sentence_units"]["splitter"],
                 histogram["1"], histogram["2-5"], histogram[">5"])
    stages = [stage for stage in ctx.evaluate.stages if (ctx.run_dir / layout.synthetic_vectors(stage)).is_file()]
    diagnostics["coverage"] = {stage: coverage_of(evaluator, stage) for stage in stages}
    diagnostics["coverage_fallback"] = list(ctx.evaluate.coverage_fallback)
    for stage, entry in diagnostics["coverage"].items():
        log.info("coverage %s: %d of %d documents have kept outputs%s", stage, entry["documents"], entry["corpus"],
                 f" (the others fall back to {', '.join(ctx.evaluate.coverage_fallback)})"
                 if ctx.evaluate.coverage_fallback and entry["documents"] < entry["corpus"] else "")
    return diagnostics
