"""Credential files on disk: the exit's table (``keys.credentials``), a device's
credentials (``endpoints.credential_file``) and the exit's master key
(``endpoints.access_key_file``).

Every failure is a ``KeyFileError`` naming the file. The master key and a device's
credentials are secrets (0600, checked on open); the table holds none (handles and
device ids) but must not be writable by others, since it decides who is admitted.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from l2bridge.errors import KeyFileError
from l2bridge.identity.keys import read_checked_file, read_private_file, write_private_file
from l2bridge.transport.credentials import CredentialTable, CredentialWallet
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import MasterKey

T = TypeVar("T")


def load_master_key(path: Path) -> MasterKey:
    try:
        return MasterKey.from_text(read_private_file(path))
    except TokenError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def load_wallet(path: Path) -> CredentialWallet:
    try:
        return CredentialWallet.from_text(read_private_file(path))
    except TokenError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def save_wallet(wallet: CredentialWallet, path: Path) -> None:
    write_private_file(path, wallet.to_text(), force=True)


def load_table(path: Path) -> CredentialTable:
    """The table, or an empty one when the file does not exist yet."""
    if not path.exists():
        return CredentialTable()
    try:
        text = read_checked_file(path, private=False).decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not UTF-8 text") from None
    try:
        return CredentialTable.from_text(text)
    except TokenError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def save_table(table: CredentialTable, path: Path) -> None:
    """Replace the file atomically (a running exit re-reads it when it changes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(table.to_text())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _table_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for one read-change-write of the table. The lock lives in a
    file beside it (``.NAME.lock``), never replaced, so every writer locks the same inode."""
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise KeyFileError(f"{lock_path}: cannot open ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def update_table(path: Path, change: Callable[[CredentialTable], T]) -> T:
    """Read the table, apply ``change`` to it and save it, under the table's lock, so two
    writers (``shadowmesh credentials`` and ``init`` runs, the exit cancelling credentials
    of a revoked certificate) never lose each other's entries or revocations. Nothing is
    saved when ``change`` raises. Returns what ``change`` returned."""
    with _table_lock(path):
        table = load_table(path)
        result = change(table)
        save_table(table, path)
    return result


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (None: no file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)
