"""File helpers every stage shares: atomic writes and JSON-lines reading with precise errors.

Why one module: each stage hands the next a file in the run directory. A crash or a bad
input must never leave a half-written file that a later stage (or a resumed run) would
trust, and a bad line must be reported with its file, line and field so the user can fix it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO


class InputError(ValueError):
    """Bad user input, reported with where it is (file, line, field) and what to do."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 line: int | None = None, field: str | None = None, hint: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        text = f"{', '.join(where)}: {message}" if where else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.message, self.path, self.line, self.field, self.hint = message, path, line, field, hint


class OutputError(OSError):
    """A file could not be written (disk full, read-only, no permission): which file, why, and what to do.

    An ``OSError`` still (callers that catch those keep working), with a message a user can act on.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class ModelNotAvailableError(OSError):
    """A model name that is neither a local folder nor fetchable from the hub right now."""


# Errors that only a write can raise: from inside a writing block they are reported as write failures.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (a multi-GB corpus never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_error(path: str | os.PathLike, err: OSError) -> OutputError:
    """An :class:`OutputError` for a failed write of ``path``, with a hint that fits the cause."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free space on that device (or raise the quota), or point run_dir at another one, then rerun"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "make the folder writable, or point run_dir at a writable one, then rerun"
    else:
        hint = "check the folder, then rerun"
    reason = err.strerror or str(err)
    return OutputError(err.errno, f"cannot write {path}: {reason} ({hint}; earlier files were left as they were)")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    os.close(fd)
    tmp_path = Path(tmp)
    in_caller = False
    try:
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; a shared run directory wants the usual mode
        in_caller = True
        yield tmp_path
        in_caller = False
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        # Our own steps only write; the caller's block may also read, so only write errnos count there.
        failed_write = not in_caller or err.errno in WRITE_ERRNOS if isinstance(err, OSError) else False
        if failed_write and not isinstance(err, OutputError):
            raise write_error(path, err) from err
        raise


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[TextIO | BinaryIO]:
    """``open`` for writing that leaves either the old file or the complete new one, never a part."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    """The bytes :func:`write_jsonl_atomic` writes for ``records`` (to compare before rewriting a file)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line; return how many were written."""
    count = 0
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def decode_utf8_line(raw: bytes, path: str | os.PathLike, line: int) -> str:
    """Decode one line of a text file, naming file and line when the bytes are not UTF-8.

    A UTF-8 byte-order mark on line 1 (Windows editors write one) is dropped, as ``utf-8-sig`` does: it is not
    part of the first field, and left in it turns a valid first line into a bogus error.
    """
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8 ({err.reason} at byte {err.start})", path=path, line=line,
                         hint="re-encode the file as UTF-8") from None


def require_file(path: str | os.PathLike, hint: str) -> Path:
    """``path`` if it is a file; else an :class:`InputError` that says what is there instead.

    A folder in its place, or only a compressed copy beside it, each get their own message: "file not found"
    would send the user looking for a file that is there in another form.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise InputError("is a directory, not a file", path=path, hint=hint)
    packed = path.with_name(path.name + ".gz")
    if packed.is_file():
        raise InputError(f"file not found, but {packed.name} is here", path=path,
                         hint=f"decompress it first: gunzip -k {packed}")
    raise InputError("file not found", path=path, hint=hint)


JSON_LINES_HINT = "JSON Lines holds one complete JSON object per line"


def _not_json_lines(text: str, path: Path, line: int) -> InputError | None:
    """The error for a first line that shows a JSON document rather than JSON Lines, or None."""
    start = text.lstrip()[:1]
    if start not in ("[", "{"):
        return None
    what = "a JSON array" if start == "[" else "one pretty-printed JSON object over several lines"
    command = f"jq -c '.[]' {path} > {path}.new" if start == "[" else f"jq -c . {path} > {path}.new"
    return InputError(f"the file is {what}, not JSON Lines", path=path, line=line,
                      hint=f"{JSON_LINES_HINT}; convert with: {command} && mv {path}.new {path}")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad bytes or JSON name the line."""
    path = require_file(path, "check the path in your configuration")
    first = True
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            text = decode_utf8_line(raw, path, line_no)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                document = _not_json_lines(text, path, line_no) if first else None
                raise document or InputError(
                    f"malformed JSON ({err.msg} at column {err.colno})", path=path, line=line_no,
                    hint="each line must be one complete JSON object; a truncated last line usually means an "
                         "interrupted write") from None
            if not isinstance(obj, dict):
                hint = f"the file is one JSON array; {JSON_LINES_HINT}: convert with: jq -c '.[]' {path}" \
                    if first and isinstance(obj, list) else None
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line_no,
                                 hint=hint)
            first = False
            yield line_no, obj


def require_field(obj: dict[str, Any], field: str, path: str | os.PathLike, line: int,
                  kind: type | tuple[type, ...] = str, allow_empty: bool = False) -> Any:
    """Return ``obj[field]`` or raise an :class:`InputError` naming file, line and field."""
    if field not in obj or obj[field] is None:
        raise InputError("missing", path=path, line=line, field=field)
    value = obj[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"expected {names}, got {type(value).__name__}", path=path, line=line, field=field)
    if not allow_empty and isinstance(value, str) and not value.strip():
        raise InputError("empty", path=path, line=line, field=field)
    return value
