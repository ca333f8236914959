"""bench/l2_floor.py, the Python floor tunnel: it must carry every frame intact and in
order whatever the TCP stream's chunking, or its figures would measure something else."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.l2_floor import Relay, pump_threads


class Wire:
    """What the relay writes to its TCP transport."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        thing.close()


def end(role: str, key: bytes, opened: list[Any]) -> tuple[Relay, socket.socket, Wire]:
    """A relay whose TAP is one end of a packet socket pair (one read = one frame)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    loop = asyncio.new_event_loop()
    opened += [ours, theirs, loop]
    relay = Relay(ours.fileno(), AESGCM(key), role, loop.create_future())
    wire = Wire()
    relay.transport = wire  # type: ignore[assignment]
    return relay, theirs, wire


def frames_out(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("seed", range(5))
def test_frames_cross_both_ways_whatever_the_chunking(seed: int, opened: list[Any]) -> None:
    rng = random.Random(seed)
    key = os.urandom(32)
    client, client_lan, client_wire = end("client", key, opened)
    exit_, exit_lan, exit_wire = end("exit", key, opened)
    sent = [rng.randbytes(rng.randint(60, 1514)) for _ in range(40)]
    for frame in sent:
        client_lan.send(frame)
    client.tap_readable()
    stream = bytes(client_wire.data)
    at = 0
    while at < len(stream):  # TCP may cut the records anywhere
        step = rng.randint(1, 3000)
        exit_.data_received(stream[at : at + step])
        at += step
    assert frames_out(exit_lan) == sent
    assert exit_.buffer == bytearray()
    # And back: the exit's records open only with the exit's direction in the nonce.
    exit_lan.send(b"reply" * 20)
    exit_.tap_readable()
    client.data_received(bytes(exit_wire.data))
    assert frames_out(client_lan) == [b"reply" * 20]


def test_a_record_sealed_for_the_other_direction_does_not_open(opened: list[Any]) -> None:
    key = os.urandom(32)
    client, client_lan, client_wire = end("client", key, opened)
    other_client, _, _ = end("client", key, opened)
    client_lan.send(b"x" * 100)
    client.tap_readable()
    # A client's own record fed back to a client (a reflection) fails: nonces differ.
    with pytest.raises(InvalidTag):
        other_client.data_received(bytes(client_wire.data))


def test_the_threaded_floor_carries_frames_both_ways_and_ends_with_its_stream() -> None:
    key = os.urandom(32)
    c_tap, c_lan = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    x_tap, x_lan = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c_sock, x_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    socks = [c_tap, c_lan, x_tap, x_lan, c_sock, x_sock]
    for sock in (c_lan, x_lan):
        sock.settimeout(10)
    pumps = [
        threading.Thread(target=pump_threads, args=(c_tap.fileno(), c_sock, AESGCM(key), "client")),
        threading.Thread(target=pump_threads, args=(x_tap.fileno(), x_sock, AESGCM(key), "exit")),
    ]
    try:
        for pump in pumps:
            pump.start()
        rng = random.Random(7)
        sent = [rng.randbytes(rng.randint(60, 1514)) for _ in range(40)]
        for frame in sent:
            c_lan.send(frame)
        assert [x_lan.recv(65536) for _ in sent] == sent
        x_lan.send(b"reply" * 20)
        assert c_lan.recv(65536) == b"reply" * 20
    finally:
        for sock in (c_lan, x_lan):  # the sending threads end at the TAP's end of file
            sock.shutdown(socket.SHUT_RDWR)
        for sock in (c_sock, x_sock):  # the receiving ones at the stream's end
            sock.shutdown(socket.SHUT_RDWR)
        for pump in pumps:
            pump.join(10)
        assert not any(pump.is_alive() for pump in pumps)
        for sock in socks:
            sock.close()
