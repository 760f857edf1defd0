"""Top-k retrieval over L2-normalised vectors: exact (torch), FAISS, and multi-vector max scoring.

Why our own exact search: BEIR's reference normalises every chunk again, keeps a Python heap per
query and lets ``torch.topk`` pick arbitrarily among tied scores. Here the score matrix is computed
in cache-sized blocks into one reused buffer, the running top-k is merged on tensors, and ties are
broken the same way on every device and for every chunk size (score descending, then lower index),
so a run is reproducible. Documents may stay on disk as a float16 ``numpy.memmap``: only one chunk
at a time is converted to float32, which bounds memory whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

Vectors = torch.Tensor | np.ndarray

#: ``|norm - 1|`` allowed before a vector counts as unnormalised; float16 storage alone moves norms by ~5e-4.
NORM_TOLERANCE = 1e-2
#: How many float32 scores one block may hold on a CPU (32 MiB, fits the last-level cache's neighbourhood)
#: and on a GPU (1 GiB). Blocks are reused, so this, not the corpus size, bounds the score memory.
_BLOCK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 28}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _rows(vectors: Vectors, start: int, end: int, device: torch.device) -> torch.Tensor:
    """Rows ``start:end`` as float32 on ``device``; a float16 memmap is read and converted only here."""
    block = vectors[start:end]
    if isinstance(block, np.ndarray):  # a read-only float32 map is copied (torch wants writable memory)
        block = torch.from_numpy(np.array(block, dtype=np.float32) if not block.flags.writeable
                                 else np.ascontiguousarray(block, dtype=np.float32))
    return block.to(device=device, dtype=torch.float32, non_blocking=True)


def _take_rows(vectors: Vectors, row_ids: np.ndarray, device: torch.device) -> torch.Tensor:
    """The rows ``row_ids`` (sorted) as float32 on ``device``."""
    if isinstance(vectors, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(vectors[row_ids], dtype=np.float32)).to(device)
    return vectors[torch.from_numpy(row_ids).to(vectors.device)].to(device=device, dtype=torch.float32)


def _check_shape(vectors: Vectors, name: str) -> None:
    if vectors.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix (rows = vectors), got shape {tuple(vectors.shape)}")


def check_unit_norm(block: torch.Tensor, name: str, offset: int = 0, row_ids: np.ndarray | None = None) -> None:
    """Raise unless every row has L2 norm 1: inner product is cosine only then (FAISS and ours alike).

    The error names the row: ``offset + i``, or ``row_ids[i]`` when the block was gathered.
    """
    norms = torch.linalg.vector_norm(block, dim=1)
    bad = ~((norms - 1).abs() <= NORM_TOLERANCE)  # written so that NaN counts as bad
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        where = int(row_ids[row]) if row_ids is not None else offset + row
        raise ValueError(
            f"{name} row {where} has L2 norm {float(norms[row]):.4g}; search scores by inner product, "
            f"which is cosine similarity only for L2-normalised vectors: apply "
            f"torch.nn.functional.normalize(x, dim=-1) (the encoder module does) before searching")


def _prepare_queries(queries: Vectors, dim: int, device: torch.device) -> torch.Tensor:
    _check_shape(queries, "queries")
    if queries.shape[1] != dim:
        raise ValueError(f"queries have dimension {queries.shape[1]} but documents have {dim}")
    q = _rows(queries, 0, len(queries), device)
    check_unit_norm(q, "queries")
    return q


def _top_k_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k columns per row, ties at the k-th score resolved to the lowest column index.

    ``torch.topk`` picks arbitrarily among equal scores. Asking for k+1 shows which rows have a tie
    across the cut (k-th score == (k+1)-th); only those rows are redone exactly, so the common case
    costs one ``topk``. Returned columns are in no particular order.
    """
    n_cols = scores.shape[1]
    if k >= n_cols:
        cols = torch.arange(n_cols, device=scores.device).expand(scores.shape[0], n_cols)
        return scores, cols
    values, cols = torch.topk(scores, k + 1, dim=1, sorted=True)
    values, cols, cut = values[:, :k], cols[:, :k], values[:, k]
    tied = (values[:, k - 1] == cut).nonzero().squeeze(1)
    if len(tied):
        sub, threshold = scores[tied], cut[tied].unsqueeze(1)
        above = sub > threshold
        equal = sub == threshold
        room = k - above.sum(dim=1, keepdim=True)
        keep = above | (equal & (equal.cumsum(dim=1) <= room))
        kept_cols = keep.nonzero()[:, 1].view(len(tied), k)
        values, cols = values.clone(), cols.clone()
        values[tied] = sub.gather(1, kept_cols)
        cols[tied] = kept_cols
    return values, cols


def _above(scores: torch.Tensor, threshold: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores > threshold).nonzero()`` as (rows, cols) in row-major order, cheaper when hits are rare:
    only groups of ``group`` columns whose max passes are looked at element by element."""
    n_rows, n_cols = scores.shape
    if n_cols % group or not scores.is_contiguous():
        return (scores > threshold).nonzero(as_tuple=True)
    n_groups = n_cols // group
    group_rows, group_ids = (scores.view(n_rows, n_groups, group).amax(dim=2) > threshold).nonzero(as_tuple=True)
    passing = scores.view(-1, group).index_select(0, group_rows * n_groups + group_ids)
    hits, offsets = (passing > threshold[group_rows]).nonzero(as_tuple=True)
    return group_rows[hits], group_ids[hits] * group + offsets


class _RunningTopK:
    """The best k (score, index) pairs per query seen so far, ordered by score desc then index asc.

    Blocks of scores must arrive in increasing document-index order. Two consequences keep this cheap
    and exact: a new document can only enter a full list by beating its k-th score *strictly* (on a
    tie the kept one has the lower index), and listing (kept, new in index order) puts every group of
    equal scores in index order, so a stable sort on the score alone gives the total order.
    Once the lists are full, most blocks hold few documents above the k-th score, and selecting
    those with one comparison is several times cheaper than ``torch.topk`` over the block.
    Empty slots hold -inf, which every real score (a finite cosine) beats.
    """

    def __init__(self, n_queries: int, k: int, device: torch.device) -> None:
        self.k = k
        self.scores = torch.full((n_queries, k), float("-inf"), device=device)
        self.indices = torch.full((n_queries, k), -1, dtype=torch.long, device=device)

    def add(self, rows: slice, scores: torch.Tensor, col_index: int | torch.Tensor) -> None:
        """Offer a block: ``scores[i, j]`` is query ``rows[i]`` against document ``col_index + j``
        (an int offset) or ``col_index[j]`` (an increasing tensor of document indices)."""
        threshold = self.scores[rows, -1:]
        candidates = None
        if not bool(torch.isneginf(threshold).any()):
            hit_rows, hit_cols = _above(scores, threshold)
            if len(hit_rows) == 0:
                return
            counts = torch.bincount(hit_rows, minlength=scores.shape[0])
            # a row with many hits makes the padded sort below dearer than one topk over the block
            if int(counts.max()) <= max(self.k, scores.shape[1] // 8):
                candidates = self._pad(hit_rows, hit_cols, counts, scores)
        if candidates is None:
            values, cols = _top_k_lowest_index(scores, self.k)
            by_col = cols.argsort(dim=1)
            candidates = values.gather(1, by_col), cols.gather(1, by_col)
        values, cols = candidates
        indices = cols + col_index if isinstance(col_index, int) else col_index[cols.clamp(min=0)]
        all_scores = torch.cat([self.scores[rows], values], dim=1)
        all_indices = torch.cat([self.indices[rows], indices], dim=1)
        best = all_scores.sort(dim=1, descending=True, stable=True).indices[:, : self.k]
        self.scores[rows] = all_scores.gather(1, best)
        self.indices[rows] = all_indices.gather(1, best)

    @staticmethod
    def _pad(hit_rows: torch.Tensor, hit_cols: torch.Tensor, counts: torch.Tensor,
             scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scattered (row, col) hits as (rows x most hits) matrices, columns increasing, -inf padded."""
        width = int(counts.max())
        slot = torch.arange(len(hit_rows), device=scores.device) - (counts.cumsum(0) - counts)[hit_rows]
        values = torch.full((scores.shape[0], width), float("-inf"), device=scores.device)
        cols = torch.full((scores.shape[0], width), -1, dtype=torch.long, device=scores.device)
        values[hit_rows, slot] = scores[hit_rows, hit_cols]
        cols[hit_rows, slot] = hit_cols
        return values, cols

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores.cpu(), self.indices.cpu()


def _block_budget(device: torch.device) -> int:
    return _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS["cpu"])


def _row_blocks(n_queries: int, n_cols: int, device: torch.device) -> list[slice]:
    """Query slices small enough that a (queries x n_cols) score block stays within the budget."""
    rows = max(1, _block_budget(device) // max(n_cols, 1))
    return [slice(s, min(s + rows, n_queries)) for s in range(0, n_queries, rows)]


def _check_k(k: int, chunk_size: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def exact_search(queries: Vectors, docs: Vectors, k: int, chunk_size: int = 65536,
                 device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k of every query over all documents.

    Both matrices must hold L2-normalised rows (checked chunk by chunk). ``docs`` may be a float16
    ``numpy.memmap``: ``chunk_size`` rows at a time are converted to float32 on ``device``.
    Returns ``(scores, indices)`` on the CPU, shape ``(Q, min(k, n_docs))``: scores float32 descending,
    ties ordered by lower document index; when ``k > n_docs`` every document is returned, ranked.
    """
    _check_k(k, chunk_size)
    _check_shape(docs, "docs")
    device = resolve_device(device)
    q = _prepare_queries(queries, docs.shape[1], device)
    n_docs = docs.shape[0]
    top = _RunningTopK(len(q), min(k, n_docs), device)
    # Score blocks of (all queries x `width` documents) reuse one buffer: a block that fits the cache
    # is faster than one (queries x chunk) matrix, and memory no longer grows with the chunk.
    width = int(min(chunk_size, n_docs, max(1024, _block_budget(device) // max(len(q), 1)) // 32 * 32))
    row_blocks = _row_blocks(len(q), width, device)
    buffer = torch.empty(row_blocks[0].stop if row_blocks else 0, width, device=device)
    starts = range(0, n_docs, chunk_size)
    for start in tqdm(starts, desc="exact search", unit="chunk", disable=len(starts) <= 1):
        chunk = _rows(docs, start, min(start + chunk_size, n_docs), device)
        check_unit_norm(chunk, "docs", offset=start)
        for col in range(0, len(chunk), width):
            block = chunk[col: col + width]
            for rows in row_blocks:
                scores = torch.mm(q[rows], block.T, out=buffer[: rows.stop - rows.start, : len(block)])
                top.add(rows, scores, start + col)
    return top.result()


def _unit_chunks(doc_of_unit: np.ndarray, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges over units sorted by document, about ``chunk_size`` long, never splitting a document."""
    n_units, start = len(doc_of_unit), 0
    while start < n_units:
        end = min(start + chunk_size, n_units)
        if end < n_units:  # move the cut to the end of the document that straddles it
            end = int(np.searchsorted(doc_of_unit, doc_of_unit[end - 1], side="right"))
        yield start, end
        start = end


def multivector_search(queries: Vectors, unit_vectors: Vectors, unit_to_doc: torch.Tensor | np.ndarray,
                       n_docs: int, k: int, chunk_size: int = 65536,
                       device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k documents where a document's score is the max cosine over its unit (e.g. sentence) vectors.

    ``unit_to_doc[u]`` is the document index (``0 <= . < n_docs``) of unit ``u``; units need not be
    grouped. Documents without any unit have no score and are never returned, so the result has
    ``min(k, documents with units)`` columns. Ties are ordered by lower document index, as in
    :func:`exact_search`. Units are read ``chunk_size`` at a time (a document is never split).
    """
    _check_k(k, chunk_size)
    _check_shape(unit_vectors, "unit_vectors")
    doc_of_unit = (unit_to_doc.cpu().numpy() if isinstance(unit_to_doc, torch.Tensor)
                   else np.asarray(unit_to_doc)).astype(np.int64, copy=False)
    if doc_of_unit.shape != (unit_vectors.shape[0],):
        raise ValueError(f"unit_to_doc must have one entry per unit vector ({unit_vectors.shape[0]}), "
                         f"got shape {doc_of_unit.shape}")
    if len(doc_of_unit) and (doc_of_unit.min() < 0 or doc_of_unit.max() >= n_docs):
        raise ValueError(f"unit_to_doc holds document indices outside [0, {n_docs}): "
                         f"min {doc_of_unit.min()}, max {doc_of_unit.max()}")
    device = resolve_device(device)
    q = _prepare_queries(queries, unit_vectors.shape[1], device)
    grouped = bool(np.all(doc_of_unit[1:] >= doc_of_unit[:-1]))
    order = np.arange(len(doc_of_unit)) if grouped else np.argsort(doc_of_unit, kind="stable")
    sorted_docs = doc_of_unit[order]
    top = _RunningTopK(len(q), min(k, len(np.unique(sorted_docs))), device)
    chunks = list(_unit_chunks(sorted_docs, chunk_size))
    for start, end in tqdm(chunks, desc="multi-vector search", unit="chunk", disable=len(chunks) <= 1):
        if grouped:
            units, unit_ids = _rows(unit_vectors, start, end, device), None
        else:  # read the chunk's rows in storage order (memmap-friendly); the max does not care
            unit_ids = np.sort(order[start:end])
            units = _take_rows(unit_vectors, unit_ids, device)
        check_unit_norm(units, "unit_vectors", offset=start, row_ids=unit_ids)
        docs_here = sorted_docs[start:end] if grouped else doc_of_unit[unit_ids]
        chunk_docs, local = np.unique(docs_here, return_inverse=True)
        chunk_docs, local = torch.from_numpy(chunk_docs).to(device), torch.from_numpy(local.reshape(-1)).to(device)
        for rows in _row_blocks(len(q), len(units), device):
            unit_scores = q[rows] @ units.T
            doc_scores = torch.full((unit_scores.shape[0], len(chunk_docs)), float("-inf"), device=device)
            doc_scores.scatter_reduce_(1, local.expand_as(unit_scores), unit_scores, reduce="amax", include_self=False)
            top.add(rows, doc_scores, chunk_docs)
    return top.result()


def default_nlist(n_docs: int) -> int:
    """About 4 * sqrt(n) lists, but at least 39 training points per list (FAISS warns below that)."""
    return int(max(1, min(4 * np.sqrt(n_docs), n_docs // 39)))


def faiss_search(queries: Vectors, docs: Vectors, k: int, index: Literal["flat", "ivf"] = "flat",
                 nlist: int | None = None, nprobe: int = 16,
                 chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by FAISS inner product: ``IndexFlatIP`` (exact) or ``IndexIVFFlat`` (approximate, for large corpora).

    Inner product is cosine only for L2-normalised vectors, so rows are checked (and converted to
    float32 chunk by chunk, e.g. from a float16 memmap) as they are added. IVF probes
    ``min(nprobe, nlist)`` lists; ``nprobe=1`` loses recall, ``nprobe=nlist`` equals the flat index.
    When IVF finds fewer than k documents the row is padded with index -1 and score -inf.
    Returns ``(scores, indices)`` like :func:`exact_search`, ties ordered by lower index.
    """
    import faiss  # imported here: only this backend needs it

    _check_k(k, chunk_size)
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    _check_shape(docs, "docs")
    n_docs, dim = docs.shape
    cpu = torch.device("cpu")
    q = _prepare_queries(queries, dim, cpu).numpy()
    if index == "flat":
        faiss_index = faiss.IndexFlatIP(dim)
    elif index == "ivf":
        nlist = default_nlist(n_docs) if nlist is None else nlist
        if not 1 <= nlist <= n_docs:
            raise ValueError(f"nlist must be between 1 and the number of documents ({n_docs}), got {nlist}")
        faiss_index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        faiss_index.train(_ivf_training_sample(docs, nlist))
        faiss_index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"index must be 'flat' or 'ivf', got {index!r}")
    starts = range(0, n_docs, chunk_size)
    for start in tqdm(starts, desc=f"faiss add ({index})", unit="chunk", disable=len(starts) <= 1):
        chunk = _rows(docs, start, min(start + chunk_size, n_docs), cpu)
        check_unit_norm(chunk, "docs", offset=start)
        faiss_index.add(chunk.numpy())
    scores, indices = faiss_index.search(q, min(k, n_docs))
    scores[indices < 0] = -np.inf
    order = np.lexsort((indices, -scores), axis=-1)  # score desc, then index asc, as exact_search
    return (torch.from_numpy(np.take_along_axis(scores, order, axis=1)),
            torch.from_numpy(np.take_along_axis(indices, order, axis=1)).long())


def _ivf_training_sample(docs: Vectors, nlist: int, seed: int = 0) -> np.ndarray:
    """Up to 256 points per list (what FAISS's k-means uses), drawn with a fixed seed; float32."""
    n_docs = docs.shape[0]
    size = min(n_docs, 256 * nlist)
    rows = np.arange(n_docs) if size == n_docs else np.sort(np.random.default_rng(seed).choice(n_docs, size, replace=False))
    sample = _take_rows(docs, rows, torch.device("cpu"))
    check_unit_norm(sample, "docs", row_ids=rows)
    return sample.numpy()


@dataclass
class SearchConfig:
    """How :func:`search` retrieves; the defaults reproduce BEIR's exact cosine search.

    Attributes:
        backend: "exact" (torch, chunked, exact; CPU or GPU), "faiss-flat" (FAISS IndexFlatIP, exact) or
            "faiss-ivf" (FAISS IndexIVFFlat, approximate, for large corpora).
        k: documents kept per query (BEIR evaluates at most 1000).
        chunk_size: documents (or unit vectors) read and converted to float32 at a time; bounds memory.
        nlist: IVF lists; null picks about 4 * sqrt(number of documents).
        nprobe: IVF lists searched per query; more is slower and closer to exact (nprobe = nlist is exact).
        ignore_identical_ids: drop a document whose id equals the query id (BEIR's rule, e.g. ArguAna, Quora).
        device: where the exact backend computes scores ("cpu", "cuda", "cuda:1"); null: the GPU when there is one.
    """

    backend: Literal["exact", "faiss-flat", "faiss-ivf"] = "exact"
    k: int = 1000
    chunk_size: int = 65536
    nlist: int | None = None
    nprobe: int = 16
    ignore_identical_ids: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("exact", "faiss-flat", "faiss-ivf"):
            raise ValueError(f"search.backend must be 'exact', 'faiss-flat' or 'faiss-ivf', got {self.backend!r}")
        for name in ("k", "chunk_size", "nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"search.nlist must be >= 1 or null, got {self.nlist}")


def search(query_ids: Sequence[str], query_vectors: Vectors, doc_ids: Sequence[str], doc_vectors: Vectors,
           config: SearchConfig = SearchConfig(),
           unit_to_doc: torch.Tensor | np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Retrieve and return the run: query id -> {doc id: score}, at most ``config.k`` documents each.

    With ``unit_to_doc``, ``doc_vectors`` are unit (sentence) vectors, ``unit_to_doc[u]`` indexes
    ``doc_ids``, and a document scores the max over its units (exact backend only).
    BEIR's rule (``ignore_identical_ids``): a document whose id equals the query id is dropped; k+1
    are retrieved so that k remain.
    """
    _check_ids(query_ids, len(query_vectors), "query")
    n_docs = len(doc_ids) if unit_to_doc is not None else len(doc_vectors)
    _check_ids(doc_ids, n_docs, "document")
    drop_self = config.ignore_identical_ids and not set(query_ids).isdisjoint(doc_ids)
    k = config.k + 1 if drop_self else config.k
    if unit_to_doc is not None:
        if config.backend != "exact":
            raise ValueError(f"multi-vector scoring needs backend='exact', got {config.backend!r}: a FAISS index "
                             f"returns units, not the max over each document's units")
        scores, indices = multivector_search(query_vectors, doc_vectors, unit_to_doc, len(doc_ids), k,
                                             config.chunk_size, config.device)
    elif config.backend == "exact":
        scores, indices = exact_search(query_vectors, doc_vectors, k, config.chunk_size, config.device)
    elif config.backend in ("faiss-flat", "faiss-ivf"):
        scores, indices = faiss_search(query_vectors, doc_vectors, k, config.backend.removeprefix("faiss-"),
                                       config.nlist, config.nprobe, config.chunk_size)
    else:
        raise ValueError(f"search.backend must be 'exact', 'faiss-flat' or 'faiss-ivf', got {config.backend!r}")
    run: dict[str, dict[str, float]] = {}
    for qid, row_scores, row_indices in zip(query_ids, scores.tolist(), indices.tolist()):
        hits: dict[str, float] = {}
        for score, index in zip(row_scores, row_indices):
            if index < 0 or len(hits) == config.k:  # -1: IVF found fewer documents
                break
            if drop_self and doc_ids[index] == qid:
                continue
            hits[doc_ids[index]] = score
        run[qid] = hits
    return run


def _check_ids(ids: Sequence[str], n_vectors: int, kind: str) -> None:
    if len(ids) != n_vectors:
        raise ValueError(f"{len(ids)} {kind} ids but {n_vectors} {kind} vectors: they must be parallel")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"duplicate {kind} id {duplicate!r}: ids must be unique")
