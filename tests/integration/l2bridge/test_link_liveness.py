"""A silent exit is noticed and left; a silent client is dropped by the exit.

Two real exit processes (``echo_exit``) on loopback; the client is the real frame pump
(``l2bridge.client.pump.Client``) on a FakeTap, dialling exit A first, then B. Stopping
exit A with SIGSTOP makes it silent without closing anything: its kernel still
acknowledges every byte, so only the tunnel's own liveness can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware.tap import FakeTap
from l2bridge.client.pump import Backoff, Client
from l2bridge.errors import L2BridgeError
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node.link import Link, connect
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.handshake import ClientHandshake
from l2bridge.transport.token import Credential, MasterKey, b64_text
from tests.integration.l2bridge.echo_exit import KEEPALIVE_S, LIVENESS_S

pytestmark = pytest.mark.integration

CLIENT = HybridSigningKey.generate()
KEY = MasterKey.generate()  # each exit process gets its own node id, so its own secrets
FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + b"liveness" * 8


class Exit:
    def __init__(self, directory: Path, name: str) -> None:
        key = HybridSigningKey.generate()
        path = directory / f"{name}.key"
        key.save(path)
        self.node_id = key.node_id
        handle = os.urandom(16)
        self.credential = Credential.derive(KEY, key.node_id, handle)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.l2bridge.echo_exit", str(path),
             CLIENT.node_id.hex(), KEY.to_text(), b64_text(handle)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.url = f"ws://127.0.0.1:{port}/ws"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def exits(tmp_path: Path) -> Iterator[list[Exit]]:
    started: list[Exit] = []
    try:
        started.append(Exit(tmp_path, "a"))
        started.append(Exit(tmp_path, "b"))
        yield started
    finally:
        for e in started:
            e.stop()


async def dial(e: Exit, *, live: bool = True) -> Link:
    return await connect(
        e.url, ClientHandshake(CLIENT, pinned_node_id=e.node_id), credential=e.credential,
        node_id=e.node_id, keepalive_s=KEEPALIVE_S if live else None,
        liveness_s=LIVENESS_S if live else None,
    )  # fmt: skip


async def until(check: object, what: str, limit_s: float = 15.0) -> None:
    for _ in range(int(limit_s / 0.05)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {limit_s} s: {what}")


async def echoed(tap: FakeTap) -> None:
    tap.delivered()
    tap.inject(FRAME)
    await until(lambda: FRAME in tap.delivered(), "the exit echoes a frame")


def test_silent_exit_is_left_for_the_next(
    exits: list[Exit], caplog: pytest.LogCaptureFixture
) -> None:
    links: list[tuple[int, Link]] = []
    following = [0]

    async def connect_any() -> Link:
        for k in range(len(exits)):
            i = (following[0] + k) % len(exits)
            try:
                async with asyncio.timeout(2.0):
                    link = await dial(exits[i])
            except (OSError, TimeoutError, L2BridgeError):
                continue
            following[0] = i + 1
            links.append((i, link))
            return link
        raise ConnectionError("no exit answers")

    async def main() -> None:
        tap = FakeTap()
        client = Client(tap, connect_any, Metrics("client"), backoff=Backoff(0.05, 0.2))
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            await until(client.connected.is_set, "connected")
            await echoed(tap)
            # Idle for several liveness deadlines: keepalives both ways keep it up.
            await asyncio.sleep(4 * LIVENESS_S)
            first = links[0][1]
            assert client.connections == 1 and first.close_reason is None
            assert first.keepalives_sent >= 2
            assert first.session.stats.records_received >= 2  # the exit's keepalives

            os.kill(exits[0].proc.pid, signal.SIGSTOP)
            await until(lambda: len(links) == 2, "reconnected")
            assert first.close_reason == "peer silent"
            assert links[1][0] == 1  # to exit B
            await until(client.connected.is_set, "connected to B")
            await echoed(tap)
        finally:
            stop.set()
            await task
            tap.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("peer silent for") for m in messages), messages
    assert any(m.startswith("link lost (peer silent)") for m in messages), messages


def test_exit_drops_a_silent_client(exits: list[Exit]) -> None:
    async def main() -> None:
        silent = await dial(exits[1], live=False)  # sends no keepalives, never checks
        try:
            await until(lambda: silent.close_reason is not None, "dropped by the exit", 10)
            assert silent.close_reason == "connection closed"
        finally:
            await silent.close()

    asyncio.run(main())
