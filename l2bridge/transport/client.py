"""The client's WebSocket: a browser's opening handshake through websockets.

``open_transport`` connects, sends Chrome's header set in Chrome's order with
the connection token as the only offered subprotocol, and returns the
websockets ClientConnection (masked frames, binary messages). Like a browser
it never sends pings of its own; it answers the server's.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import urllib.parse
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers, HeadersLike
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.http11 import USER_AGENT
from websockets.protocol import CONNECTING
from websockets.typing import Subprotocol

from l2bridge.transport.constants import (
    CLOSE_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    MAX_QUEUE_MESSAGES,
    OPEN_TIMEOUT_S,
    WRITE_LIMIT_BYTES,
)
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.errors import UpgradeRefused
from l2bridge.transport.headers import BROWSER_USER_AGENT, browser_headers
from l2bridge.transport.tls import ResumingContext


class BrowserLikeConnection(DirectMessages, ClientConnection):
    """Rebuilds the handshake request in a browser's header order."""

    origin_header: str = ""
    user_agent: str = BROWSER_USER_AGENT
    # Set on each call's subclass: how far the opening got (TCP and TLS are up once
    # ``handshake`` runs), so a timeout can say where it stopped.
    stages: list[str]

    async def handshake(
        self,
        additional_headers: HeadersLike | None = None,
        user_agent_header: str | None = USER_AGENT,
    ) -> None:
        self.stages.append("connected")
        request = self.protocol.connect()
        protocols = request.headers.get("Sec-WebSocket-Protocol", "")
        headers = Headers(
            browser_headers(
                host=request.headers["Host"],
                origin=self.origin_header,
                key=request.headers["Sec-WebSocket-Key"],
                protocol=protocols,
                user_agent=self.user_agent,
            )
        )
        request.headers = headers
        self.request = request
        async with self.send_context(expected_state=CONNECTING):
            self.protocol.send_request(request)
        await asyncio.wait(
            [self.response_rcvd, self.connection_lost_waiter],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc


def default_origin(url: str) -> str:
    """The page origin a browser would send for a socket at ``url``."""
    parts = urllib.parse.urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


async def open_transport(
    url: str,
    token: str,
    *,
    origin: str | None = None,
    user_agent: str = BROWSER_USER_AGENT,
    ssl: ssl_module.SSLContext | None = None,
    max_size: int = MAX_MESSAGE_BYTES,
    open_timeout: float = OPEN_TIMEOUT_S,
    direct: bool = False,
    **connect_kwargs: Any,
) -> ClientConnection:
    """Open the tunnel WebSocket to ``url`` (ws:// or wss://).

    Raises UpgradeRefused when the server answers like a web server (it does
    so for a wrong key, node id, path or a clock far off), OSError when the
    TCP connection fails, TimeoutError when the opening times out (saying whether the
    connection or the server's answer to the upgrade was missing). With ``direct`` the
    connection delivers messages synchronously (``transport.direct``), not via ``recv()``.
    """
    stages: list[str] = []
    connection_class = type(
        "TunnelClientConnection",
        (BrowserLikeConnection,),
        {
            "origin_header": origin or default_origin(url),
            "user_agent": user_agent,
            "direct_messages": direct,
            "stages": stages,
        },
    )
    try:
        connection: ClientConnection = await connect(
            url,
            subprotocols=[Subprotocol(token)],
            compression=None,
            proxy=None,
            ssl=ssl,
            open_timeout=open_timeout,
            # Browsers cannot send pings; the server's pings keep us alive.
            ping_interval=None,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=max_size,
            max_queue=MAX_QUEUE_MESSAGES,
            write_limit=WRITE_LIMIT_BYTES,
            create_connection=connection_class,
            **connect_kwargs,
        )
    except TimeoutError:
        # websockets says only "timed out during opening handshake"; an operator needs to
        # know whether the network (TCP, TLS) or the server (no answer to the upgrade) failed.
        where = (
            "connected, but the server did not answer the WebSocket upgrade"
            if stages
            else f"no {'TLS' if url.startswith('wss:') else 'TCP'} connection"
        )
        raise TimeoutError(f"{where} within {open_timeout:g} s") from None
    except InvalidStatus as exc:
        raise UpgradeRefused(f"server answered HTTP {exc.response.status_code}") from None
    except InvalidHandshake as exc:
        raise UpgradeRefused(f"upgrade failed: {exc}") from None
    if isinstance(ssl, ResumingContext):
        # The server's session tickets came before its answer to the upgrade.
        ssl.remember(connection.transport.get_extra_info("ssl_object"))
    return connection
