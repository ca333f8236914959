"""The client's re-check of the exit in use fails closed (l2bridge.client.failover).

An exit that accepts probe connections and never answers them must not keep its tunnel:
silence for the whole re-check window is a refusal, the link is closed, and the exit is
not dialled again before a backoff has passed.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace

import pytest

from attestation.policy import GoldenPolicy
from l2bridge.client.failover import DialSettings, ExitFinder
from l2bridge.client.selection import SelectionPolicy, candidate_from
from l2bridge.errors import NoExitAvailable
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.protocol.handshake import ClientHello
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.token import Credential

NOW = 1_000_000.0
EXIT_ID = b"\x07" * 32


@dataclass(frozen=True)
class Ak:
    x: bytes = b"\x01" * 32
    y: bytes = b"\x02" * 32


@dataclass(frozen=True)
class Record:
    node_id: bytes
    endpoint: str
    ak: Ak = Ak()
    reputation: int = 800
    last_attestation: int = int(NOW) - 10
    status: str = "active"
    healthy: bool = True


class Registry:
    def __init__(self, record: Record) -> None:
        self.record = record

    def healthy_nodes(self, min_reputation: int = 0) -> list[bytes]:
        return [self.record.node_id]

    def node(self, node_id: bytes) -> Record:
        return self.record


class FakeLink:
    closed = False

    async def close(self) -> None:
        self.closed = True


class SilentExit:
    """Accepts TCP connections (the probe's) and never says a word."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.read()  # until the prober gives up
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture(scope="module")
def settings() -> DialSettings:
    identity = HybridSigningKey.generate()
    return DialSettings(
        identity=identity,
        # The silent exit answers no token; any credential for its node id will do.
        credentials=CredentialWallet(
            [Credential(EXIT_ID, os.urandom(16), os.urandom(32), os.urandom(16))]
        ),
        policy=GoldenPolicy((), ()),
    )


def test_a_silent_exit_fails_its_recheck_and_is_not_redialled_before_a_backoff(
    settings: DialSettings,
) -> None:
    now = [NOW]
    silent = SilentExit()

    async def body() -> None:
        async with silent as endpoint:
            registry = Registry(Record(EXIT_ID, endpoint))
            finder = ExitFinder(
                registry,
                settings,
                SelectionPolicy(min_reputation=500),
                clock=lambda: now[0],
                dial_timeout=0.3,
                probe_timeout=0.2,
                recheck_window=0.6,
                recheck_retry=0.1,
                silent_backoff=30.0,
            )
            link = FakeLink()
            finder.current, finder._link = candidate_from(registry.record), link  # type: ignore[assignment]
            assert await finder.check_current() is False
            assert link.closed
            assert silent.connections >= 2  # retried within the window before refusing
            refusal = finder.refusals.refusal(EXIT_ID)
            assert refusal is not None and "no answer to the re-check" in refusal.reason
            # The exit attests on chain again (which lifts a refusal), but it stays in its
            # backoff: no dial at all.
            registry.record = replace(registry.record, last_attestation=int(NOW) + 5)
            now[0] = NOW + 10
            probes = silent.connections
            with pytest.raises(NoExitAvailable, match="silent at its last re-check"):
                await finder.connect()
            assert silent.connections == probes
            # After the backoff it is dialled again (and, still silent, fails to connect).
            now[0] = NOW + 31
            with pytest.raises(NoExitAvailable):
                await finder.connect()
            assert silent.connections == probes + 1

    asyncio.run(asyncio.wait_for(body(), 30))


def test_silent_rechecks_in_a_row_double_the_backoff(settings: DialSettings) -> None:
    now = [NOW]

    async def body() -> None:
        async with SilentExit() as endpoint:
            registry = Registry(Record(EXIT_ID, endpoint))
            finder = ExitFinder(
                registry,
                settings,
                SelectionPolicy(min_reputation=500),
                clock=lambda: now[0],
                probe_timeout=0.1,
                recheck_window=0.1,
                silent_backoff=10.0,
            )
            waits = []
            for _ in range(3):
                finder.current, finder._link = candidate_from(registry.record), FakeLink()  # type: ignore[assignment]
                assert await finder.check_current() is False
                waits.append(finder._redial_at[EXIT_ID] - now[0])
            assert waits == [10.0, 20.0, 40.0]

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_registry_dial_tells_the_exit_its_mtu(settings: DialSettings) -> None:
    """The hello of a dial to a registry exit carries ``network.mtu`` as a pinned dial's
    does, so the exit can warn about a device whose MTU differs from its own."""
    cand = candidate_from(Record(EXIT_ID, "ws://127.0.0.1:9/ws"))
    for mtu in (None, 1400):
        finder = ExitFinder(
            Registry(Record(EXIT_ID, cand.endpoint)),
            replace(settings, mtu=mtu),
            SelectionPolicy(min_reputation=500),
        )
        hs, _checker = finder._handshake(cand)
        assert ClientHello.decode(hs.hello()).mtu == mtu
