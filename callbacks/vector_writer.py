"""Stream ``(ids, vectors)`` from the encoder's ``predict_step`` into per-rank safetensors parts.

Parts keep float32 (exact, and small: one batch each); the merged file is written in the
requested on-disk dtype through a memory map, one part in memory at a time; the map's pages are
released after each part, so the merge's resident memory does not grow with the file.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callbacks.part_writer import Locations, RankPartWriter
from retrieval.vectors import create_vector_file, load_vectors, read_vector_ids, release_pages, write_vectors


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

    def write_merged(self, path: Path, order: Sequence[str], parts: list[Path], locations: Locations) -> None:
        # (destination, row) per part in two int64 arrays (16 bytes a record, not a key -> position dict),
        # then one part in memory at a time, its rows scattered into the memory map in one assignment.
        placements: list[tuple[array, array]] = [(array("q"), array("q")) for _ in parts]
        for position, key in enumerate(order):
            part_no, row = locations[key]
            placements[part_no][0].append(position)
            placements[part_no][1].append(row)
        rows: np.ndarray | None = None
        for part, (destinations, sources) in zip(parts, placements):
            _, vectors = load_vectors(part)
            if rows is None:
                rows = create_vector_file(path, order, vectors.shape[1], self.dtype, self.metadata)
            if destinations:
                rows[np.frombuffer(destinations, dtype=np.int64)] = vectors[np.frombuffer(sources, dtype=np.int64)]
                release_pages(rows)  # else every page written stays in this process's RSS until the end
        if rows is None:  # no parts: only valid for an empty order (the base class checked the rest)
            raise RuntimeError(f"no part files under {self.parts_dir} to merge into {self.output}")
        if isinstance(rows, np.memmap):
            rows.flush()
        del rows
