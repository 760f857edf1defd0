"""Vector files: an ``(N, d)`` matrix and its ``N`` ids in one safetensors file.

Why safetensors written by hand rather than ``safetensors.numpy.save_file``: the merge of a
large corpus's part files must not hold the whole matrix in memory, and search over 10^6
vectors wants ``mmap``. The file is a standard safetensors file (any safetensors reader opens
it) whose data region starts with the vector rows, so a writer can fill rows through a memory
map and a reader can map them without reading. Ids live in two tensors (UTF-8 bytes and
offsets), not in the JSON header, whose size safetensors caps at 100 MB.

Layout: ``vectors`` (F32/F16, N x d) · ``ids_offsets`` (I64, N + 1) · ``ids_utf8`` (U8).
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch

from core.io import InputError, atomic_path

FORMAT = "selfinstruct-vectors/1"
_DTYPES = {"float32": ("F32", np.dtype("<f4")), "float16": ("F16", np.dtype("<f2"))}
_BY_CODE = {code: (name, dtype) for name, (code, dtype) in _DTYPES.items()}
_HEADER_LIMIT = 100_000_000  # safetensors' own cap
_ALIGN = 8


def _header_bytes(n: int, dim: int, code: str, itemsize: int, ids_nbytes: int, metadata: Mapping[str, str]) -> bytes:
    vec_end = n * dim * itemsize
    off_end = vec_end + (n + 1) * 8
    header = {
        "__metadata__": {**{str(k): str(v) for k, v in metadata.items()}, "format": FORMAT},
        "vectors": {"dtype": code, "shape": [n, dim], "data_offsets": [0, vec_end]},
        "ids_offsets": {"dtype": "I64", "shape": [n + 1], "data_offsets": [vec_end, off_end]},
        "ids_utf8": {"dtype": "U8", "shape": [ids_nbytes], "data_offsets": [off_end, off_end + ids_nbytes]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % _ALIGN)  # safetensors pads with spaces; keeps the rows aligned
    return raw


def _id_offsets(ids: Sequence[str]) -> np.ndarray:
    """Byte offsets of the UTF-8 ids in their blob (``N + 1`` of them), without holding the encoded ids."""
    offsets = np.zeros(len(ids) + 1, dtype="<i8")
    np.cumsum(np.fromiter((len(key.encode("utf-8")) for key in ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
    return offsets


def _write_id_blob(handle: BinaryIO, ids: Sequence[str], chunk: int = 65536) -> None:
    """The UTF-8 ids back to back, a chunk at a time (a 10^6-id blob is never built in memory)."""
    keys = iter(ids)
    for _ in range(0, len(ids), chunk):
        handle.write(b"".join(key.encode("utf-8") for key in islice(keys, chunk)))


def check_ids(ids: Sequence[str], what: str = "ids") -> None:
    """Ids must be unique strings: a vector file is a lookup table."""
    seen: set[str] = set()
    for position, key in enumerate(ids):
        if not isinstance(key, str):
            raise TypeError(f"{what}[{position}] is {type(key).__name__}, expected str")
        if key in seen:
            raise ValueError(f"{what}: duplicate id '{key}' (position {position}); ids must be unique")
        seen.add(key)


def create_vector_file(path: str | Path, ids: Sequence[str], dim: int,
                       dtype: Literal["float32", "float16"] = "float32",
                       metadata: Mapping[str, str] | None = None) -> np.ndarray:
    """Write header and ids at ``path`` (not atomically: call inside ``atomic_path``) and return the rows.

    The returned array is a writable memory map of shape ``(len(ids), dim)``; fill it, then
    ``flush()`` and drop it. This is how a merge writes 10^6 rows with one part in memory.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got '{dtype}'")
    check_ids(ids)
    code, np_dtype = _DTYPES[dtype]
    offsets = _id_offsets(ids)
    header = _header_bytes(len(ids), dim, code, np_dtype.itemsize, int(offsets[-1]), metadata or {})
    data_start = 8 + len(header)
    vec_bytes = len(ids) * dim * np_dtype.itemsize
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)))
        handle.write(header)
        handle.seek(data_start + vec_bytes)
        handle.write(offsets.tobytes())
        _write_id_blob(handle, ids)
    if vec_bytes == 0:
        return np.zeros((len(ids), dim), dtype=np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r+", offset=data_start, shape=(len(ids), dim))


def release_pages(rows: np.ndarray) -> None:
    """Drop the pages of a writable map from :func:`create_vector_file` out of this process's resident memory.

    Why: rows scattered into a memory map stay mapped, and counted in the process's RSS, until the
    map is closed, so a merge of a 10^6-row file would look as if it held the whole file. The map is
    shared, so ``MADV_DONTNEED`` only unmaps: the written rows stay in the page cache, from where the
    kernel writes them to the file, and a later access maps them back. Where the platform lacks
    ``MADV_DONTNEED`` the pages simply stay mapped until the map is dropped.
    """
    if isinstance(rows, np.memmap) and isinstance(rows.base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        rows.base.madvise(mmap.MADV_DONTNEED)


def _as_numpy(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        return vectors.detach().to("cpu", torch.float32).numpy()
    return np.asarray(vectors)


def write_vectors(path: str | Path, ids: Sequence[str], vectors: torch.Tensor | np.ndarray,
                  dtype: Literal["float32", "float16"] = "float32", metadata: Mapping[str, str] | None = None) -> None:
    """Write a complete vector file at ``path`` as is (the caller provides atomicity)."""
    array = _as_numpy(vectors)
    if array.ndim != 2 or array.shape[0] != len(ids):
        raise ValueError(f"vectors must have shape (len(ids)={len(ids)}, d), got {tuple(array.shape)}")
    if array.size and not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"vector of id '{ids[bad]}' holds NaN or inf; refusing to write it")
    rows = create_vector_file(path, ids, array.shape[1], dtype, metadata)
    rows[:] = array
    if isinstance(rows, np.memmap):
        rows.flush()
    del rows


def save_vectors(path: str | Path, ids: Sequence[str], vectors: torch.Tensor | np.ndarray,
                 dtype: Literal["float32", "float16"] = "float32", metadata: Mapping[str, str] | None = None) -> None:
    """Save ids and vectors atomically: readers see the old file or the complete new one."""
    with atomic_path(path) as tmp:
        write_vectors(tmp, ids, vectors, dtype, metadata)


class _Layout:
    """A parsed and validated header: where each tensor lies in the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            raise InputError("vector file not found", path=path, hint="check the path, or run the embed stage first")
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise self._error(f"file is {size} bytes, too short to hold a header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(_HEADER_LIMIT, size - 8):
                raise self._error(f"header length {header_len} exceeds the file ({size} bytes)")
            raw = handle.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._error(f"header is not valid JSON ({err})") from None
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        if self.metadata.get("format") != FORMAT:
            raise self._error(f"not a vector file of this project (format '{self.metadata.get('format')}', "
                              f"expected '{FORMAT}')", field="format")
        try:
            vec, off, blob = header["vectors"], header["ids_offsets"], header["ids_utf8"]
            self.dtype_name, self.dtype = _BY_CODE[vec["dtype"]]
            self.n, self.dim = (int(x) for x in vec["shape"])
            self.data_start = 8 + header_len
            self.vec_range = tuple(vec["data_offsets"])
            self.off_range = tuple(off["data_offsets"])
            self.blob_range = tuple(blob["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise self._error(f"header lacks or garbles an entry ({err!r})", field="header") from None
        expected_vec = self.n * self.dim * self.dtype.itemsize
        if self.vec_range != (0, expected_vec) or self.off_range != (expected_vec, expected_vec + (self.n + 1) * 8) \
                or self.blob_range[0] != self.off_range[1]:
            raise self._error("tensor offsets in the header are inconsistent", field="header")
        expected_size = self.data_start + self.blob_range[1]
        if size != expected_size:
            raise self._error(f"file is {size} bytes but its header describes {expected_size}: "
                              f"{'truncated' if size < expected_size else 'trailing bytes'}")

    def _error(self, message: str, field: str | None = None) -> InputError:
        return InputError(message, path=self.path, field=field,
                          hint="the file is damaged or was cut short; delete it and rerun the embed stage")

    def read_ids(self) -> list[str]:
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + self.off_range[0])
            offsets = np.frombuffer(handle.read((self.n + 1) * 8), dtype="<i8")
            blob = handle.read(self.blob_range[1] - self.blob_range[0])
        if offsets[0] != 0 or offsets[-1] != len(blob) or (np.diff(offsets) < 0).any():
            raise self._error("id offsets are corrupt", field="ids_offsets")
        try:
            return [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(self.n)]
        except UnicodeDecodeError:
            raise self._error("ids are not valid UTF-8", field="ids_utf8") from None

    def read_vectors(self, mmap: bool) -> np.ndarray:
        if self.n * self.dim == 0:
            return np.zeros((self.n, self.dim), dtype=self.dtype)
        if mmap:
            return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.data_start, shape=(self.n, self.dim))
        return np.fromfile(self.path, dtype=self.dtype, count=self.n * self.dim,
                           offset=self.data_start).reshape(self.n, self.dim)


def load_vectors(path: str | Path, mmap: bool = False) -> tuple[list[str], np.ndarray]:
    """Return ``(ids, vectors)``; vectors keep their on-disk dtype (float32 or float16).

    ``mmap=True`` maps the rows read-only without reading them (for corpora larger than
    memory). A truncated or corrupt file raises :class:`InputError` naming the file.
    """
    layout = _Layout(Path(path))
    return layout.read_ids(), layout.read_vectors(mmap)


def read_vector_ids(path: str | Path) -> list[str]:
    """The ids of a vector file, without reading its rows (resume scans many part files)."""
    return _Layout(Path(path)).read_ids()


def read_vector_metadata(path: str | Path) -> dict[str, str]:
    """The header's metadata (``format``, and whatever the writer stored, e.g. a fingerprint)."""
    return dict(_Layout(Path(path)).metadata)
