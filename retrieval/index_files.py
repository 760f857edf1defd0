"""The index folder: Rao-Blackwellised unit vectors, their documents and a manifest; read back with every check.

Why a folder of plain files: the index is the method's product. Anyone may map ``vectors.safetensors``
(any safetensors reader opens it), load it into a vector store, or check a results row with another
tool; ``search`` and the evaluation read the same files, so what is scored is what is shipped.

Layout (``<run_dir>/index/``, format ``selfinstruct-index/1``):

* ``vectors.safetensors``: every unit's L2-normalised vector (float32 or float16), in the
  ``retrieval.vectors`` format; row ids are ``RecordKey(doc_id, "document"|"sentence", i)`` keys; the units of
  one document are contiguous and documents follow ``ids.json``'s order (sentences first, then, at the
  ``multi`` level, the document's own Rao-Blackwellised vector).
* ``ids.json``: the document ids, a JSON list (any id survives).
* ``offsets.npy`` (``sentence`` and ``multi`` levels): int64, one more than the documents; the units of
  document ``i`` are rows ``offsets[i]:offsets[i + 1]`` (a document with no unit has an empty range).
* ``manifest.json``: written last. Encoder and its fingerprint, dimension, dtype, level, weighting,
  sentence mix, synthetic stages, corpus fingerprint, the command, and each file's size and SHA-256.
* ``index.faiss`` (optional): a FAISS inner-product index over the same rows (``flat``, ``ivf`` or ``hnsw``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from core.io import InputError, atomic_path, file_sha256, write_json_atomic, write_text_atomic
from core.record_key import RecordKey
from retrieval.search import SearchConfig, default_nlist, search
from retrieval.vectors import load_vectors

FORMAT = "selfinstruct-index/1"
VECTORS = "vectors.safetensors"
IDS = "ids.json"
OFFSETS = "offsets.npy"
MANIFEST = "manifest.json"
FAISS = "index.faiss"
DOCUMENT = "document"
"""The task name of a document's own (Rao-Blackwellised) vector in the row keys."""
FaissKind = Literal["flat", "ivf", "hnsw"]
HINT = "rebuild it: python3 train.py index -c <profile> --force '[index]'"


def document_key(doc_id: str) -> str:
    return RecordKey(doc_id, DOCUMENT, 0).encode()


def unit_keys(level: str, doc_ids: Sequence[str], sentence_keys: Mapping[str, Sequence[str]]) -> list[str]:
    """Row keys of an index in its canonical order; ``sentence_keys``: each document's sentence unit keys."""
    keys: list[str] = []
    for doc_id in doc_ids:
        if level != "doc":
            keys.extend(sentence_keys.get(doc_id, ()))
        if level != "sentence":
            keys.append(document_key(doc_id))
    return keys


def offsets_of(keys: Sequence[str], doc_ids: Sequence[str]) -> np.ndarray:
    """``offsets`` (D + 1, int64) of grouped row keys; raises if a document's units are not contiguous."""
    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    owners = np.fromiter((position[RecordKey.decode(key).doc_id] for key in keys), dtype=np.int64, count=len(keys))
    if len(owners) and (np.diff(owners) < 0).any():
        raise ValueError("index rows are not grouped by document in ids order")
    return np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=len(doc_ids)))]).astype(np.int64)


def write_index_files(index_dir: Path, doc_ids: Sequence[str], level: str, manifest: Mapping[str, Any]) -> None:
    """Write ``ids.json``, ``offsets.npy`` (multi-vector levels) and, last, ``manifest.json`` next to the
    merged ``vectors.safetensors``; the manifest records what the files hold and their checksums."""
    index_dir = Path(index_dir)
    keys, vectors = load_vectors(index_dir / VECTORS, mmap=True)
    write_text_atomic(index_dir / IDS, json.dumps(list(doc_ids), ensure_ascii=False))
    files = [VECTORS, IDS]
    if level != "doc":
        with atomic_path(index_dir / OFFSETS) as tmp, open(tmp, "wb") as handle:
            np.save(handle, offsets_of(keys, doc_ids))
        files.append(OFFSETS)
    else:
        (index_dir / OFFSETS).unlink(missing_ok=True)
        if [RecordKey.decode(key).doc_id for key in keys] != list(doc_ids):
            raise ValueError(f"{index_dir / VECTORS} does not hold one row per document in ids order")
    if (index_dir / FAISS).is_file() and manifest.get("faiss"):
        files.append(FAISS)
    write_json_atomic(index_dir / MANIFEST, {
        **manifest, "format": FORMAT, "level": level, "documents": len(doc_ids), "units": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]), "files": {name: {"bytes": (index_dir / name).stat().st_size,
                                                       "sha256": file_sha256(index_dir / name)} for name in files}})


@dataclass
class Index:
    """A loaded index: ``vectors`` (U, d; a read-only map), ``doc_ids``, ``unit_to_doc`` (None at doc level)."""

    path: Path
    manifest: dict[str, Any]
    doc_ids: list[str]
    vectors: np.ndarray
    unit_to_doc: np.ndarray | None

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str:
        """The encoder's folder or hub name; a relative folder is relative to the index (inside its run)."""
        name = str(self.manifest["encoder"])
        local = self.path / name
        return str(local.resolve()) if not Path(name).is_absolute() and local.exists() else name

    @property
    def system(self) -> str:
        """The results row this index is (``rb-<method>-<level>-<stage>``): the TREC run tag."""
        return str(self.manifest.get("system", "index"))


def _error(index_dir: Path, name: str, message: str, field: str | None = None) -> InputError:
    return InputError(message, path=Path(index_dir) / name, field=field, hint=HINT)


def load_index(index_dir: str | Path, verify_checksums: bool = True) -> Index:
    """Read an index folder, refusing (``InputError`` naming the file) a missing, truncated or altered file,
    or a manifest that does not describe its files."""
    index_dir = Path(index_dir)
    if not (index_dir / MANIFEST).is_file():
        raise InputError("no manifest.json: not an index folder, or its build did not finish", path=index_dir,
                         hint="give <run_dir>/index of a run whose index stage finished")
    try:
        manifest = json.loads((index_dir / MANIFEST).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _error(index_dir, MANIFEST, f"not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise _error(index_dir, MANIFEST, f"format {manifest.get('format')!r}, expected {FORMAT!r}", "format")
    files = manifest.get("files") or {}
    for name in [VECTORS, IDS] + ([OFFSETS] if manifest.get("level") != "doc" else []):
        if name not in files:
            raise _error(index_dir, MANIFEST, f"lists no {name}", "files")
    for name, expected in files.items():
        path = index_dir / name
        if not path.is_file():
            raise _error(index_dir, name, "file not found (the manifest lists it)")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            what = "truncated" if size < expected.get("bytes", 0) else "larger than recorded"
            raise _error(index_dir, name, f"{size} bytes, the manifest records {expected.get('bytes')}: {what}")
        if verify_checksums and file_sha256(path) != expected.get("sha256"):
            raise _error(index_dir, name, "SHA-256 differs from the manifest's: the file was changed after the build")
    keys, vectors = load_vectors(index_dir / VECTORS, mmap=True)
    doc_ids = json.loads((index_dir / IDS).read_text(encoding="utf-8"))
    if vectors.shape != (manifest.get("units"), manifest.get("dim")):
        raise _error(index_dir, VECTORS, f"holds {vectors.shape[0]} x {vectors.shape[1]} vectors, the manifest says "
                                         f"{manifest.get('units')} x {manifest.get('dim')}", "units")
    if len(doc_ids) != manifest.get("documents"):
        raise _error(index_dir, IDS, f"{len(doc_ids)} ids, the manifest says {manifest.get('documents')}", "documents")
    unit_to_doc = None
    if manifest["level"] != "doc":
        offsets = np.load(index_dir / OFFSETS)
        if offsets.shape != (len(doc_ids) + 1,) or offsets[0] != 0 or offsets[-1] != len(keys) \
                or (np.diff(offsets) < 0).any():
            raise _error(index_dir, OFFSETS, f"offsets of shape {offsets.shape} do not describe {len(doc_ids)} "
                                             f"documents over {len(keys)} units", "offsets")
        unit_to_doc = np.repeat(np.arange(len(doc_ids), dtype=np.int64), np.diff(offsets))
    return Index(index_dir, manifest, doc_ids, vectors, unit_to_doc)


def search_index(index: Index, query_ids: Sequence[str], query_vectors: torch.Tensor | np.ndarray,
                 config: SearchConfig = SearchConfig(), use_faiss: bool = False) -> dict[str, dict[str, float]]:
    """The run (query id -> {doc id: score}) of ``query_vectors`` against the index's vectors, exact by default;
    ``use_faiss`` searches ``index.faiss`` instead."""
    if query_vectors.shape[1] != index.dim:
        raise ValueError(f"queries have dimension {query_vectors.shape[1]} but the index {index.path} has "
                         f"{index.dim}: encode them with the index's encoder ({index.manifest.get('encoder')})")
    if use_faiss:
        return _faiss_run(index, query_ids, query_vectors, config)
    return search(query_ids, query_vectors, index.doc_ids, index.vectors, config, unit_to_doc=index.unit_to_doc)


def build_faiss(index_dir: Path, kind: FaissKind, nlist: int | None = None, hnsw_m: int = 32, seed: int = 0) -> None:
    """Write ``index.faiss``: FAISS inner-product index (``flat`` exact, ``ivf``/``hnsw`` approximate) over the rows."""
    import faiss  # the optional backend: only this function and FAISS search need it

    _, vectors = load_vectors(Path(index_dir) / VECTORS, mmap=True)
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = rows.shape[1]
    if kind == "flat":
        built = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = nlist or default_nlist(len(rows))
        built = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = rows if len(rows) <= 256 * nlist else rows[np.sort(
            np.random.default_rng(seed).choice(len(rows), 256 * nlist, replace=False))]
        built.train(sample)
    elif kind == "hnsw":
        built = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index.faiss must be flat, ivf or hnsw, got {kind!r}")
    built.add(rows)
    with atomic_path(Path(index_dir) / FAISS) as tmp:
        faiss.write_index(built, str(tmp))


def _faiss_run(index: Index, query_ids: Sequence[str], query_vectors: torch.Tensor | np.ndarray,
               config: SearchConfig) -> dict[str, dict[str, float]]:
    """Top units from FAISS, each document scored by its best unit; enough units are asked for that k documents
    appear (k times the most units a document has), so a flat index gives the exact multi-vector ranking."""
    import faiss

    if FAISS not in index.manifest.get("files", {}):
        raise InputError("this index has no index.faiss", path=index.path, hint="set index.faiss: flat|ivf|hnsw and rebuild")
    built = faiss.read_index(str(index.path / FAISS))
    if hasattr(built, "nprobe"):
        built.nprobe = min(config.nprobe, built.nlist)
    per_doc = 1 if index.unit_to_doc is None else int(np.bincount(index.unit_to_doc).max(initial=1))
    units = min(len(index.vectors), config.k * per_doc + (1 if config.ignore_identical_ids else 0) * per_doc)
    queries = np.ascontiguousarray(torch.as_tensor(query_vectors).float().numpy())
    scores, rows = built.search(queries, units)
    owner = index.unit_to_doc
    run: dict[str, dict[str, float]] = {}
    for qid, row_scores, row_units in zip(query_ids, scores.tolist(), rows.tolist()):
        hits: dict[str, float] = {}
        for score, unit in zip(row_scores, row_units):
            if unit < 0 or len(hits) == config.k:
                break
            doc_id = index.doc_ids[unit if owner is None else int(owner[unit])]
            if doc_id in hits or (config.ignore_identical_ids and doc_id == qid) or not math.isfinite(score):
                continue
            hits[doc_id] = score
        run[qid] = hits
    return run
