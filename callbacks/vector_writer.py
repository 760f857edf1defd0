"""Stream ``(ids, vectors)`` from the encoder's ``predict_step`` into per-rank safetensors parts.

Parts keep float32 (exact, and small: one batch each); the merged file is written in the
requested on-disk dtype through a memory map, one part in memory at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callbacks.part_writer import Locations, RankPartWriter
from retrieval.vectors import create_vector_file, load_vectors, read_vector_ids, write_vectors


class VectorWriter(RankPartWriter):
    """Writes predictions ``{"ids": list[str], "vectors": Tensor (B, d)}``; final file in ``retrieval.vectors`` format."""

    part_suffix = ".safetensors"

    def __init__(self, output: str | Path, order: Sequence[str] | None = None, fingerprint: str = "default",
                 dtype: Literal["float32", "float16"] = "float32", metadata: Mapping[str, str] | None = None,
                 keep_parts: bool = False) -> None:
        """``dtype``: of the merged file; ``metadata``: stored in its header (e.g. the fingerprint)."""
        super().__init__(output, order=order, fingerprint=fingerprint, keep_parts=keep_parts)
        self.dtype = dtype
        self.metadata = dict(metadata or {})

    def write_part(self, path: Path, prediction: Any) -> None:
        write_vectors(path, list(prediction["ids"]), prediction["vectors"], dtype="float32")

    def read_part_keys(self, path: Path) -> list[str]:
        return read_vector_ids(path)

    def write_merged(self, path: Path, order: list[str], parts: list[Path], locations: Locations) -> None:
        position = {key: index for index, key in enumerate(order)}
        rows: np.ndarray | None = None
        for part_no, part in enumerate(parts):
            ids, vectors = load_vectors(part)
            if rows is None:
                rows = create_vector_file(path, order, vectors.shape[1], self.dtype, self.metadata)
            src = [row for row, key in enumerate(ids) if key in position and locations[key] == (part_no, row)]
            if src:
                rows[[position[ids[row]] for row in src]] = vectors[src]
        if rows is None:  # no parts: only valid for an empty order (the base class checked the rest)
            raise RuntimeError(f"no part files under {self.parts_dir} to merge into {self.output}")
        if isinstance(rows, np.memmap):
            rows.flush()
        del rows
