"""The exit's WebSocket server and the standalone decoy web server (asyncio).

Both screen each connection with the same ``Gate``. The exit's connections are
``websockets`` ServerConnections whose bytes go through the gate until it
decides: an authorised upgrade is handed to the library unchanged (it speaks
RFC 6455 from there: framing, masking checks, pings, close); anything else is
answered by the decoy site and closed by us, so the library never writes a
byte of its own error pages.

Strangers can open connections at line rate, so nothing is logged per connection
above DEBUG (the library's own per-connection INFO lines are demoted too); a
``Summary`` line per minute at INFO counts how connections were screened. The
listen backlog is sized for floods and reconnect storms (``DEFAULT_BACKLOG``; the
kernel caps it at net.core.somaxconn).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from l2bridge.logsummary import Summary
from l2bridge.transport.constants import (
    CLOSE_TIMEOUT_S,
    DEFAULT_BACKLOG,
    DEFAULT_HEADER_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    MAX_QUEUE_MESSAGES,
    SERVER_PING_INTERVAL_S,
    SERVER_PING_TIMEOUT_S,
    WRITE_LIMIT_BYTES,
)
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.gate import Admit, Answer, Gate
from l2bridge.transport.token import TokenVerifier

Clock = Callable[[], float]

log = logging.getLogger(__name__)


class _QuietPerConnection(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The library's logger with its per-connection INFO lines ("connection closed")
    demoted to DEBUG; warnings and errors pass unchanged."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)  # type: ignore[arg-type]


def screening_summary() -> Summary:
    return Summary(log, "connections screened")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    site: DecoySite
    ws_path: str
    verifier: TokenVerifier | None
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    clock: Clock = time.time


class _Screen:
    """Gate + header timer for one connection, shared by both server kinds."""

    def __init__(
        self, settings: ServerSettings, transport: asyncio.Transport, summary: Summary
    ) -> None:
        self.gate = Gate(settings.site, ws_path=settings.ws_path, verifier=settings.verifier)
        self._summary = summary
        self._clock = settings.clock
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            settings.header_timeout, self._expire
        )
        self.open = True  # still screening

    def _expire(self) -> None:
        # Like a web server's client_header_timeout: close without an answer.
        self._timer = None
        if self.open:
            self.open = False
            self._summary.note("header timeout")
            self._transport.close()

    def feed(self, data: bytes) -> Admit | None:
        """Screen ``data``; return the Admit decision, or None (answered or pending)."""
        decision = self.gate.feed(data, self._clock())
        if isinstance(decision, Answer):
            self.stop()
            self._summary.note("answered as the decoy")
            self._transport.write(decision.response)
            self._transport.close()
            return None
        if isinstance(decision, Admit):
            self.stop()
            self._summary.note("admitted")
            return decision
        return None

    def hung_up(self) -> None:
        """The peer closed before a decision."""
        if self.open:
            self._summary.note("closed before a request")
        self.stop()

    def stop(self) -> None:
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardedConnection(DirectMessages, ServerConnection):
    """A websockets ServerConnection that sees only what the gate admits."""

    settings: ServerSettings  # set on the subclass made by serve_exit
    summary: Summary  # likewise, one per server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._screen: _Screen | None = None
        self._answered = False
        self.token: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        self._screen = _Screen(self.settings, transport, self.summary)

    def data_received(self, data: bytes) -> None:
        screen = self._screen
        if screen is None:
            super().data_received(data)
            return
        if not screen.open:
            return  # answered by the decoy; discard the rest, as it does
        admit = screen.feed(data)
        if admit is not None:
            self._screen = None
            self.token = admit.token
            super().data_received(admit.data)

    def eof_received(self) -> None:
        if self._screen is not None:
            self._screen.hung_up()
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._screen is not None:
            self._screen.stop()
        super().connection_lost(exc)


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Browsers require the server to echo one offered subprotocol; the gate
    # has already verified (and spent) this token.
    token = getattr(connection, "token", None)
    if token is not None and token in offered:
        return Subprotocol(token)
    return None


def _browser_like_101(
    server_name: str,
) -> Callable[[ServerConnection, Request, Response], Response]:
    def process_response(
        connection: ServerConnection, request: Request, response: Response
    ) -> Response:
        if response.status_code != 101:
            # Cannot happen after the gate admitted a well-formed upgrade;
            # never let the library's own error page out.
            connection.transport.abort()
            return response
        # The header order of nginx proxying a WebSocket upgrade.
        headers = Headers()
        headers["Server"] = server_name
        headers["Date"] = response.headers["Date"]
        headers["Connection"] = "upgrade"
        headers["Upgrade"] = "websocket"
        headers["Sec-WebSocket-Accept"] = response.headers["Sec-WebSocket-Accept"]
        if "Sec-WebSocket-Protocol" in response.headers:
            headers["Sec-WebSocket-Protocol"] = response.headers["Sec-WebSocket-Protocol"]
        return Response(101, "Switching Protocols", headers)

    return process_response


async def serve_exit(
    handler: Callable[[ServerConnection], Awaitable[None]],
    settings: ServerSettings,
    *,
    host: str,
    port: int,
    ssl: ssl_module.SSLContext | None = None,
    max_size: int = MAX_MESSAGE_BYTES,
    ping_interval: float | None = SERVER_PING_INTERVAL_S,
    direct: bool = False,
    backlog: int = DEFAULT_BACKLOG,
    summary: Summary | None = None,
) -> Server:
    """Listen for tunnel clients behind the decoy site.

    ``handler`` runs for each admitted WebSocket (``connection.token`` holds the
    token it used). Returns the started websockets Server; close it with
    ``close()`` + ``await wait_closed()``. With ``direct`` the connections deliver
    messages synchronously (``transport.direct``), not via ``recv()``. ``summary``
    counts how connections were screened (a new one per server by default).
    """
    connection_class = type(
        "ExitConnection",
        (GuardedConnection,),
        {
            "settings": settings,
            "direct_messages": direct,
            "summary": summary or screening_summary(),
        },
    )
    return await serve(
        handler,
        host,
        port,
        ssl=ssl,
        compression=None,
        select_subprotocol=_select_subprotocol,
        process_response=_browser_like_101(settings.site.server),
        server_header=None,
        # The gate's timer closes slow heads first; this only bounds the rest
        # of the opening handshake.
        open_timeout=settings.header_timeout + 5.0,
        ping_interval=ping_interval,
        ping_timeout=SERVER_PING_TIMEOUT_S,
        close_timeout=CLOSE_TIMEOUT_S,
        max_size=max_size,
        max_queue=MAX_QUEUE_MESSAGES,
        write_limit=WRITE_LIMIT_BYTES,
        create_connection=connection_class,
        logger=_QuietPerConnection(logging.getLogger("websockets.server")),
        backlog=backlog,
    )


class DecoyProtocol(asyncio.Protocol):
    """A plain web server serving only the decoy site (no WebSocket at all)."""

    def __init__(self, settings: ServerSettings, summary: Summary) -> None:
        self._settings = settings
        self._summary = summary
        self._screen: _Screen | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._screen = _Screen(self._settings, transport, self._summary)

    def data_received(self, data: bytes) -> None:
        if self._screen is not None and self._screen.open:
            self._screen.feed(data)

    def eof_received(self) -> bool | None:
        if self._screen is not None and self._screen.open:
            self._screen.hung_up()
        return None  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._screen is not None:
            self._screen.stop()


async def serve_decoy(
    site: DecoySite,
    *,
    host: str,
    port: int,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    ssl: ssl_module.SSLContext | None = None,
    clock: Clock = time.time,
    backlog: int = DEFAULT_BACKLOG,
) -> asyncio.Server:
    """Serve only the decoy site: the reference a prober compares the exit with."""
    settings = ServerSettings(
        site, ws_path="", verifier=None, header_timeout=header_timeout, clock=clock
    )
    summary = screening_summary()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: DecoyProtocol(settings, summary), host, port, ssl=ssl, backlog=backlog
    )
