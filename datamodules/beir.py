"""Read and write BEIR folders: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Why this shape: BEIR corpora reach millions of documents, so corpus and queries go through the
HF ``datasets`` json builder (arrow, cached by the file's content: :func:`content_name`) and every
check runs on arrow columns. A column check can only say *that* something is wrong; to say
*where*, a failed build or check is followed by a line scan that names file, line and field.

The rules are BEIR's own (``GenericDataLoader`` and its models): a document's text is
``(title + " " + text).strip()``; the title may be missing or empty, the text may be empty when a
title exists; only the queries judged in the split are kept. A document with neither is kept too, as
BEIR keeps it (``empty_documents``: keep, drop or error; kept or dropped with a warning that gives their
count and lines). Where BEIR is silent we are strict: a repeated id or a judgement naming an unknown id is
reported, never guessed. Numeric JSON ids are read as their decimal text, because qrels ids are text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from core.fingerprint import file_signature
from core.io import (InputError, atomic_open, decode_utf8_line, iter_jsonl, require_field, require_file,
                     write_jsonl_atomic)

log = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_HEADER = ("query-id", "corpus-id", "score")
LAYOUT_HINT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
EXAMPLES_SHOWN = 3
JSON_CHUNK_BYTES = 10 << 20  # bytes the json builder parses at once (its default); fields may vary between chunks
EmptyDocuments = Literal["keep", "drop", "error"]
UnknownIds = Literal["warn", "fail", "keep"]
NOT_COMPARABLE = ("scores are no longer comparable with BEIR and pytrec_eval, which count a judged document "
                  "missing from the corpus as relevant and never retrieved")


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass
class BeirDataset:
    """One split of a BEIR folder, held in memory; dicts keep file order."""

    root: Path
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def doc_text(self, doc_id: str) -> str:
        """BEIR's join of title and text (a missing title is stored as ``""``, giving the text alone)."""
        doc = self.corpus[doc_id]
        return (doc.title + " " + doc.text).strip()

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    @property
    def num_judgements(self) -> int:
        return sum(len(docs) for docs in self.qrels.values())


# --------------------------------------------------------------------------- record rules
# One function per record kind, used by the line scan; the column checks in _column_problem
# test the same rules on arrow arrays, so both paths accept and reject the same files.

def _check_id(obj: dict[str, Any], path: Path, line: int) -> str | int:
    if isinstance(obj.get("_id"), bool):
        raise InputError("expected str or int, got bool", path=path, line=line, field="_id")
    return require_field(obj, "_id", path, line, kind=(str, int))


def _check_document(obj: dict[str, Any], path: Path, line: int) -> str | int:
    doc_id = _check_id(obj, path, line)
    text = require_field(obj, "text", path, line, kind=str, allow_empty=True)
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise InputError(f"expected str, got {type(title).__name__}", path=path, line=line, field="title")
    return doc_id  # an empty document is the empty_documents policy's business (_empty_documents)


def _check_query(obj: dict[str, Any], path: Path, line: int) -> str | int:
    query_id = _check_id(obj, path, line)
    require_field(obj, "text", path, line, kind=str)
    return query_id


@dataclass(frozen=True)
class _RecordKind:
    noun: str
    string_fields: tuple[str, ...]
    check: Callable[[dict[str, Any], Path, int], str | int]


DOCUMENTS = _RecordKind("documents", ("_id", "title", "text"), _check_document)
QUERIES = _RecordKind("queries", ("_id", "text"), _check_query)


def _blank(array: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(array)), 0)


def _column_problem(table: pa.Table, kind: _RecordKind) -> str | None:
    """Name the first rule the columns break, or None; arrow does the per-row work."""
    ids, text = table.column("_id"), table.column("text")
    for name in kind.string_fields:
        try:
            table.column(name).validate(full=True)
        except pa.ArrowInvalid as err:  # invalid UTF-8 passes the json reader; it fails here
            return f"column '{name}' is not valid UTF-8 ({err})"
    if ids.null_count or text.null_count:
        return "a missing '_id' or 'text'"
    if pc.any(_blank(ids)).as_py():
        return "an empty '_id'"
    if kind is QUERIES and pc.any(_blank(text)).as_py():
        return "an empty 'text'"
    if pc.count_distinct(ids).as_py() != len(ids):
        return "a repeated '_id'"
    return None


JSON_LITERAL = r'(?s)^(".*"|\[.*\]|\{.*\}|-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false)$'


def _maybe_json_encoded(table: pa.Table, kind: _RecordKind) -> bool:
    """Whether the builder may have stored a column as JSON text, as it does for a field that changes
    type within a chunk of lines (an id that is a number here and a string there becomes ``'"d1"'``).

    Cheap signs, so that the slow line scan runs only when one shows: an id in quotes or brackets, or
    two consecutive titles or texts that both read as JSON literals (in an encoded chunk every value
    does; a genuine title in quotes sits among plain ones).
    """
    ids = table.column("_id")
    if pc.any(pc.match_substring_regex(ids, r'^["\[{]')).as_py():
        return True
    for name in (n for n in kind.string_fields if n != "_id"):
        literal = pc.match_substring_regex(pc.drop_null(table.column(name)), JSON_LITERAL)
        if len(literal) > 1 and pc.any(pc.and_(literal[:-1], literal[1:])).as_py():
            return True
    return False


def _scan_for_problem(path: Path, kind: _RecordKind, columns: Iterable[str]) -> None:
    """Read ``path`` line by line and raise an :class:`InputError` at the first bad line."""
    allowed = set(columns)
    first_seen: dict[str, int] = {}
    first_id_line: tuple[type, int] | None = None
    for line, obj in iter_jsonl(path):
        raw_id = kind.check(obj, path, line)
        if first_id_line is None:
            first_id_line = (type(raw_id), line)
        elif type(raw_id) is not first_id_line[0]:
            names = {str: "a string", int: "a number"}
            raise InputError(f"id is {names[type(raw_id)]} here but {names[first_id_line[0]]} on line "
                             f"{first_id_line[1]}", path=path, line=line, field="_id",
                             hint="write every id as a JSON string")
        record_id = str(raw_id)
        unexpected = sorted(set(obj) - allowed)
        if unexpected:
            raise InputError(f"field not on the first line, which fixes the columns ({', '.join(sorted(allowed))})",
                             path=path, line=line, field=unexpected[0],
                             hint="give every line the same top-level fields, or drop this one")
        if record_id in first_seen:
            raise InputError(f"duplicate id '{record_id}' (first on line {first_seen[record_id]}, "
                             f"again on line {line})", path=path, line=line, field="_id",
                             hint="ids must be unique within the file")
        first_seen[record_id] = line


def _first_blank_line(path: Path) -> int | None:
    with open(path, "rb") as handle:
        return next((line for line, raw in enumerate(handle, start=1) if not raw.strip()), None)


def content_name(path: Path) -> str:
    """A ``datasets`` config name from the file's size and SHA-256: its cache is keyed by path and modification
    time only, so a file rewritten in place with its mtime kept (``touch -r``, a restored backup) was served
    from the old cache; with the content in the name it is read again."""
    size, sha256 = file_signature(path)
    return f"content-{size}-{sha256[:24]}"


def _read_records(path: Path, kind: _RecordKind, cache_dir: Path | None) -> pa.Table:
    """Load ``path`` through the ``datasets`` json builder and check it; return the needed columns.

    Every top-level field is declared a string column: nested ``metadata`` (whose shape varies
    between documents in real BEIR folders and breaks arrow's type inference) is then stored
    as JSON text instead of an inferred struct.
    """
    import datasets

    first = next(iter_jsonl(path), None)  # also reports a bad first line precisely
    if first is None:
        raise InputError(f"no {kind.noun}: the file is empty", path=path, hint=LAYOUT_HINT)
    _, first_record = first
    columns = list(dict.fromkeys([*kind.string_fields, "metadata", *first_record]))
    features = datasets.Features({name: datasets.Value("string") for name in columns})
    try:
        loaded = datasets.load_dataset("json", data_files={"records": str(path)}, split="records",
                                       features=features, chunksize=JSON_CHUNK_BYTES, name=content_name(path),
                                       cache_dir=None if cache_dir is None else str(cache_dir))
    except datasets.exceptions.DatasetGenerationError as err:
        _scan_for_problem(path, kind, columns)
        blank = _first_blank_line(path)
        if blank is not None:
            raise InputError("blank line", path=path, line=blank,
                             hint="the datasets json reader cannot skip blank lines once a field changes type "
                                  "between lines; delete the blank lines") from err
        raise InputError(f"the datasets json reader failed ({err.__cause__ or err}) and no line shows why",
                         path=path) from err
    table = loaded.data.table.select(list(kind.string_fields))
    problem = _column_problem(table, kind)
    if problem is not None:
        _scan_for_problem(path, kind, columns)
        raise InputError(f"found {problem} in the columns but no line shows it; please report this", path=path)
    if _maybe_json_encoded(table, kind):
        _scan_for_problem(path, kind, columns)  # raises at a field of the wrong type; else the values are genuine
    return table


# --------------------------------------------------------------------------- qrels

@dataclass(frozen=True)
class _Judgement:
    query_id: str
    doc_id: str
    score: int
    line: int


HEADER_WORDS = ("query", "qid", "topic", "corpus", "doc", "pid", "passage")


def _is_header(columns: list[str], path: Path, line: int) -> bool:
    """Whether the first line is a header: BEIR's names, or other names for them (``qid docid rel``).

    BEIR's loader skips the first line whatever it holds; here other names are accepted with a warning when
    they read as a query and a document column over no score, and BEIR's names in another order are refused
    (the columns would be read swapped). Anything else on line 1 is data, and checked as such.
    """
    names = tuple(c.strip().lower() for c in columns)
    if names == QRELS_HEADER:
        return True
    named = all(any(word in name for word in HEADER_WORDS) for name in names[:2])
    if len(names) != 3 or names[2].lstrip("+-").isdigit() or not named:
        return False
    if sorted(names) == sorted(QRELS_HEADER):
        raise InputError(f"header columns in another order ({', '.join(names)})", path=path, line=line,
                         hint=f"BEIR reads the columns as {', '.join(QRELS_HEADER)}: reorder them")
    log.warning("%s: line %d read as a header with other column names (%s); BEIR's are %s, in that order",
                path, line, ", ".join(names), ", ".join(QRELS_HEADER))
    return True


def _column_count_error(text: str, columns: list[str], path: Path, line: int) -> InputError:
    hint = "BEIR qrels separate the columns by tabs"
    if len(text.split()) == 4:
        hint = ("this looks like TREC qrels (query-id iteration doc-id score); convert with: "
                f"awk -v OFS='\\t' '{{print $1, $3, $4}}' {path}")
    return InputError(f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(columns)}",
                      path=path, line=line, hint=hint)


def read_qrels(path: Path) -> list[_Judgement]:
    """Parse a BEIR qrels TSV; the header line is optional (see :func:`_is_header`)."""
    judgements: list[_Judgement] = []
    first_seen: dict[tuple[str, str], _Judgement] = {}
    repeats = 0
    seen_content = False
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            text = decode_utf8_line(raw, path, line).rstrip("\r\n")
            if not text.strip():
                continue
            columns = text.split("\t")
            is_header = not seen_content and _is_header(columns, path, line)
            seen_content = True
            if is_header:
                continue
            if len(columns) != 3:
                raise _column_count_error(text, columns, path, line)
            query_id, doc_id, score_text = columns
            for name, value in (("query-id", query_id), ("corpus-id", doc_id)):
                if not value.strip():
                    raise InputError("empty", path=path, line=line, field=name)
            try:
                score = int(score_text)
            except ValueError:
                header = "" if first_seen else " (a header line names its columns query-id, corpus-id, score)"
                raise InputError(f"'{score_text}' is not an integer", path=path, line=line, field="score",
                                 hint=f"BEIR relevance scores are integers such as 0, 1, 2{header}") from None
            judgement = _Judgement(query_id, doc_id, score, line)
            earlier = first_seen.get((query_id, doc_id))
            if earlier is not None:
                if earlier.score != score:
                    raise InputError(f"query '{query_id}' judges document '{doc_id}' {score} here but {earlier.score} "
                                     f"on line {earlier.line}", path=path, line=line, field="score")
                repeats += 1
                continue
            first_seen[(query_id, doc_id)] = judgement
            judgements.append(judgement)
    if repeats:
        log.warning("%s: %d judgement(s) repeat an earlier line with the same score; kept once", path, repeats)
    return judgements


def _count_phrase(items: list[_Judgement], what: str, attribute: str) -> str:
    verb = "names" if len(items) == 1 else "name"
    noun = "judgement" if len(items) == 1 else "judgements"
    examples = ", ".join(f"'{getattr(j, attribute)}' on line {j.line}" for j in items[:EXAMPLES_SHOWN])
    return f"{len(items)} {noun} {verb} unknown {what} (e.g. {examples})"


def _resolve_unknown_ids(judgements: list[_Judgement], corpus: dict[str, Document], queries: dict[str, str],
                         path: Path, unknown_ids: UnknownIds) -> list[_Judgement]:
    """Count judgements naming ids absent from corpus or queries; drop them with a warning, keep or fail.

    ``keep`` scores them as BEIR does: a judged document missing from the corpus stays in the qrels (relevant,
    never retrieved); a judgement of a query without text is dropped all the same (there is nothing to
    search with; BEIR's loader stops there with a KeyError).
    """
    unknown_queries = [j for j in judgements if j.query_id not in queries]
    unknown_docs = [j for j in judgements if j.doc_id not in corpus]
    if not unknown_queries and not unknown_docs:
        return judgements
    parts = []
    if unknown_docs:
        parts.append(_count_phrase(unknown_docs, "documents", "doc_id"))
    if unknown_queries:
        parts.append(_count_phrase(unknown_queries, "queries", "query_id"))
    message = "; ".join(parts)
    if unknown_ids == "fail":
        raise InputError(message, path=path, hint="fix the ids, or set data.unknown_ids to 'warn' (drop them) "
                                                  "or 'keep' (score them as BEIR does)")
    if unknown_ids == "keep":
        kept = "kept the documents' judgements as BEIR does (relevant, never retrieved)"
        dropped = "; dropped the queries' judgements (no text to search with)" if unknown_queries else ""
        log.warning("%s: %s; %s%s (data.unknown_ids: keep)", path, message, kept, dropped)
        return [j for j in judgements if j.query_id in queries]
    consequence = f"; {NOT_COMPARABLE} (set data.unknown_ids to 'keep' to score them so)" if unknown_docs else ""
    log.warning("%s: %s; dropped them (data.unknown_ids: warn)%s", path, message, consequence)
    return [j for j in judgements if j.query_id in queries and j.doc_id in corpus]


# --------------------------------------------------------------------------- loading

def available_splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / QRELS_DIR).glob("*.tsv") if p.is_file())


def _qrels_path(root: Path, split: str) -> Path:
    path = root / QRELS_DIR / f"{split}.tsv"
    if path.exists() or path.with_name(path.name + ".gz").exists():
        return require_file(path, LAYOUT_HINT)  # a folder or a compressed copy, said as such
    if not path.is_file():
        splits = available_splits(root)
        found = f"splits here: {', '.join(splits)}" if splits else f"no qrels/*.tsv in {root}"
        raise InputError(f"split '{split}' not found; {found}", path=path, hint=LAYOUT_HINT)
    return path


def _record_lines(path: Path, rows: list[int]) -> list[int]:
    """The line numbers of the given record rows (the json builder skips blank lines; so does this count)."""
    wanted, found, row = set(rows), {}, -1
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if raw.strip():
                row += 1
                if row in wanted:
                    found[row] = line
                    if len(found) == len(wanted):
                        break
    return [found[r] for r in rows]


def _empty_documents(table: pa.Table, path: Path, policy: EmptyDocuments,
                     judged: set[str]) -> pa.Table:
    """Apply the ``empty_documents`` policy to documents whose title and text are both blank.

    Kept by default, as BEIR keeps them: generation gets an empty prompt text, embedding an empty text, and
    a judged one stays in the qrels, so scores match BEIR's. A warning gives their count and first lines.
    """
    titles = pc.fill_null(table.column("title"), "")
    empty = pc.and_(_blank(titles), _blank(table.column("text")))
    rows = pc.indices_nonzero(empty).to_pylist()
    if not rows:
        return table
    lines = _record_lines(path, rows[:EXAMPLES_SHOWN])
    ids = table.column("_id").take(pa.array(rows)).to_pylist()
    where = ", ".join(f"line {line}" for line in lines) + (", ..." if len(rows) > len(lines) else "")
    n_judged = sum(doc_id in judged for doc_id in ids)
    what = f"{len(rows)} empty document(s), 'title' and 'text' both blank ({where}); {n_judged} of them judged"
    if policy == "error":
        raise InputError(f"empty document: 'title' and 'text' are both empty ({what})", path=path, line=lines[0],
                         field="text", hint="give the document some text or remove it (and its judgements), or set "
                                            "data.empty_documents to 'keep' (as BEIR does) or 'drop'")
    if policy == "drop":
        log.warning("%s: %s; dropped them (data.empty_documents: drop)%s", path, what,
                    "; their judgements now name unknown documents" if n_judged else "")
        return table.filter(pc.invert(empty))
    log.warning("%s: %s; kept them as BEIR does (data.empty_documents: keep|drop|error)", path, what)
    return table


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def is_corpus_only(root: str | Path) -> bool:
    """A folder with ``corpus.jsonl`` and neither ``queries.jsonl`` nor ``qrels/``: documents without judgements."""
    root = Path(root)
    return not (root / QUERIES_FILE).exists() and not (root / QRELS_DIR).exists()


def _read_corpus(path: Path, cache: Path | None, empty_documents: EmptyDocuments,
                 judged: set[str]) -> dict[str, Document]:
    table = _empty_documents(_read_records(path, DOCUMENTS, cache), path, empty_documents, judged)
    titles = pc.fill_null(table.column("title"), "").to_pylist()
    return dict(zip(table.column("_id").to_pylist(), map(Document, titles, table.column("text").to_pylist())))


def load_beir(root: str | Path, split: str = "test", unknown_ids: UnknownIds = "warn",
              cache_dir: str | Path | None = None, empty_documents: EmptyDocuments = "keep") -> BeirDataset:
    """Read one split of a BEIR folder, checked; raise :class:`InputError` naming file, line and field.

    A folder with only ``corpus.jsonl`` (:func:`is_corpus_only`) gives a dataset without queries and qrels.

    ``unknown_ids`` decides what a judgement naming an absent query or document does: "warn" drops
    it with a logged warning (the scores then differ from BEIR's), "keep" scores it as BEIR does,
    "fail" raises. ``empty_documents``: see :func:`_empty_documents`.
    ``cache_dir`` is the ``datasets`` cache (default: ``HF_DATASETS_CACHE``).
    """
    _check_option("unknown_ids", unknown_ids, ("warn", "fail", "keep"))
    _check_option("empty_documents", empty_documents, ("keep", "drop", "error"))
    root = Path(root)
    if not root.is_dir():
        raise InputError("BEIR folder not found", path=root, hint=LAYOUT_HINT)
    corpus_path = require_file(root / CORPUS_FILE, LAYOUT_HINT)
    cache = None if cache_dir is None else Path(cache_dir)
    if is_corpus_only(root):  # the method needs no judgements: every stage up to the index runs
        return BeirDataset(root=root, split=split, corpus=_read_corpus(corpus_path, cache, empty_documents, set()),
                           queries={}, qrels={})
    queries_path = require_file(root / QUERIES_FILE, LAYOUT_HINT)
    qrels_path = _qrels_path(root, split)

    judgements = read_qrels(qrels_path)  # cheap: fail on bad qrels before building a large corpus cache
    corpus = _read_corpus(corpus_path, cache, empty_documents, {j.doc_id for j in judgements})
    query_table = _read_records(queries_path, QUERIES, cache)
    all_queries = dict(zip(query_table.column("_id").to_pylist(), query_table.column("text").to_pylist()))

    kept = _resolve_unknown_ids(judgements, corpus, all_queries, qrels_path, unknown_ids)
    if not kept:
        dropped = len(judgements) - len(kept)
        why = f" after dropping {dropped} judgement(s) with unknown ids" if dropped else ""
        raise InputError(f"no judged queries in split '{split}'{why}", path=qrels_path,
                         hint="each line of a qrels file reads query-id<TAB>corpus-id<TAB>score")
    qrels: dict[str, dict[str, int]] = {}
    for j in kept:
        qrels.setdefault(j.query_id, {})[j.doc_id] = j.score
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    qrels = {qid: qrels[qid] for qid in queries}  # file order of queries.jsonl
    return BeirDataset(root=root, split=split, corpus=corpus, queries=queries, qrels=qrels)


# --------------------------------------------------------------------------- writing

def _write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    with atomic_open(path, "w") as handle:
        handle.write("\t".join(QRELS_HEADER) + "\n")
        for query_id, docs in qrels.items():
            for doc_id, score in docs.items():
                handle.write(f"{query_id}\t{doc_id}\t{score}\n")


def write_beir(dataset: BeirDataset, out_dir: Path, extra_splits: dict[str, dict[str, dict[str, int]]] | None = None,
               extra_queries: dict[str, str] | None = None) -> None:
    """Write ``dataset`` as a BEIR folder, each file atomically.

    ``extra_splits`` adds qrels of other splits (``{split: qrels}``); the queries they judge must be
    in ``dataset.queries`` or ``extra_queries`` and their documents in the corpus.
    """
    out_dir = Path(out_dir)
    splits = {dataset.split: dataset.qrels, **(extra_splits or {})}
    known_queries = {**dataset.queries, **(extra_queries or {})}
    for split, qrels in splits.items():
        missing_queries = [qid for qid in qrels if qid not in known_queries]
        missing_docs = [did for docs in qrels.values() for did in docs if did not in dataset.corpus]
        if missing_queries or missing_docs:
            raise ValueError(f"split '{split}' judges {len(missing_queries)} query id(s) without text "
                             f"(e.g. {missing_queries[:EXAMPLES_SHOWN]}) and {len(missing_docs)} document id(s) "
                             f"outside the corpus (e.g. {missing_docs[:EXAMPLES_SHOWN]})")
    judged = {qid for qrels in splits.values() for qid in qrels}
    write_jsonl_atomic(out_dir / CORPUS_FILE, ({"_id": doc_id, "title": doc.title, "text": doc.text}
                                               for doc_id, doc in dataset.corpus.items()))
    write_jsonl_atomic(out_dir / QUERIES_FILE, ({"_id": qid, "text": text}
                                                for qid, text in known_queries.items() if qid in judged))
    for split, qrels in splits.items():
        _write_qrels(out_dir / QRELS_DIR / f"{split}.tsv", qrels)


def read_queries(path: str | Path) -> dict[str, str]:
    """A ``queries.jsonl`` on its own (``train.py search``): ``{_id: text}`` in file order, checked line by line."""
    path = Path(path)
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, obj in iter_jsonl(path):
        query_id = str(_check_query(obj, path, line))
        if query_id in queries:
            raise InputError(f"duplicate id '{query_id}' (first on line {first_line[query_id]})", path=path, line=line,
                             field="_id")
        queries[query_id], first_line[query_id] = obj["text"], line
    if not queries:
        raise InputError("no queries: the file is empty", path=path)
    return queries
