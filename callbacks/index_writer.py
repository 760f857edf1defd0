"""The index loop's prediction writer: rank-part vector files merged into ``<run_dir>/index/``.

It is :class:`callbacks.vector_writer.VectorWriter` (per-rank parts, resumable, one merge on rank 0)
whose merge goes on to write the rest of the index folder (``retrieval.index_files``): the optional
FAISS index, the document ids, the offsets of multi-vector levels and, last, the manifest, so an index
with a manifest is complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from callbacks.vector_writer import VectorWriter
from retrieval.index_files import VECTORS, FaissKind, build_faiss, write_index_files


class IndexWriter(VectorWriter):
    """Writes ``vectors.safetensors`` through the rank parts, then ids, offsets, ``index.faiss`` and the manifest."""

    def __init__(self, index_dir: str | Path, order: Sequence[str], doc_ids: Sequence[str], level: str,
                 manifest: Mapping[str, Any], fingerprint: str = "default",
                 dtype: Literal["float32", "float16"] = "float32", faiss: FaissKind | None = None,
                 faiss_nlist: int | None = None, keep_parts: bool = False) -> None:
        self.index_dir = Path(index_dir)
        super().__init__(self.index_dir / VECTORS, order=order, fingerprint=fingerprint, dtype=dtype,
                         metadata={"fingerprint": fingerprint, "level": level}, keep_parts=keep_parts)
        self.doc_ids, self.level, self.manifest = doc_ids, level, dict(manifest)
        self.faiss, self.faiss_nlist = faiss, faiss_nlist

    def merge(self) -> None:
        super().merge()
        if self.faiss is not None:
            build_faiss(self.index_dir, self.faiss, nlist=self.faiss_nlist)
        write_index_files(self.index_dir, self.doc_ids, self.level,
                          {**self.manifest, "dtype": self.dtype, "faiss": self.faiss})
