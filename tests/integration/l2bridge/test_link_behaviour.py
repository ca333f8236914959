"""Link lifecycle on loopback: clean close both ways, refusal of an unknown
client without explanation, the exit never starting a rekey, bounded queues."""

from __future__ import annotations

import asyncio

import pytest

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
CLIENT = HybridSigningKey.generate()


async def start(on_link, *, allowed=True):
    allow = AllowList().add(CLIENT.node_id, "c") if allowed else AllowList()
    creds = ExitCredentials(EXIT.node_id)
    settings = ServerSettings(DecoySite.builtin(), "/ws", creds.verifier(), header_timeout=2.0)
    server = await serve(
        on_link,
        settings,
        lambda: ServerHandshake(EXIT, Authorizer(allow_list=allow)),
        host="127.0.0.1",
        port=0,
        queue_batches=2,
    )
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    return server, url, creds.issue(CLIENT.node_id, "c")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_echo_then_client_close_ends_exit_link():
    async def scenario():
        ended: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        async def on_link(link: Link) -> None:
            assert link.rekey(5) is False  # the exit follows, never leads
            try:
                while True:
                    await link.send_frames(await link.recv_frames())
            except TransportClosed:
                ended.set_result(link.close_reason)

        server, url, key = await start(on_link)
        try:
            link = await connect(
                url,
                ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id),
                credential=key,
                node_id=EXIT.node_id,
            )
            frames = [b"\x01" * 60, b"\x02" * 1514, b"\x03" * 9000]
            await link.send_frames(frames)
            assert [bytes(f) for f in await link.recv_frames()] == frames
            await link.close()
            assert await ended == "closed by peer"
            with pytest.raises(TransportClosed):
                await link.recv_frames()
            with pytest.raises(TransportClosed):
                await link.send_frames([b"x" * 60])
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_exit_close_ends_client_link_and_unblocks_sender():
    async def scenario():
        async def on_link(link: Link) -> None:
            await link.recv_frames()  # then return: serve() closes the link

        server, url, key = await start(on_link)
        try:
            link = await connect(url, ClientHandshake(CLIENT), credential=key, node_id=EXIT.node_id)
            await link.send_frames([b"a" * 100])
            # Keep sending into a queue of 2 batches: when the exit goes away the
            # sender is released with TransportClosed, never left hanging.
            with pytest.raises(TransportClosed):
                for _ in range(100_000):
                    await link.send_frames([b"b" * 9000] * 8)
            with pytest.raises(TransportClosed):
                await link.recv_frames()
            await link.close()
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_unknown_client_is_disconnected_without_explanation():
    async def scenario():
        admitted: list[Link] = []

        async def on_link(link: Link) -> None:
            admitted.append(link)

        server, url, key = await start(on_link, allowed=False)
        try:
            # The exit refuses at the hello and just closes: no reason is sent.
            with pytest.raises(TransportClosed, match="closed the connection"):
                await connect(url, ClientHandshake(CLIENT), credential=key, node_id=EXIT.node_id)
        finally:
            server.close()
            await server.wait_closed()
        assert admitted == []

    run(scenario())
