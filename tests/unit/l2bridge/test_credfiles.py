"""The exit's credential table on disk: every writer changes it under one lock, so
concurrent `shadowmesh credentials` runs and the exit never lose each other's updates."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from l2bridge.errors import KeyFileError
from l2bridge.node.credfiles import load_table, save_table, update_table
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.token import MasterKey

NODE = bytes(range(32))
MASTER = MasterKey.generate()


def _device(n: int) -> bytes:
    return bytes([n]) * 32


def test_update_saves_the_change_and_returns_its_result(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    entry, _ = update_table(path, lambda t: t.issue(MASTER, NODE, _device(1), "a", 1.0))
    assert [e.handle for e in load_table(path)] == [entry.handle]
    assert update_table(path, lambda t: t.revoke(name="a")) != []
    assert [e.revoked for e in load_table(path)] == [True]


def test_nothing_is_saved_when_the_change_raises(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    update_table(path, lambda t: t.issue(MASTER, NODE, _device(1), "a", 1.0))
    before = path.read_bytes()

    def broken(table: CredentialTable) -> None:
        table.issue(MASTER, NODE, _device(2), "b", 2.0)
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        update_table(path, broken)
    assert path.read_bytes() == before


def test_a_second_writer_waits_for_the_first_and_both_updates_survive(tmp_path: Path) -> None:
    """The lost update this prevents: an `issue` reading the table, a `revoke` saving
    meanwhile, then the `issue` saving its stale copy and bringing the device back."""
    path = tmp_path / "credentials.json"
    update_table(path, lambda t: t.issue(MASTER, NODE, _device(1), "victim", 1.0))
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_issue(table: CredentialTable) -> None:
        inside.set()
        assert release.wait(10)
        table.issue(MASTER, NODE, _device(2), "new", 2.0)
        order.append("issue")

    def revoke(table: CredentialTable) -> None:
        table.revoke(name="victim")
        order.append("revoke")

    first = threading.Thread(target=update_table, args=(path, slow_issue))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=update_table, args=(path, revoke))
    second.start()
    second.join(0.3)
    assert second.is_alive() and order == []  # blocked on the lock, not racing
    release.set()
    first.join(10)
    second.join(10)
    assert order == ["issue", "revoke"]
    assert {e.name: e.revoked for e in load_table(path)} == {"victim": True, "new": False}


def test_the_lock_file_is_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    update_table(path, lambda t: None)
    lock = tmp_path / ".credentials.json.lock"
    inode = lock.stat().st_ino
    assert lock.stat().st_mode & 0o777 == 0o600
    save_table(CredentialTable(), path)
    update_table(path, lambda t: None)
    assert lock.stat().st_ino == inode


def test_a_lock_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".credentials.json.lock").mkdir()  # not a file: refused even to root
    with pytest.raises(KeyFileError, match="cannot open"):
        update_table(tmp_path / "credentials.json", lambda t: None)
    assert not (tmp_path / "credentials.json").exists()
