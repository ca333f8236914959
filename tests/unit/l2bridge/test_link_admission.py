"""The client's wait for the exit's admission record (``link._admission``), no sockets."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from l2bridge.errors import ProtocolViolation
from l2bridge.node.link import _admission
from l2bridge.protocol.pair import SessionPair
from l2bridge.transport.errors import TransportClosed


class Messages:
    """What ``_admission`` uses of a tunnel socket: the next message, or a closed socket."""

    def __init__(self, *messages: bytes) -> None:
        self.messages = deque(messages)

    async def next_message(self) -> bytes:
        if not self.messages:
            raise TransportClosed("connection closed")
        return self.messages.popleft()


def admission(pair: SessionPair, *messages: bytes) -> None:
    ws = Messages(*messages)
    asyncio.run(_admission(ws, pair.client, lambda: 1.0))  # type: ignore[arg-type]


def test_a_padding_only_record_admits() -> None:
    pair = SessionPair.connect(now=1.0)
    admission(pair, bytes(pair.exit.seal_cover(10, 1.0)))
    assert pair.client.stats.cover_received == 1


def test_a_record_that_does_not_open_is_waited_past() -> None:
    pair = SessionPair.connect(now=1.0)
    forged = bytearray(pair.exit.seal_cover(0, 1.0))
    forged[-1] ^= 1
    admission(pair, bytes(forged), bytes(pair.exit.seal_cover(0, 1.0)))
    assert pair.client.stats.drops and pair.client.stats.cover_received == 1


def test_a_close_or_no_admission_is_a_closed_connection() -> None:
    pair = SessionPair.connect(now=1.0)
    with pytest.raises(TransportClosed):
        admission(pair, bytes(pair.exit.close_notice(now=1.0)))
    pair = SessionPair.connect(now=1.0)
    with pytest.raises(TransportClosed):
        admission(pair)  # the exit refused after the finish: it just closes


def test_frames_before_the_admission_are_a_protocol_violation() -> None:
    pair = SessionPair.connect(now=1.0)
    with pytest.raises(ProtocolViolation):
        admission(pair, bytes(pair.exit.seal([b"frame"], 1.0)))
