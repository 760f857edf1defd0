"""The quality filter over synthetic records, and the self-instruct split built from what it keeps.

Why a filter: a generator (a small LLM, or an untrained decoder) writes junk often enough to
matter: empty or truncated outputs, statements instead of questions, keyword lists that are one
sentence, the same phrase forty times, a sentence pasted from the passage, or a question about
something else. Training on them teaches the model to write them. Each rule below targets one of
these failures; the report says how many records each rule dropped, per task, so a threshold can
be judged on numbers instead of guessed.

Rules run in the fixed order of ``RULES`` (cheap text checks first, the round trip, which needs an
encoder, last); a record is dropped by the first rule it fails and the report names that rule.
"""

from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger

from callbacks.tables import log_table
from datamodules.downsample import DataConfig, load_dataset_from_config
from datamodules.prompts import TASKS, PromptTemplates
from retrieval.io import write_json_atomic, write_jsonl_atomic
from retrieval.synthetic import FileFormat, SyntheticRecord, UnknownDocPolicy, load_file_source, write_synthetic

if TYPE_CHECKING:
    from datamodules.beir import BeirDataset

log = logging.getLogger(__name__)

RULES = ("empty", "length", "question_form", "keyword_list", "repetition", "copy", "duplicate", "roundtrip")
"""Order in which rules run; a record is dropped by the first one it fails."""

QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how", "is", "are", "was", "were",
                  "do", "does", "did", "can", "could", "should", "would", "will", "has", "have", "had", "may",
                  "might", "must", "in", "to", "for", "among", "according")
_TOKEN = re.compile(r"\w+")


@dataclass
class FilterConfig:
    """Every rule of the quality filter (defaults chosen on 2,345 real teacher outputs on SciFact).

    Attributes:
        min_words: per task, fewest whitespace words. A 1-2 word "question" carries no information need.
        max_words: per task, most words. Teacher questions are 5-32 words (99th percentile 32); longer
            ones are several questions run together or a pasted abstract. Keyword lists are capped by
            the list rule; 60 words only catches runaway generations.
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
            ("cell-based therapies, cell-based therapies, ...") score 0.5-0.75, normal text under 0.1.
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
        roundtrip_k: rank cutoff of the round trip. On SciFact (5,183 documents, MiniLM) the generic
            texts that fit any abstract ("What is the main goal of the study?", "Purpose, objectives,
            findings") rank their document beyond 100, while specific questions that miss the top 20
            mostly rank 21-54; 100 drops the first kind and keeps the second. A weaker encoder (an
            untuned model's own encoder) also needs the room.
        roundtrip_tasks: tasks the round trip checks; generic keyword lists fail it as generic questions do.
        encoder: the round-trip encoder (path or name for ``embed_texts``); null means the one the
            pipeline passes (the model being trained), so the filter judges with the model's own eyes.
        val_fraction: share of kept *documents* held out for validation.
        seed: seed of the document split.
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
    val_fraction: float = 0.1
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
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"filter.val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
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


@dataclass
class FilterResult:
    """What the filter kept, what it dropped (with the first rule each failed) and the counts."""

    kept: list[SyntheticRecord]
    dropped: list[tuple[SyntheticRecord, str]]
    report: dict[str, Any]


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def keyword_items(text: str, separators: str) -> list[str]:
    """The non-empty items of a keyword list (a trailing "and" before the last item is removed)."""
    items = re.split(f"[{re.escape(separators)}]", text)
    return [re.sub(r"^(and|or)\s+", "", item.strip(" .\t"), flags=re.IGNORECASE) for item in items if item.strip(" .\t")]


def _is_empty(record: SyntheticRecord, config: FilterConfig) -> bool:
    return not record.text.strip()


def _bad_length(record: SyntheticRecord, config: FilterConfig) -> bool:
    words = len(record.text.split())
    return (words < config.min_words.get(record.task, 0)
            or words > config.max_words.get(record.task, float("inf")))


def _not_question(record: SyntheticRecord, config: FilterConfig) -> bool:
    if not config.question_form or record.task != "question":
        return False
    text = record.text.strip()
    tokens = _tokens(text)
    return not (text.endswith("?") or (tokens and tokens[0] in QUESTION_WORDS))


def _bad_keyword_list(record: SyntheticRecord, config: FilterConfig) -> bool:
    if record.task != "keywords":
        return False
    items = keyword_items(record.text, config.keyword_separators)
    return len(items) < config.min_keywords or max(len(item.split()) for item in items) > config.max_keyword_words


def _repetitive(record: SyntheticRecord, config: FilterConfig) -> bool:
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


RecordCheck = Callable[[SyntheticRecord, FilterConfig], bool]
_TEXT_RULES: tuple[tuple[str, RecordCheck], ...] = (
    ("empty", _is_empty), ("length", _bad_length), ("question_form", _not_question),
    ("keyword_list", _bad_keyword_list), ("repetition", _repetitive),
)


def _first_failed_rule(record: SyntheticRecord, dataset: BeirDataset, config: FilterConfig,
                       seen: set[tuple[str, str, str]]) -> str | None:
    """The first rule (up to ``duplicate``) that drops ``record``; ``seen`` collects the kept texts."""
    for name, check in _TEXT_RULES:
        if check(record, config):
            return name
    if record.task in config.copy_tasks and \
            copy_ratio(record.text, dataset.corpus[record.doc_id].text, config.copy_ngram) >= config.copy_threshold:
        return "copy"
    key = (record.doc_id, record.task, normalise(record.text))
    if config.dedup and key in seen:
        return "duplicate"
    seen.add(key)
    return None


def roundtrip_hits(texts: Sequence[str], own_doc_ids: Sequence[str], dataset: BeirDataset, encoder: Any, k: int,
                   work_dir: Path) -> list[bool]:
    """Whether each text, embedded by ``encoder``, finds its own document among the corpus' top ``k``.

    The corpus vectors are cached in ``work_dir`` by ``embed_texts``, so a rerun (or a second
    filter pass with other thresholds) embeds only the synthetic texts again.
    """
    from lightning_modules.encoder import EncoderModule
    from retrieval.embed import embed_texts
    from retrieval.search import exact_search

    module = encoder if isinstance(encoder, EncoderModule) else EncoderModule(str(encoder))  # loaded once
    doc_ids = list(dataset.doc_ids)
    corpus_ids, corpus_vectors = embed_texts([(d, dataset.doc_text(d)) for d in doc_ids], module,
                                             work_dir / "roundtrip-corpus.safetensors")
    query_items = [(str(i), text) for i, text in enumerate(texts)]
    _, query_vectors = embed_texts(query_items, module, work_dir / "roundtrip-queries.safetensors")
    _, indices = exact_search(query_vectors, corpus_vectors, k)
    position = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    own = [position[d] for d in own_doc_ids]
    return [own_index in set(row.tolist()) for own_index, row in zip(own, indices)]


def _empty_report(records: Sequence[SyntheticRecord]) -> dict[str, Any]:
    tasks = [task for task in TASKS if any(r.task == task for r in records)]
    return {task: {"total": 0, "kept": 0, "dropped": {rule: 0 for rule in RULES}} for task in tasks}


def filter_records(records: Sequence[SyntheticRecord], dataset: BeirDataset, config: FilterConfig,
                   encoder: Any = None, work_dir: Path | None = None) -> FilterResult:
    """Apply every rule in ``RULES`` order; keep records in their input order.

    ``encoder`` is the pipeline's current encoder (a path, name or EncoderModule), used for the
    round trip when ``config.encoder`` is null; ``work_dir`` caches the round trip's corpus vectors
    (a temporary folder when None).
    """
    start = time.perf_counter()
    unknown = sorted({r.doc_id for r in records if r.doc_id not in dataset.corpus})
    if unknown:
        raise KeyError(f"{len(unknown)} synthetic records' documents are not in the corpus (e.g. {unknown[:5]}); "
                       "read the file with read_synthetic(..., corpus_ids=dataset.corpus)")
    verdict: list[str | None] = []
    seen: set[tuple[str, str, str]] = set()
    for record in records:
        verdict.append(_first_failed_rule(record, dataset, config, seen))
    roundtrip_checked = 0
    if config.roundtrip:
        candidates = [i for i, (r, v) in enumerate(zip(records, verdict)) if v is None
                      and r.task in config.roundtrip_tasks]
        if candidates:
            round_encoder = config.encoder if config.encoder is not None else encoder
            if round_encoder is None:
                raise ValueError("the round-trip rule needs an encoder: set filter.encoder to a model path, or "
                                 "filter.roundtrip: false")
            with tempfile.TemporaryDirectory(prefix="roundtrip-") as tmp:
                hits = roundtrip_hits([records[i].text for i in candidates], [records[i].doc_id for i in candidates],
                                      dataset, round_encoder, config.roundtrip_k,
                                      Path(work_dir) if work_dir is not None else Path(tmp))
            for i, hit in zip(candidates, hits):
                if not hit:
                    verdict[i] = "roundtrip"
            roundtrip_checked = len(candidates)
    kept = [r for r, v in zip(records, verdict) if v is None]
    dropped = [(r, v) for r, v in zip(records, verdict) if v is not None]
    per_task = _empty_report(records)
    for record, rule in zip(records, verdict):
        per_task[record.task]["total"] += 1
        if rule is None:
            per_task[record.task]["kept"] += 1
        else:
            per_task[record.task]["dropped"][rule] += 1
    per_rule = {rule: sum(task["dropped"][rule] for task in per_task.values()) for rule in RULES}
    report = {"total": len(records), "kept": len(kept), "documents_kept": len({r.doc_id for r in kept}),
              "rules": list(RULES), "per_task": per_task, "per_rule": per_rule,
              "roundtrip_checked": roundtrip_checked, "seconds": round(time.perf_counter() - start, 2),
              "config": asdict(config)}
    log.info("filter kept %d of %d records (%s)", len(kept), len(records),
             ", ".join(f"{rule}: {n}" for rule, n in per_rule.items() if n))
    return FilterResult(kept, dropped, report)


def split_documents(doc_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """A seeded split of documents into (train, val); the same ids and seed always give the same split."""
    docs = sorted(set(doc_ids))
    random.Random(seed).shuffle(docs)
    n_val = max(1, round(val_fraction * len(docs)))
    return set(docs[n_val:]), set(docs[:n_val])


def _too_few_documents(report: dict[str, Any]) -> str:
    worst = max(report["per_rule"].items(), key=lambda item: item[1])
    return (f"only {report['documents_kept']} document(s) kept after the filter ({report['kept']} of "
            f"{report['total']} records); the self-instruct split needs at least 2 so that train and val are both "
            f"non-empty. Rule '{worst[0]}' dropped the most ({worst[1]} records): loosen it in the filter "
            "configuration, or generate for more documents")


def write_selfinstruct(result: FilterResult, dataset: BeirDataset, templates: PromptTemplates, out_dir: Path,
                       val_fraction: float, seed: int) -> dict[str, Any]:
    """Write ``out_dir/{train,val}.jsonl`` (instruction -> target pairs) and ``out_dir/../filter_report.json``.

    The split is by document, seeded, so no document's pairs are in both files; the instruction is
    the task's prompt rendered on the document, the target the kept synthetic text. Every file is
    written atomically; the report, written last, is the stage's proof of completion.
    """
    out_dir = Path(out_dir)
    if result.report["documents_kept"] < 2:
        raise ValueError(_too_few_documents(result.report))
    train_docs, val_docs = split_documents([r.doc_id for r in result.kept], val_fraction, seed)
    if not train_docs:
        raise ValueError(_too_few_documents(result.report))

    def pairs(docs: set[str]) -> list[dict[str, Any]]:
        rows = []
        for r in result.kept:
            if r.doc_id in docs:
                doc = dataset.corpus[r.doc_id]
                rows.append({"doc_id": r.doc_id, "task": r.task, "sample_idx": r.sample_idx,
                             "instruction": templates.render(r.task, doc.title, doc.text), "target": r.text})
        return rows

    split = {"val_fraction": val_fraction, "seed": seed}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        rows = pairs(docs)
        write_jsonl_atomic(out_dir / f"{name}.jsonl", rows)
        split[name] = {"records": len(rows), "documents": len(docs),
                       "per_task": dict(Counter(row["task"] for row in rows))}
    report = {**result.report, "split": split}
    write_json_atomic(out_dir.parent / "filter_report.json", report)
    return report


def sample_rows(result: FilterResult, per_group: int, seed: int) -> list[list[Any]]:
    """Up to ``per_group`` kept records and ``per_group`` dropped records per rule, for a logger table.

    Rows are ``[status, rule, doc_id, task, text]``; the draw is seeded so a rerun logs the same rows.
    """
    rng = random.Random(seed)
    groups: dict[str, list[tuple[SyntheticRecord, str]]] = {"kept": [(r, "") for r in result.kept]}
    for record, rule in result.dropped:
        groups.setdefault(rule, []).append((record, rule))
    rows = []
    for name in ("kept", *RULES):
        members = groups.get(name, [])
        for record, rule in rng.sample(members, min(per_group, len(members))):
            rows.append(["kept" if name == "kept" else "dropped", rule, record.doc_id, record.task, record.text])
    return rows


SAMPLE_COLUMNS = ["status", "rule", "doc_id", "task", "text"]


def run_filter(records: Sequence[SyntheticRecord], dataset: BeirDataset, config: FilterConfig,
               templates: PromptTemplates, run_dir: Path, encoder: Any = None,
               loggers: Logger | Sequence[Logger] | None = None, kept_path: Path | None = None) -> dict[str, Any]:
    """The filter stage: filter, log samples and counts, write ``selfinstruct/`` and ``filter_report.json``.

    ``kept_path``: also write the kept records there (the texts that later augment document vectors).

    The round trip's vectors are cached under ``run_dir/cache/filter``. The sample table is written
    before the split so that, when too few documents survive, it is there to show why.
    """
    run_dir = Path(run_dir)
    result = filter_records(records, dataset, config, encoder, work_dir=run_dir / "cache" / "filter")
    log_table("filter/samples", SAMPLE_COLUMNS, sample_rows(result, config.samples_to_log, config.seed), run_dir,
              loggers)
    if isinstance(loggers, Logger):
        loggers = [loggers]
    counts = {"filter/total": result.report["total"], "filter/kept": result.report["kept"],
              **{f"filter/dropped/{rule}": n for rule, n in result.report["per_rule"].items()}}
    for logger in loggers or ():
        logger.log_metrics(counts)
    if kept_path is not None:
        write_synthetic(kept_path, result.kept)
    return write_selfinstruct(result, dataset, templates, run_dir / "selfinstruct", config.val_fraction, config.seed)


def filter_command(synthetic: Path, data: DataConfig, run_dir: Path, filter: FilterConfig = FilterConfig(),
                   prompts: PromptTemplates = PromptTemplates(), encoder: str | None = None,
                   format: FileFormat = "jsonl", on_unknown_doc: UnknownDocPolicy = "fail") -> dict[str, Any]:
    """Filter a synthetic file made elsewhere against a BEIR corpus and write the self-instruct split.

    Args:
        synthetic: the synthetic file (our JSONL, or BEIR GenQ's ``<prefix>-queries.jsonl``).
        data: the BEIR folder (and optional downsampling) whose corpus the file was made for.
        run_dir: where ``selfinstruct/``, ``filter_report.json``, ``tables/`` and the round-trip cache go.
        filter: the rules (configs/filter/default.yaml lists them with their defaults).
        prompts: the instruction templates rendered into the self-instruct pairs.
        encoder: round-trip encoder when ``filter.encoder`` is null (a sentence-transformers folder or model path).
        format: "jsonl" (ours) or "beir-genq".
        on_unknown_doc: "fail", or "warn" to drop records whose document is not in the corpus.
    """
    dataset = load_dataset_from_config(data)
    records = load_file_source(synthetic, format, dataset.corpus, on_unknown_doc)
    report = run_filter(records, dataset, filter, prompts, run_dir, encoder)
    log.info("filter: kept %d of %d records; self-instruct train %d / val %d pairs in %s", report["kept"],
             report["total"], report["split"]["train"]["records"], report["split"]["val"]["records"], run_dir)
    return report
