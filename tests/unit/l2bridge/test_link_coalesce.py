"""The link's coalescing: a small batch sent right after a record waits one loop iteration
for company (few large records instead of one per 1500-byte frame), a large batch (a GSO
super-frame) goes at once, an idle link sends at once, and nothing is ever reordered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from l2bridge.node import link as link_module
from l2bridge.node.link import COALESCE_BYTES, COALESCE_S, Link
from l2bridge.protocol.pair import SessionPair

NOW = 1_800_000_000.0


class Socket:
    """The part of a TunnelSocket that sending uses: records written, in order."""

    is_open = True
    write_paused = False

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def write_binary(self, data: bytes | bytearray | memoryview) -> None:
        self.records.append(bytes(data))


class Clock:
    """``time`` for the link module with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(link_module, "time", fake)
    return fake


def _run(body: Callable[[Link, Socket, SessionPair], Any]) -> None:
    pair = SessionPair.connect(NOW)
    sock = Socket()
    link = Link(sock, pair.client, is_client=True, clock=lambda: NOW)  # type: ignore[arg-type]

    async def scenario() -> None:
        await body(link, sock, pair)

    asyncio.run(scenario())


def _frames(pair: SessionPair, records: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for record in records:
        out += [bytes(f) for f in pair.exit.receive(record, NOW).frames]
    return out


def _frame(tag: int, size: int) -> bytes:
    return bytes([tag]) * size


def test_idle_link_sends_at_once_and_a_small_follower_waits_one_iteration(clock: Clock) -> None:
    async def body(link: Link, sock: Socket, pair: SessionPair) -> None:
        assert link.send_now([_frame(1, 1500)])
        assert len(sock.records) == 1  # idle: no wait
        clock.t += COALESCE_S / 5
        assert link.send_now([_frame(2, 1500)]) and link.send_now([_frame(3, 1500)])
        assert len(sock.records) == 1  # waiting for the loop
        await asyncio.sleep(0)
        assert len(sock.records) == 2  # both in one record
        assert _frames(pair, sock.records) == [_frame(1, 1500), _frame(2, 1500), _frame(3, 1500)]

    _run(body)


def test_a_large_batch_right_after_a_record_goes_at_once(clock: Clock) -> None:
    async def body(link: Link, sock: Socket, pair: SessionPair) -> None:
        assert link.send_now([_frame(1, 1500)])
        clock.t += COALESCE_S / 5
        assert link.send_now([_frame(2, COALESCE_BYTES)])  # one super-frame
        assert len(sock.records) == 2
        clock.t += COALESCE_S / 5
        assert link.send_now([_frame(3, COALESCE_BYTES // 2), _frame(4, COALESCE_BYTES // 2)])
        assert len(sock.records) == 3
        assert [f[0] for f in _frames(pair, sock.records)] == [1, 2, 3, 4]

    _run(body)


def test_a_large_batch_behind_waiting_frames_waits_too(clock: Clock) -> None:
    """Order holds: frames already waiting go first, so a large one joins them."""

    async def body(link: Link, sock: Socket, pair: SessionPair) -> None:
        assert link.send_now([_frame(1, 1500)])
        clock.t += COALESCE_S / 5
        assert link.send_now([_frame(2, 60)])
        assert link.send_now([_frame(3, 4 * COALESCE_BYTES)])
        assert len(sock.records) == 1
        await asyncio.sleep(0)
        assert [f[0] for f in _frames(pair, sock.records)] == [1, 2, 3]

    _run(body)


def test_after_the_window_a_small_batch_goes_at_once(clock: Clock) -> None:
    async def body(link: Link, sock: Socket, pair: SessionPair) -> None:
        assert link.send_now([_frame(1, 1500)])
        clock.t += COALESCE_S * 2
        assert link.send_now([_frame(2, 1500)])
        assert len(sock.records) == 2

    _run(body)
