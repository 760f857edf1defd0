"""The quality filter's rules, each registered once, and :func:`filter_records`, which runs them in order.

Why a filter: a generator (a small LLM, or an untrained decoder) writes junk often enough to matter:
empty or truncated outputs, statements instead of questions, keyword lists that are one sentence, the
same phrase forty times, a sentence pasted from the passage, or a question about something else.
Training on them teaches the model to write them. Each rule targets one of these failures; the report
says how many records each rule dropped, per task, so a threshold is judged on numbers, not guessed.

Rules run in registration order (cheap text checks first, the round trip, which needs an encoder, last);
a record is dropped by the first rule it fails and the report names that rule. A rule sees the records
still kept, in input order, and returns which of them it drops. To add one: register a function below
(``@FILTER_RULES.register("name")``) with its settings as fields of :class:`FilterConfig`, and a test.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from core.registry import Registry
from core.tasks import TASKS
from retrieval.search import exact_search
from retrieval.synthetic import SyntheticRecord

log = logging.getLogger(__name__)

QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how", "is", "are", "was", "were",
                  "do", "does", "did", "can", "could", "should", "would", "will", "has", "have", "had", "may",
                  "might", "must", "in", "to", "for", "among", "according")
_TOKEN = re.compile(r"\w+")

Embed = Callable[[Sequence[tuple[str, str]], Path], tuple[list[str], Tensor]]
"""``(items, cache file) -> (ids, L2-normalised float32 vectors)``: how the round trip embeds texts.
The pipeline binds it to an encoder (``pipeline.filter_stage``); the file caches the vectors by content."""


class Corpus(Protocol):
    """What the rules read of a dataset (``datamodules.beir.BeirDataset`` has it)."""

    corpus: dict[str, Any]  # doc_id -> an object with .title and .text
    doc_ids: list[str]

    def doc_text(self, doc_id: str) -> str: ...


@dataclass
class FilterConfig:
    """Every rule's settings (how the defaults were chosen: benchmarks/results/notes/docstring-measurements.md).

    Attributes:
        min_words: per task, fewest whitespace words. A 1-2 word "question" carries no information need.
        max_words: per task, most words. Longer questions are several questions run together or a pasted
            abstract; keyword lists are capped by the list rule, so their limit only catches runaway generations.
        question_form: questions must end with "?" or start with a question word (``QUESTION_WORDS``),
            so statements (a title or claim restated) are not trained as questions.
        keyword_separators: the characters that separate keyword items (each one literally).
        min_keywords: fewest items in a keyword list. The teacher was asked for 5; a single item is a
            phrase, a title or a generation cut off ("amin").
        max_keyword_words: most words in any one keyword item; a longer item is a sentence, not a keyword.
        max_token_run: a word repeated this many times back to back drops the text ("moderate, moderate,
            moderate" is a run of 3).
        repetition_ngram: n of the word n-grams whose repetition is measured.
        max_repeat_ratio: largest share of repeated n-grams (1 - distinct / total); degenerate loops
            ("cell-based therapies, cell-based therapies, ...") score far above normal text.
        max_duplicate_keywords: largest share of repeated items in a keyword list (1 - distinct / total);
            a generation stuck in a loop repeats whole items ("MAP, MAP, MAP") before n-grams show it.
        copy_ngram: n of the word n-grams compared with the passage for the copy rule.
        copy_threshold: a text is a copy when at least this share of its n-grams occur in the passage
            body (title excluded: a question that restates the title is a fine query). Texts with fewer
            words than ``copy_ngram`` are never judged copies.
        copy_tasks: tasks the copy rule checks. Keywords are copied from the passage by nature.
        dedup: drop a text equal (case, spacing and punctuation ignored) to an earlier kept text of the
            same document and task; the first one is kept.
        roundtrip: keep a text only if, embedded by the encoder, it retrieves its own document within
            the top ``roundtrip_k`` of the whole corpus (Promptagator's consistency filter).
        roundtrip_k: rank cutoff of the round trip: generic texts that fit any abstract ("What is the main
            goal of the study?") rank their document far down, specific questions that miss the very top
            still rank it high; a weaker encoder (an untuned model's own encoder) also needs the room.
        roundtrip_tasks: tasks the round trip checks; generic keyword lists fail it as generic questions do.
        encoder: the round-trip encoder (a model folder or name); null means the one the pipeline passes
            (the model being trained's encoder), so the filter judges with the model's own eyes.
        seed: seed of the sample table's draw.
        samples_to_log: kept and dropped examples per rule sent to the logger's table.
    """

    min_words: dict[str, int] = field(default_factory=lambda: {"question": 3, "keywords": 1})
    max_words: dict[str, int] = field(default_factory=lambda: {"question": 40, "keywords": 60})
    question_form: bool = True
    keyword_separators: str = ",;\n|"
    min_keywords: int = 2
    max_keyword_words: int = 8
    max_token_run: int = 3
    repetition_ngram: int = 3
    max_repeat_ratio: float = 0.3
    max_duplicate_keywords: float = 0.2
    copy_ngram: int = 4
    copy_threshold: float = 0.9
    copy_tasks: list[str] = field(default_factory=lambda: ["question"])
    dedup: bool = True
    roundtrip: bool = True
    roundtrip_k: int = 100
    roundtrip_tasks: list[str] = field(default_factory=lambda: ["question", "keywords"])
    encoder: str | None = None
    seed: int = 0
    samples_to_log: int = 20

    def __post_init__(self) -> None:
        for name in ("min_words", "max_words"):
            unknown = set(getattr(self, name)) - set(TASKS)
            if unknown:
                raise ValueError(f"filter.{name} names unknown task(s) {sorted(unknown)}; tasks are {list(TASKS)}")
        for name in ("copy_tasks", "roundtrip_tasks"):
            unknown = set(getattr(self, name)) - set(TASKS)
            if unknown:
                raise ValueError(f"filter.{name} names unknown task(s) {sorted(unknown)}; tasks are {list(TASKS)}")
        if not 0.0 < self.copy_threshold <= 1.0:
            raise ValueError(f"filter.copy_threshold must lie in (0, 1], got {self.copy_threshold}")
        for name in ("max_repeat_ratio", "max_duplicate_keywords"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"filter.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("roundtrip_k", "copy_ngram", "repetition_ngram", "max_token_run", "max_keyword_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"filter.{name} must be >= 1, got {getattr(self, name)}")
        if not self.keyword_separators:
            raise ValueError("filter.keyword_separators must name at least one character")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def keyword_items(text: str, separators: str) -> list[str]:
    """The non-empty items of a keyword list (a trailing "and" before the last item is removed)."""
    items = re.split(f"[{re.escape(separators)}]", text)
    return [re.sub(r"^(and|or)\s+", "", item.strip(" .\t"), flags=re.IGNORECASE) for item in items if item.strip(" .\t")]


def copy_ratio(text: str, passage: str, n: int) -> float:
    """Share of the text's word n-grams that occur in the passage (0 for texts shorter than n words)."""
    grams = _ngrams(_tokens(text), n)
    if not grams:
        return 0.0
    passage_grams = set(_ngrams(_tokens(passage), n))
    return sum(gram in passage_grams for gram in grams) / len(grams)


def normalise(text: str) -> str:
    """The form duplicates are compared in: lower case, words only."""
    return " ".join(_tokens(text))


@dataclass
class FilterContext:
    """What a rule may read besides the records: the corpus, the settings, the round trip's embedder."""

    dataset: Corpus
    config: FilterConfig
    embed: Embed | None
    work_dir: Path
    stats: dict[str, Any] = field(default_factory=dict)  # a rule's own counts, added to the report


FilterRule = Callable[[Sequence[SyntheticRecord], FilterContext], list[bool]]
"""Records still kept (input order) -> whether each is dropped."""
FILTER_RULES: Registry[FilterRule] = Registry("filter rule")


def per_record(check: Callable[[SyntheticRecord, FilterContext], bool]) -> FilterRule:
    """A rule that judges each record alone."""
    def rule(records: Sequence[SyntheticRecord], context: FilterContext) -> list[bool]:
        return [check(record, context) for record in records]
    rule.__doc__ = check.__doc__
    return rule


@FILTER_RULES.register("empty")
@per_record
def _is_empty(record: SyntheticRecord, context: FilterContext) -> bool:
    """Nothing written."""
    return not record.text.strip()


@FILTER_RULES.register("length")
@per_record
def _bad_length(record: SyntheticRecord, context: FilterContext) -> bool:
    """Fewer words than ``min_words`` or more than ``max_words`` (per task)."""
    config = context.config
    words = len(record.text.split())
    return (words < config.min_words.get(record.task, 0)
            or words > config.max_words.get(record.task, float("inf")))


@FILTER_RULES.register("question_form")
@per_record
def _not_question(record: SyntheticRecord, context: FilterContext) -> bool:
    """A "question" that neither ends with "?" nor starts with a question word."""
    if not context.config.question_form or record.task != "question":
        return False
    text = record.text.strip()
    tokens = _tokens(text)
    return not (text.endswith("?") or (tokens and tokens[0] in QUESTION_WORDS))


@FILTER_RULES.register("keyword_list")
@per_record
def _bad_keyword_list(record: SyntheticRecord, context: FilterContext) -> bool:
    """A keyword list with too few items, or an item that is a sentence."""
    config = context.config
    if record.task != "keywords":
        return False
    items = keyword_items(record.text, config.keyword_separators)
    return len(items) < config.min_keywords or max(len(item.split()) for item in items) > config.max_keyword_words


@FILTER_RULES.register("repetition")
@per_record
def _repetitive(record: SyntheticRecord, context: FilterContext) -> bool:
    """A word run, repeated n-grams or repeated keyword items: a generation stuck in a loop."""
    config = context.config
    tokens = _tokens(record.text)
    run = 1
    for previous, token in zip(tokens, tokens[1:]):
        run = run + 1 if token == previous else 1
        if run >= config.max_token_run:
            return True
    grams = _ngrams(tokens, config.repetition_ngram)
    if grams and 1 - len(set(grams)) / len(grams) > config.max_repeat_ratio:
        return True
    if record.task != "keywords":
        return False
    items = [normalise(item) for item in keyword_items(record.text, config.keyword_separators)]
    return bool(items) and 1 - len(set(items)) / len(items) > config.max_duplicate_keywords


@FILTER_RULES.register("copy")
@per_record
def _copied(record: SyntheticRecord, context: FilterContext) -> bool:
    """A text pasted from its passage's body (title excluded: restating the title is a fine query)."""
    config = context.config
    return record.task in config.copy_tasks and copy_ratio(
        record.text, context.dataset.corpus[record.doc_id].text, config.copy_ngram) >= config.copy_threshold


@FILTER_RULES.register("duplicate")
def _duplicates(records: Sequence[SyntheticRecord], context: FilterContext) -> list[bool]:
    """The same text (case, spacing, punctuation ignored) as an earlier kept one of its document and task."""
    seen: set[tuple[str, str, str]] = set()
    drops = []
    for record in records:
        key = (record.doc_id, record.task, normalise(record.text))
        drops.append(context.config.dedup and key in seen)
        seen.add(key)
    return drops


@FILTER_RULES.register("roundtrip")
def _fails_roundtrip(records: Sequence[SyntheticRecord], context: FilterContext) -> list[bool]:
    """A text that, embedded, does not find its own document in the corpus's top ``roundtrip_k``
    (Promptagator's consistency filter)."""
    config = context.config
    checked = [i for i, record in enumerate(records) if config.roundtrip and record.task in config.roundtrip_tasks]
    drops = [False] * len(records)
    context.stats["roundtrip_checked"] = len(checked)
    if not checked:
        return drops
    if context.embed is None:
        raise ValueError("the round-trip rule needs an encoder: set filter.encoder to a model path, or "
                         "filter.roundtrip: false")
    hits = roundtrip_hits([records[i].text for i in checked], [records[i].doc_id for i in checked],
                          context.dataset, context.embed, config.roundtrip_k, context.work_dir)
    for i, hit in zip(checked, hits):
        drops[i] = not hit
    return drops


def roundtrip_hits(texts: Sequence[str], own_doc_ids: Sequence[str], dataset: Corpus, embed: Embed, k: int,
                   work_dir: Path) -> list[bool]:
    """Whether each text, embedded, finds its own document among the corpus' top ``k``.

    The corpus vectors are cached in ``work_dir`` by ``embed``, so a rerun (or a second filter pass
    with other thresholds) embeds only the synthetic texts again.
    """
    doc_ids = list(dataset.doc_ids)
    corpus_ids, corpus_vectors = embed([(d, dataset.doc_text(d)) for d in doc_ids],
                                       work_dir / "roundtrip-corpus.safetensors")
    query_items = [(str(i), text) for i, text in enumerate(texts)]
    _, query_vectors = embed(query_items, work_dir / "roundtrip-queries.safetensors")
    _, indices = exact_search(query_vectors, corpus_vectors, k)
    position = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    own = [position[d] for d in own_doc_ids]
    return [own_index in set(row.tolist()) for own_index, row in zip(own, indices)]


@dataclass
class FilterResult:
    """What the filter kept, what it dropped (with the first rule each failed) and the counts."""

    kept: list[SyntheticRecord]
    dropped: list[tuple[SyntheticRecord, str]]
    report: dict[str, Any]


def _empty_report(records: Sequence[SyntheticRecord]) -> dict[str, Any]:
    tasks = [task for task in TASKS if any(r.task == task for r in records)]
    return {task: {"total": 0, "kept": 0, "dropped": {rule: 0 for rule in FILTER_RULES}} for task in tasks}


def _coverage(records: Sequence[SyntheticRecord], kept: Sequence[SyntheticRecord], corpus_size: int) -> dict[str, Any]:
    """Documents with outputs before and after the filter, per task: a stage whose outputs are kept for some
    documents only promotes those documents unless the evaluation falls back for the others (issue 15)."""
    def documents(rows: Sequence[SyntheticRecord], task: str | None = None) -> int:
        return len({r.doc_id for r in rows if task is None or r.task == task})

    tasks = [task for task in TASKS if any(r.task == task for r in records)]
    return {"corpus_documents": corpus_size, "with_outputs": documents(records), "with_kept": documents(kept),
            "kept_share": round(documents(kept) / corpus_size, 4) if corpus_size else 0.0,
            "per_task": {task: {"with_outputs": documents(records, task), "with_kept": documents(kept, task)}
                         for task in tasks}}


def filter_records(records: Sequence[SyntheticRecord], dataset: Corpus, config: FilterConfig,
                   embed: Embed | None = None, work_dir: Path | None = None) -> FilterResult:
    """Apply every registered rule in order; keep records in their input order.

    ``embed`` embeds texts for the round trip (the pipeline binds the encoder); ``work_dir`` caches the
    round trip's corpus vectors (a temporary folder when None).
    """
    start = time.perf_counter()
    unknown = sorted({r.doc_id for r in records if r.doc_id not in dataset.corpus})
    if unknown:
        raise KeyError(f"{len(unknown)} synthetic records' documents are not in the corpus (e.g. {unknown[:5]}); "
                       "read the file with read_synthetic(..., corpus_ids=dataset.corpus)")
    verdict: list[str | None] = [None] * len(records)
    with tempfile.TemporaryDirectory(prefix="filter-") as tmp:
        context = FilterContext(dataset, config, embed, Path(work_dir) if work_dir is not None else Path(tmp))
        for name, rule in FILTER_RULES.items():
            open_ = [i for i, rule_name in enumerate(verdict) if rule_name is None]
            for i, drop in zip(open_, rule([records[i] for i in open_], context)):
                if drop:
                    verdict[i] = name
    kept = [r for r, v in zip(records, verdict) if v is None]
    dropped = [(r, v) for r, v in zip(records, verdict) if v is not None]
    per_task = _empty_report(records)
    for record, rule in zip(records, verdict):
        per_task[record.task]["total"] += 1
        if rule is None:
            per_task[record.task]["kept"] += 1
        else:
            per_task[record.task]["dropped"][rule] += 1
    per_rule = {rule: sum(task["dropped"][rule] for task in per_task.values()) for rule in FILTER_RULES}
    report = {"total": len(records), "kept": len(kept), "documents_kept": len({r.doc_id for r in kept}),
              "coverage": _coverage(records, kept, len(dataset.corpus)),
              "rules": FILTER_RULES.names(), "per_task": per_task, "per_rule": per_rule, **context.stats,
              "seconds": round(time.perf_counter() - start, 2), "config": asdict(config)}
    log.info("filter kept %d of %d records (%s)", len(kept), len(records),
             ", ".join(f"{rule}: {n}" for rule, n in per_rule.items() if n))
    return FilterResult(kept, dropped, report)
