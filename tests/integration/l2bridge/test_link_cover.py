"""Cover traffic on a real link over loopback: an idle link carries padding-only records,
the receiver authenticates, counts and drops them, and frames are unaffected."""

from __future__ import annotations

import asyncio

import pytest

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.cover import CoverPlan
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
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
PADDED = SessionConfig(pad_to=256)
# Fast for the test: ~50 records/s once idle for 20 ms.
BUSY = CoverPlan(rate=50.0, min_size=64, max_size=1400, budget=1e6, idle_s=0.02)
# A budget below the smallest record: the plan can never send.
STARVED = CoverPlan(rate=50.0, min_size=200, max_size=400, budget=100.0, idle_s=0.0)


async def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):  # bounded: 10 s
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_idle_link_carries_cover_that_is_dropped_and_counted() -> None:
    batches: list[list[bytes]] = []
    exit_links: list[Link] = []

    async def on_link(link: Link) -> None:
        exit_links.append(link)
        try:
            while True:
                batch = [bytes(f) for f in await link.recv_frames()]
                batches.append(batch)
                await link.send_frames(batch)
        except TransportClosed:
            pass

    async def scenario() -> None:
        settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())
        authorizer = Authorizer(allow_list=AllowList().add(CLIENT.node_id, "c"))
        server = await serve(
            on_link, settings, lambda: ServerHandshake(EXIT, authorizer, config=PADDED),
            host="127.0.0.1", port=0, cover=BUSY,
        )  # fmt: skip
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        try:
            hs = ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id, config=PADDED)
            link = await connect(
                url, hs, credential=CREDENTIAL, node_id=EXIT.node_id, cover=STARVED
            )
            # The exit's admission record (padding only, like cover) is the first of them.
            await wait_for(lambda: link.session.stats.cover_received >= 6, "cover records")
            exit_link = exit_links[0]
            assert exit_link.cover_sent >= 5
            # the client's plan never fits its budget: nothing from it
            assert link.cover_sent == 0 and exit_link.session.stats.cover_received == 0
            frames = [bytes([i]) * (60 + 97 * i) for i in range(10)]
            for frame in frames:
                await link.send_frames([frame])
                assert [bytes(f) for f in await link.recv_frames()] == [frame]
            assert batches == [[f] for f in frames]  # no empty batch ever reached a reader
            assert link.session.stats.drops == {} and exit_link.session.stats.drops == {}
            assert link.session.stats.frames_received == len(frames)
            await link.close()
            await wait_for(lambda: exit_link.close_reason is not None, "the exit link to end")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))
