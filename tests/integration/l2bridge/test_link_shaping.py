"""Traffic shaping on a real link over loopback (l2bridge.protocol.shaping through the
link's send path): records take the profile's sizes, every frame arrives once and in
order, frames bigger than the profile still pass, and the client's LAN chatter rides with
its unicast frames."""

from __future__ import annotations

import asyncio

import pytest

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.cover import RECORD_OVERHEAD, ShapingPlan
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.shaping import BrowserProfile, Distribution, Shaping
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
CLIENT = HybridSigningKey.generate()
KEY = ExitCredentials(EXIT.node_id)
CREDENTIAL = KEY.issue(CLIENT.node_id, "c")
SIZE = 700  # every message of the profile: each shaped record is this big on the wire
PROFILE = BrowserProfile((), Distribution((float(SIZE),)), Distribution((0.002,)))
PLAN = ShapingPlan(Shaping.BROWSER, PROFILE, PROFILE, chatter=True)
OFFLOAD = b"\x01" + bytes(9)  # a tunnel frame's offload header (NEEDS_CSUM)
UNICAST = OFFLOAD + bytes.fromhex("020000000001020000000002") + b"\x08\x00"
BROADCAST = OFFLOAD + b"\xff" * 6 + bytes.fromhex("020000000002") + b"\x08\x06"


def test_shaped_link_sizes_order_and_chatter() -> None:
    received: list[bytes] = []
    exit_links: list[Link] = []

    async def on_link(link: Link) -> None:
        exit_links.append(link)
        try:
            while True:
                batch = [bytes(f) for f in await link.recv_frames()]
                received.extend(batch)
                await link.send_frames(batch)  # echoed through the exit's shaper
        except TransportClosed:
            pass

    async def scenario() -> None:
        settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())
        authorizer = Authorizer(allow_list=AllowList().add(CLIENT.node_id, "c"))
        server = await serve(
            on_link, settings, lambda: ServerHandshake(EXIT, authorizer),
            host="127.0.0.1", port=0, shaping=PLAN,
        )  # fmt: skip
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        try:
            hs = ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id)
            link = await connect(url, hs, credential=CREDENTIAL, node_id=EXIT.node_id, shaping=PLAN)
            frames = [UNICAST + bytes([i % 256]) * (40 + 37 * i) for i in range(40)]
            frames.append(UNICAST + b"\x99" * 9000)  # bigger than any profile size
            echoed: list[bytes] = []
            sent_before = link.session.stats.records_sent
            bytes_before = link.session.stats.bytes_sent
            for frame in frames:
                await link.send_frames([frame])
            while len(echoed) < len(frames):
                echoed += [bytes(f) for f in await asyncio.wait_for(link.recv_frames(), 5)]
            assert received == frames and echoed == frames
            records = link.session.stats.records_sent - sent_before
            # A record is exactly the profile's size, or a frame too big for it alone at
            # its own size, unpadded.
            wire = link.session.stats.bytes_sent - bytes_before
            alone = [
                RECORD_OVERHEAD + 4 + len(f) for f in frames if RECORD_OVERHEAD + 4 + len(f) > SIZE
            ]
            assert records > len(alone)
            assert wire == (records - len(alone)) * SIZE + sum(alone)
            # Chatter waits for the next unicast frame and goes first, in one batch.
            received.clear()
            arp = BROADCAST + b"who-has"
            await link.send_frames([arp])
            await asyncio.sleep(0.2)
            assert received == []
            await link.send_frames([frames[0]])
            for _ in range(100):
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.02)
            assert received == [arp, frames[0]]
            await link.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))
