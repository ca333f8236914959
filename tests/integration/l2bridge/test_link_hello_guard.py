"""The exit's tunnel server with a gate that names the device of each token.

Real ``link.serve`` / ``link.connect`` on loopback with the real credential gate (each token
names the device its credential was issued to), evidence from a counting fake provider:

* a finish by another device than the one its token named is refused (no ``on_link``);
* the attested-hello quota is per device: one device past its quota is refused before the
  provider is called, another device still gets its quote;
* a duplicate hello is refused before the provider is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

from l2bridge.identity.keys import AdminKey, Authorizer, HybridSigningKey
from l2bridge.node.link import MAX_EXIT_MESSAGE_SIZE, Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.transport.client import open_transport
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import mint_token
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
ADMIN = AdminKey(HybridSigningKey.generate())
KEY = ExitCredentials(EXIT.node_id)
ALICE, BOB = HybridSigningKey.generate(), HybridSigningKey.generate()
NOW = int(time.time())
CERTS = {
    key.node_id: ADMIN.issue(key.public, name, "org", NOW - 60, NOW + 3600)
    for key, name in ((ALICE, "alice"), (BOB, "bob"))
}


def attested(key: HybridSigningKey) -> ClientHandshake:
    return ClientHandshake(
        key, certificate=CERTS[key.node_id], pinned_node_id=EXIT.node_id,
        attestation_nonce=os.urandom(32), evidence_checker=lambda *a: None,
    )  # fmt: skip


def test_the_device_a_token_names() -> None:
    quotes: list[bytes] = []

    def provider(nonce: bytes, node_id: bytes) -> bytes:
        quotes.append(nonce)
        return b"evidence:" + nonce

    admitted_links: list[str] = []

    async def on_link(link: Link) -> None:
        assert link.session.authorization is not None
        admitted_links.append(link.session.authorization.name)
        with contextlib.suppress(TransportClosed):
            await link.recv_frames()

    guard = HelloGuard(quotes_per_minute=2)
    settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())
    credentials = {
        key.node_id: KEY.issue(key.node_id, name) for key, name in ((ALICE, "alice"), (BOB, "bob"))
    }

    def token_for(device: HybridSigningKey) -> str:
        return mint_token(credentials[device.node_id], time.time())

    async def dial(url: str, hs: ClientHandshake, as_: bytes) -> Link:
        # The credential issued to ``as_`` names that device at the gate.
        return await connect(url, hs, credential=credentials[as_], node_id=EXIT.node_id)

    async def main() -> None:
        server = await serve(
            on_link, settings,
            lambda: ServerHandshake(EXIT, Authorizer([ADMIN.public]), evidence_provider=provider),
            host="127.0.0.1", port=0, hello_guard=guard,
        )  # fmt: skip
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        try:
            # Bob with a token naming Alice: his own valid certificate does not help.
            with pytest.raises(TransportClosed):
                await dial(url, attested(BOB), ALICE.node_id)
            assert len(quotes) == 1 and admitted_links == []
            # Alice's quota (2 a minute): one more attested hello, then refused before the
            # provider; Bob, named by his own token, still gets his quote.
            link = await dial(url, attested(ALICE), ALICE.node_id)
            await link.close()
            assert len(quotes) == 2 and admitted_links == ["alice"]
            with pytest.raises(TransportClosed):
                await dial(url, attested(ALICE), ALICE.node_id)
            assert len(quotes) == 2 and guard.refused["quote quota"] == 1
            link = await dial(url, attested(BOB), BOB.node_id)
            await link.close()
            assert len(quotes) == 3 and admitted_links == ["alice", "bob"]
            # A duplicate hello (Bob's hello sent again under a fresh token naming Bob).
            hs = ClientHandshake(BOB, certificate=CERTS[BOB.node_id], pinned_node_id=EXIT.node_id)
            link = await dial(url, hs, BOB.node_id)
            await link.close()
            ws = await open_transport(
                url, token_for(BOB), max_size=MAX_EXIT_MESSAGE_SIZE, direct=True
            )
            assert isinstance(ws, DirectMessages)
            ws.write_binary(hs.hello())
            with pytest.raises(TransportClosed):
                async with asyncio.timeout(5):
                    await ws.next_message()
            await ws.close()  # type: ignore[attr-defined]
            assert guard.refused["duplicate"] == 1 and len(quotes) == 3
            assert admitted_links == ["alice", "bob", "bob"]
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 60))
