"""The exit's handshake runs off the event loop, and local failures end one link cleanly.

* A slow evidence provider (a TPM quote) does not stall an established tunnel: its
  frames are echoed while another client's handshake waits on the provider.
* A provider that raises (AttestationError, oversized evidence) ends that connection
  with a bare close; the exit keeps serving others.
* A KeyExpired raised inside a rekey init (in the socket's data_received) ends that link
  with reason "local error".
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

import pytest

from attestation.errors import TpmError
from l2bridge.constants import MAX_EVIDENCE_SIZE
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, EvidenceProvider, ServerHandshake
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
CLIENT = HybridSigningKey.generate()
KEY = ExitCredentials(EXIT.node_id)  # the exit's master key and credential table
CREDENTIAL = KEY.issue(CLIENT.node_id, "client")


async def echo(link: Link) -> None:
    try:
        while True:
            await link.send_frames(await link.recv_frames())
    except TransportClosed:
        pass


async def start(
    provider: EvidenceProvider | None,
    *,
    config: SessionConfig | None = None,
    clock: Callable[[], float] = time.time,
    on_link: Callable[[Link], object] = echo,
):
    settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())
    authorizer = Authorizer(allow_list=AllowList().add(CLIENT.node_id, "c"))
    server = await serve(
        on_link,  # type: ignore[arg-type]
        settings,
        lambda: ServerHandshake(EXIT, authorizer, evidence_provider=provider, config=config),
        host="127.0.0.1",
        port=0,
        clock=clock,
    )
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


def hello(attest: bool) -> ClientHandshake:
    if not attest:
        return ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id)
    return ClientHandshake(
        CLIENT, pinned_node_id=EXIT.node_id, attestation_nonce=os.urandom(32),
        evidence_checker=lambda evidence, nonce, node_id: None,
    )  # fmt: skip


async def dial(url: str, attest: bool) -> Link:
    return await connect(url, hello(attest), credential=CREDENTIAL, node_id=EXIT.node_id)


def test_slow_evidence_does_not_stall_established_links() -> None:
    events: list[str] = []
    started, release = threading.Event(), threading.Event()

    def slow_quote(nonce: bytes, node_id: bytes) -> bytes:
        events.append("quote started")
        started.set()
        release.wait(2.0)  # a slow TPM; returns early once the test has seen an echo
        events.append("quote done")
        return b"quote"

    async def scenario() -> None:
        server, url = await start(slow_quote)
        try:
            busy = await dial(url, attest=False)  # no nonce: no quote
            second = asyncio.ensure_future(dial(url, attest=True))
            assert await asyncio.to_thread(started.wait, 10)
            for i in range(20):  # the established tunnel keeps echoing meanwhile
                await busy.send_frames([bytes([i]) * 64])
                assert [bytes(f) for f in await busy.recv_frames()] == [bytes([i]) * 64]
            events.append("echoed 20 batches")
            release.set()
            other = await second
            assert other.session.established
            await other.close()
            await busy.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert events == ["quote started", "echoed 20 batches", "quote done"]


@pytest.mark.parametrize(
    "failure",
    [
        TpmError("TPM said no"),
        ValueError,  # evidence larger than the handshake carries
    ],
)
def test_provider_failure_ends_only_that_connection(
    failure: Exception | type[ValueError], caplog: pytest.LogCaptureFixture
) -> None:
    def provider(nonce: bytes, node_id: bytes) -> bytes:
        if isinstance(failure, Exception):
            raise failure
        return bytes(MAX_EVIDENCE_SIZE + 1)

    async def scenario() -> None:
        server, url = await start(provider)
        try:
            with pytest.raises(TransportClosed):
                await dial(url, attest=True)
            ok = await dial(url, attest=False)  # the exit still serves
            await ok.send_frames([b"x" * 60])
            assert [bytes(f) for f in await ok.recv_frames()] == [b"x" * 60]
            await ok.close()
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.ERROR, logger="l2bridge.node.link"):
        asyncio.run(asyncio.wait_for(scenario(), 30))
    assert any("handshake failed locally" in r.getMessage() for r in caplog.records)


def test_key_expired_during_rekey_ends_that_link() -> None:
    now = [time.time()]
    ended: asyncio.Future[str | None] | None = None

    async def on_link(link: Link) -> None:
        await echo(link)
        assert ended is not None
        ended.set_result(link.close_reason)

    async def scenario() -> None:
        nonlocal ended
        ended = asyncio.get_running_loop().create_future()
        # The exit's send key expires at 10 s; records are still received until 10 + 5 s.
        config = SessionConfig(reject_after_seconds=10.0, grace_seconds=5.0)
        server, url = await start(None, config=config, clock=lambda: now[0], on_link=on_link)
        try:
            link = await dial(url, attest=False)
            await link.send_frames([b"a" * 60])
            assert [bytes(f) for f in await link.recv_frames()] == [b"a" * 60]
            now[0] += 12.0
            assert link.rekey(1)  # the exit cannot answer under an expired key
            assert await ended == "local error"
            with pytest.raises(TransportClosed):
                await link.recv_frames()
            await link.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_evidence_up_to_the_limit_reaches_the_client() -> None:
    """A distribution kernel's IMA list runs to thousands of entries and grows: evidence up
    to MAX_EVIDENCE_SIZE (3 MiB) crosses the real WebSocket to the client's checker, while
    what the exit reads from the clients stays within the small handshake limit."""
    big = os.urandom(MAX_EVIDENCE_SIZE - 64)  # incompressible, as the wire sees it
    seen: list[bytes] = []

    def provider(nonce: bytes, node_id: bytes) -> bytes:
        return big + nonce + node_id

    def checker(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
        seen.append(evidence)
        if evidence != big + nonce + node_id:
            raise ValueError("not the exit's evidence")

    async def scenario() -> None:
        server, url = await start(provider)
        try:
            hs = ClientHandshake(
                CLIENT, pinned_node_id=EXIT.node_id, attestation_nonce=os.urandom(32),
                evidence_checker=checker,
            )  # fmt: skip
            link = await connect(url, hs, credential=CREDENTIAL, node_id=EXIT.node_id)
            assert link.session.established
            await link.send_frames([b"\x01" * 64])
            assert [bytes(f) for f in await link.recv_frames()] == [b"\x01" * 64]
            await link.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(seen) == 1 and len(seen[0]) == MAX_EVIDENCE_SIZE
