"""ALPN as a browser's wss:// connection and nginx (no HTTP/2) do it (l2bridge.transport.tls):
the client offers http/1.1, the exit selects it, and a client offering only h2 gets no
ALPN answer rather than an error."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from l2bridge.commands.initfiles import write_private_tls
from l2bridge.transport.tls import client_context, server_context

pytestmark = pytest.mark.integration
HOST = "front.example"


async def _selected(tmp: Path, client: ssl.SSLContext | None) -> str | None:
    ca, cert, key = write_private_tls(tmp / "tls", HOST)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=server_context(cert, key), ssl_handshake_timeout=5
    )
    port = server.sockets[0].getsockname()[1]
    context = client or client_context(ca)
    if client is not None:
        context.load_verify_locations(ca)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=HOST
        )
        selected = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.write(b"x")
        writer.close()
        return selected  # type: ignore[no-any-return]
    finally:
        server.close()
        await server.wait_closed()


def test_client_offers_and_exit_selects_http1(tmp_path: Path) -> None:
    assert asyncio.run(_selected(tmp_path, None)) == "http/1.1"


def test_a_client_offering_only_h2_gets_no_alpn(tmp_path: Path) -> None:
    h2_only = ssl.create_default_context()
    h2_only.set_alpn_protocols(["h2"])
    assert asyncio.run(_selected(tmp_path, h2_only)) is None
