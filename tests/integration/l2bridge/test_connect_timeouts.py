"""A client whose connect times out says how far it got: the network (no TCP or TLS
connection) or the server (connected, but no answer to the WebSocket upgrade)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
import uvloop

from l2bridge.transport.client import open_transport

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """Accepts TCP connections and reads what comes, never answering."""
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        received.append(await reader.read(4096))
        await done.wait()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        done.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the handlers end


def test_no_answer_to_the_upgrade_is_named() -> None:
    async def run() -> None:
        async with silent_server() as (port, received):
            with pytest.raises(TimeoutError) as caught:
                await open_transport(f"ws://127.0.0.1:{port}/ws", "t", open_timeout=0.5)
        assert str(caught.value) == (
            "connected, but the server did not answer the WebSocket upgrade within 0.5 s"
        )
        assert received and received[0].startswith(b"GET /ws HTTP/1.1\r\n")

    uvloop.run(run())


def test_a_tls_handshake_that_never_completes_is_named() -> None:
    async def run() -> None:
        context = ssl.create_default_context()
        async with silent_server() as (port, received):
            with pytest.raises(TimeoutError) as caught:
                await open_transport(
                    f"wss://127.0.0.1:{port}/ws", "t", ssl=context, open_timeout=0.5
                )
        assert str(caught.value) == "no TLS connection within 0.5 s"
        assert received and received[0][:1] == b"\x16"  # a TLS ClientHello arrived

    uvloop.run(run())
