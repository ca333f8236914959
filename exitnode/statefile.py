"""The exit's state files (AK, enrolment record, measured configuration): written
atomically, checked when read.

A write goes to a temporary file in the same directory, is flushed to disk, and only
then renamed over the old file (and the directory flushed), so a crash or a full disk
leaves the old file or the new one, never a truncated one. Any OS error becomes one
``StateFileError`` line naming the file and the reason ("No space left on device"),
with no traceback; the temporary file is removed. Reading refuses an empty or
unparsable file with the same kind of line, so a damaged file is never taken as state.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from exitnode.errors import StateFileError

T = TypeVar("T")

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
MAX_STATE_FILE = 1 << 20


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def write_atomic(path: Path, data: str | bytes, *, mode: int = STATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` all at once. Raises StateFileError."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateFileError(f"cannot write {path}: {_reason(exc)}") from None


def read_state(
    path: Path,
    parse: Callable[[str], T],
    refusals: tuple[type[Exception], ...] = (ValueError,),
) -> T:
    """``parse(text)`` of the file. Raises StateFileError when it is unreadable, empty,
    not UTF-8 or ``parse`` raises one of ``refusals`` (its way of saying "damaged")."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STATE_FILE + 1)
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {_reason(exc)}") from None
    if not raw.strip():
        raise StateFileError(f"{path} is empty (a write that never finished?)")
    if len(raw) > MAX_STATE_FILE:
        raise StateFileError(f"{path}: larger than {MAX_STATE_FILE} bytes")
    caught: tuple[type[Exception], ...] = (UnicodeDecodeError, *refusals)
    try:
        return parse(raw.decode())
    except caught as exc:
        raise StateFileError(f"{path} is damaged: {type(exc).__name__}") from None
