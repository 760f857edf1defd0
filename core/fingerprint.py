"""Fingerprints: short stable hashes that decide whether a stage, an output or a cache is still valid.

Why one module: every skip and every cache in the project is keyed by content (settings, texts, file
bytes), never by paths or modification times, and each key is built the same way: a SHA-256 over a
canonical JSON form. A fingerprint that changes when nothing relevant changed only costs a rerun; one
that stays the same when something changed serves stale results, so every builder lives here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.io import file_sha256

SHORT = 16
"""Hex digits kept in a fingerprint: 64 bits, ample for the outputs of one run directory."""


def plain(value: Any) -> Any:
    """The JSON-able form of configs (dataclasses, paths, tuples) for fingerprints and saved configs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stable_hash(obj: Any, length: int = SHORT) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys; unknown types as ``str``), ``length`` hex digits."""
    payload = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def chunks_hash(chunks: Iterable[bytes | memoryview]) -> str:
    """SHA-256 of a stream of byte strings, in order (full length; nothing is joined in memory)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def items_hash(items: Iterable[tuple[str, str]]) -> str:
    """SHA-256 of every ``(id, text)`` pair, in order."""
    return chunks_hash(key.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0" for key, text in items)


def file_signature(path: str | os.PathLike | None) -> Any:
    """``[size, sha256]`` of a file, ``{name: signature}`` of a folder (recursively), None for None.

    Contents, not modification times or absolute paths: a dataset copied, re-extracted or moved to
    another disk is the same input, and hours of finished stages must not rerun for it.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return {p.name: file_signature(p) for p in sorted(path.iterdir()) if p.is_file() or p.is_dir()}
    stat = path.stat()
    version = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    return [stat.st_size, _cached_sha256(str(path.resolve()), version)]


@functools.lru_cache(maxsize=None)
def _cached_sha256(path: str, version: tuple[int, ...]) -> str:
    """Hash once per process per file version (a GB corpus takes seconds; every stage's plan asks for it).

    A version is size, mtime, ctime and inode: an in-place rewrite that restores the mtime (``os.utime``,
    ``touch -r``) still changes the ctime, which no user call can set back, and a replaced file has a new inode."""
    return file_sha256(path)
