"""The exit's front door (asyncio): caps, TLS, the gate, then a WebSocket, the
decoy web server, or the operator's real web server.

Every accepted TCP connection is a ``GuardedConnection`` (a websockets
ServerConnection) that goes through these steps:

1. caps (transport.caps): over the total or per-source cap it is closed unread;
2. TLS, when configured, done here with ``loop.start_tls`` so the handshake
   timeout is the header timeout (nginx gives a TLS handshake
   ``client_header_timeout``), not the WebSocket open timeout;
3. the gate (transport.gate) reads the first request head, under the header
   timeout (closed silently when it runs out, as nginx does);
4. an authorised upgrade goes to the websockets library unchanged; anything
   else is, for the rest of the connection's life, either spliced to
   ``fallback`` (transport.fallback) with the bytes already read, or served by
   the built-in decoy (transport.decoy: keep-alive, pipelining, nginx's timers,
   writes paced by the socket so a slow reader gets the whole file).

The websockets library never writes a byte of its own to a refused peer.

Strangers can open connections at line rate, so nothing is logged per connection
above DEBUG (the library's own per-connection INFO lines are demoted too); a
``Summary`` line per minute at INFO counts how connections were screened. The
listen backlog is sized for floods and reconnect storms (``DEFAULT_BACKLOG``; the
kernel caps it at net.core.somaxconn).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from l2bridge.logsummary import Summary
from l2bridge.transport.admission import Admission, TokenVerifier
from l2bridge.transport.caps import ConnectionCaps, source_key
from l2bridge.transport.constants import (
    CLOSE_TIMEOUT_S,
    DECOY_WRITE_CHUNK,
    DEFAULT_BACKLOG,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEPALIVE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_SEND_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    MAX_QUEUE_MESSAGES,
    SERVER_PING_INTERVAL_S,
    SERVER_PING_TIMEOUT_S,
    TLS_SHUTDOWN_TIMEOUT_S,
    WRITE_LIMIT_BYTES,
)
from l2bridge.transport.decoy import Closing, DecoyConnection, DecoySite, DecoyTimeouts
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.fallback import Splice
from l2bridge.transport.gate import Admit, Gate, Refuse

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")
_FLUSH_POLL_S = 0.05  # how often a closing connection checks its buffers


class _QuietPerConnection(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The library's logger with its per-connection INFO lines ("connection closed")
    demoted to DEBUG; warnings and errors pass unchanged."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)  # type: ignore[arg-type]


def screening_summary(total: Counter[str] | None = None) -> Summary:
    """How connections were screened; ``total`` (if given) is the tally it counts into."""
    return Summary(log, "connections screened", total=total)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    site: DecoySite
    ws_path: str
    verifier: TokenVerifier | None
    # nginx's client_header_timeout; also the TLS handshake timeout.
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    clock: Clock = time.time
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    send_timeout: float = DEFAULT_SEND_TIMEOUT_S
    fallback: tuple[str, int] | None = None  # the operator's real web server
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    tls: ssl_module.SSLContext | None = field(default=None, compare=False)

    def decoy_timeouts(self) -> DecoyTimeouts:
        return DecoyTimeouts(
            header=self.header_timeout, keepalive=self.keepalive_timeout, send=self.send_timeout
        )


class _Mode(enum.Enum):
    OPENING = "opening"  # caps checked, TLS handshake running
    SCREENING = "screening"  # the gate reads the first head
    WEBSOCKET = "websocket"
    DECOY = "decoy"
    FALLBACK = "fallback"
    CLOSED = "closed"


class FrontDoor:
    """What one listening exit shares between its connections: caps and the live set."""

    def __init__(self, settings: ServerSettings, summary: Summary | None = None) -> None:
        self.settings = settings
        self.summary = summary or screening_summary()  # how connections were screened
        self.caps = ConnectionCaps(settings.max_connections, settings.max_connections_per_source)
        self.live: set[GuardedConnection] = set()

    def close_all(self) -> None:
        """The exit is stopping: drop every connection not (yet) a tunnel."""
        for connection in list(self.live):
            connection.drop()


def close_when_flushed(
    transport: asyncio.Transport, layers: Sequence[asyncio.Transport], stall_s: float
) -> None:
    """Close ``transport`` once every byte written to it has reached the kernel.

    asyncio's TLS close gives up after its shutdown timeout and drops what is still
    buffered, which would cut the tail of an answer to a slow reader; nginx instead keeps
    sending until ``send_timeout`` passes without progress. So the close waits until the
    buffers of every layer (``layers``: the TLS transport and the TCP one under it) are
    empty, and aborts only when they stop shrinking for ``stall_s``.
    """
    loop = asyncio.get_running_loop()
    last = [sum(t.get_write_buffer_size() for t in layers), loop.time()]

    def check() -> None:
        if transport.is_closing():
            return
        size = sum(t.get_write_buffer_size() for t in layers if not t.is_closing())
        if size == 0:
            transport.close()
            return
        now = loop.time()
        if size < last[0]:
            last[0], last[1] = size, now
        elif now - last[1] >= stall_s:
            transport.abort()  # the reader stopped reading: nginx's send_timeout
            return
        loop.call_later(_FLUSH_POLL_S, check)

    check()


class _DecoyDriver:
    """Runs a DecoyConnection on a transport: writes paced by back-pressure, timers."""

    def __init__(
        self,
        conn: DecoyConnection,
        transport: asyncio.Transport,
        clock: Clock,
        close: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._transport = transport
        self._clock = clock
        self._close = close
        self._paused_writing = False
        self._paused_reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._done = False
        self._closing = False

    def data(self, data: bytes) -> None:
        self._conn.receive(data, self._clock())
        self._pump()

    def eof(self) -> None:
        self._conn.receive_eof(self._clock())
        self._pump()

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._conn.write_blocked(self._clock())
        self._arm()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._conn.write_unblocked(self._clock())
        self._pump()

    def lost(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._conn.expire(self._clock())
        self._pump()

    def _pump(self) -> None:
        if self._done:
            return
        conn, transport = self._conn, self._transport
        drained = True
        while not self._paused_writing and not transport.is_closing():
            chunk = conn.data_to_send(DECOY_WRITE_CHUNK, self._clock())
            if not chunk:
                break
            transport.write(chunk)  # may call pause_writing at once
        else:
            drained = False
        closing = conn.closing
        if closing is Closing.ABORT:
            self._done = True
            transport.abort()
        elif closing is Closing.CLOSE and drained and not self._closing:
            self._closing = True
            self._close()
        elif closing is Closing.LINGER and drained and not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            elif not self._closing:
                self._closing = True
                self._close()  # TLS: close_notify and close
        wants = conn.wants_input()
        if wants == self._paused_reading and not transport.is_closing():
            self._paused_reading = not wants
            if wants:
                transport.resume_reading()
            else:
                transport.pause_reading()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._conn.deadline()
        if deadline is not None and not self._done:
            delay = max(0.0, deadline - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)


def start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coro`` up to its first suspension now and the rest as a task: the eager task
    start of Python 3.12 (``asyncio.eager_task_factory``), which 3.11 lacks."""
    try:
        first = coro.send(None)
    except StopIteration as done:
        return asyncio.ensure_future(_returning(done.value))
    except BaseException as exc:  # handed to the task, as a task would
        return asyncio.ensure_future(_raising(exc))
    return asyncio.ensure_future(_resume(coro, first))


async def _returning(value: T) -> T:
    return value


async def _raising(exc: BaseException) -> Any:
    raise exc


async def _resume(coro: Coroutine[Any, Any, T], waiting: Any) -> T:
    """Drive ``coro`` on from a suspension at ``waiting`` (what it awaits: a future, or None
    for a bare yield) as a task would: resume it once that is done, pass in cancellation."""
    while True:
        cancelled: asyncio.CancelledError | None = None
        if isinstance(waiting, asyncio.Future):
            waiting._asyncio_future_blocking = False  # taken, as Task.__step takes it
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])
        except asyncio.CancelledError as exc:
            cancelled = exc
            if isinstance(waiting, asyncio.Future):
                waiting.cancel()
        try:
            waiting = coro.send(None) if cancelled is None else coro.throw(cancelled)
        except StopIteration as done:
            return cast(T, done.value)


class GuardedConnection(DirectMessages, ServerConnection):
    """A websockets ServerConnection that sees only what the gate admits."""

    front: FrontDoor  # set on the subclass made by serve_exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode = _Mode.OPENING
        self._source: str | None = None  # set once a cap slot is held
        self._raw: asyncio.Transport | None = None
        self._gate: Gate | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._decoy: _DecoyDriver | None = None
        self._splice: Splice | None = None
        self._tls_task: asyncio.Task[None] | None = None
        # Decrypted bytes that beat start_tls's return (at most one read's worth).
        self._early_bytes = bytearray()
        self._early_eof = False
        self.token: str | None = None
        # The device the admitted token names (its handshake must prove to be it).
        self.admission: Admission | None = None
        # Told once when the connection is gone (a worker tells its supervisor: handoff).
        self.on_lost: Callable[[], None] | None = None

    # --- opening: caps, then TLS -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport; same interface).
        transport = cast(asyncio.Transport, transport)
        front = self.front
        self._raw = transport
        peer = transport.get_extra_info("peername")
        source = source_key(str(peer[0]) if isinstance(peer, tuple) else str(peer))
        if not front.caps.open(source):
            # Over a cap: closed unread, like a server out of worker_connections.
            front.summary.note("over a connection cap")
            self._mode = _Mode.CLOSED
            transport.abort()
            return
        self._source = source
        front.live.add(self)
        tls = front.settings.tls
        if tls is None:
            self._begin(transport)
            return
        transport.pause_reading()  # asyncio honours it here; uvloop does not (below)
        # start_tls puts its TLS protocol in place in its first step; that step must run
        # now, inside connection_made. As a plain task it ran a loop iteration later, and
        # uvloop starts reading the socket right after connection_made whatever
        # pause_reading asked: a ClientHello already there then reached this plain
        # protocol, was lost to TLS, and the handshake hung until the header timeout (the
        # client saw its opening time out; more often the busier the exit).
        self._tls_task = start_now(self._start_tls(transport, tls))

    async def _start_tls(self, raw: asyncio.Transport, context: ssl_module.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.front.settings.header_timeout
        try:
            secure = await loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl_module.SSLError):
            self._finish()  # asyncio closed the socket (failed or timed-out handshake)
            return
        if secure is None or self._mode is not _Mode.OPENING:
            self._finish()
            return
        self._begin(secure)

    def _begin(self, transport: asyncio.Transport) -> None:
        settings = self.front.settings
        super().connection_made(transport)  # starts the websockets handler task
        self._mode = _Mode.SCREENING
        self._gate = Gate(
            ws_path=settings.ws_path, verifier=settings.verifier, source=self._source or ""
        )
        self._started = settings.clock()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(settings.header_timeout, self._header_timeout)
        if self._early_bytes:
            early, self._early_bytes = bytes(self._early_bytes), bytearray()
            self.data_received(early)
        if self._early_eof and self._mode is not _Mode.CLOSED:
            self.eof_received()

    def _header_timeout(self) -> None:
        # nginx's client_header_timeout: close without an answer.
        self._timer = None
        if self._mode is _Mode.SCREENING:
            self.front.summary.note("header timeout")
            self.transport.close()

    # --- screening and hand-off ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode is _Mode.WEBSOCKET:
            super().data_received(data)
        elif mode is _Mode.DECOY:
            assert self._decoy is not None
            self._decoy.data(data)
        elif mode is _Mode.FALLBACK:
            assert self._splice is not None
            self._splice.client_data(data)
        elif mode is _Mode.OPENING:
            # The TLS layer hands over data as soon as the handshake is done, a loop
            # turn before start_tls returns the transport.
            self._early_bytes += data
        elif mode is _Mode.SCREENING:
            assert self._gate is not None
            decision = self._gate.feed(data, self.front.settings.clock())
            if isinstance(decision, Admit):
                self.front.summary.note("admitted")
                self._stop_timer()
                self._mode = _Mode.WEBSOCKET
                self.front.live.discard(self)
                self.token = decision.token
                self.admission = decision.admission
                super().data_received(decision.data)
            elif isinstance(decision, Refuse):
                self._stop_timer()
                self._refuse(decision.data)

    def _refuse(self, data: bytes) -> None:
        fallback = self.front.settings.fallback
        # Paced like nginx's socket buffer, not the tunnel's 1 MiB write limit.
        self.transport.set_write_buffer_limits(high=DECOY_WRITE_CHUNK)
        if fallback is None:
            self.front.summary.note("answered as the decoy")
            self._serve_decoy(data)
            return
        self.front.summary.note("spliced to the fallback")
        self._mode = _Mode.FALLBACK
        self._splice = Splice(
            self.transport, fallback, data, self._serve_decoy, close_client=self._close_flushed
        )
        self._splice.start()

    def _serve_decoy(self, data: bytes) -> None:
        settings = self.front.settings
        transport = self.transport
        local = transport.get_extra_info("sockname")
        host, port = (str(local[0]), int(local[1])) if isinstance(local, tuple) else ("", 80)
        conn = DecoyConnection(
            settings.site,
            settings.decoy_timeouts(),
            self._started,
            local_host=host,
            local_port=port,
            secure=settings.tls is not None,
        )
        self._mode = _Mode.DECOY
        self._splice = None
        self._decoy = _DecoyDriver(conn, transport, settings.clock, self._close_flushed)
        self._decoy.data(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio allows True
        mode = self._mode
        if mode is _Mode.OPENING:
            self._early_eof = True
            return None
        if mode is _Mode.WEBSOCKET:
            return super().eof_received()
        tls = self.front.settings.tls is not None
        if mode is _Mode.DECOY:
            assert self._decoy is not None
            self._decoy.eof()
            return None if tls else True  # half-open: the answer may still be going out
        if mode is _Mode.FALLBACK:
            assert self._splice is not None
            self._splice.client_eof()
            return None if tls else True
        if mode is _Mode.SCREENING:
            self.front.summary.note("closed before a request")
        self._stop_timer()  # gone before a whole request: close, as nginx does
        return None

    def pause_writing(self) -> None:
        if self._mode is _Mode.DECOY and self._decoy is not None:
            self._decoy.pause_writing()
        elif self._mode is _Mode.FALLBACK and self._splice is not None:
            self._splice.client_pause_writing()
        else:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._mode is _Mode.DECOY and self._decoy is not None:
            self._decoy.resume_writing()
        elif self._mode is _Mode.FALLBACK and self._splice is not None:
            self._splice.client_resume_writing()
        else:
            super().resume_writing()

    def _close_flushed(self) -> None:
        layers = [self.transport]
        if self._raw is not None and self._raw is not self.transport:
            layers.append(self._raw)
        close_when_flushed(self.transport, layers, self.front.settings.send_timeout)

    def drop(self) -> None:
        """Close at once (the exit is stopping)."""
        if self._mode is _Mode.OPENING and self._raw is not None:
            self._raw.abort()
        elif self._mode is not _Mode.WEBSOCKET and self._mode is not _Mode.CLOSED:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        began = self._mode not in (_Mode.OPENING, _Mode.CLOSED)
        self._stop_timer()
        if self._decoy is not None:
            self._decoy.lost()
        if self._splice is not None:
            self._splice.client_lost()
        self._finish()
        try:
            if began:
                super().connection_lost(exc)
        finally:
            if self.on_lost is not None:
                on_lost, self.on_lost = self.on_lost, None
                on_lost()

    def _finish(self) -> None:
        if self._mode is not _Mode.WEBSOCKET:
            self._mode = _Mode.CLOSED
        self.front.live.discard(self)
        if self._source is not None:
            self.front.caps.close(self._source)
            self._source = None

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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


class ExitServer(Server):
    """The websockets Server, whose ``close`` also drops connections that are not tunnels
    (a kept-alive decoy visitor would otherwise hold ``wait_closed`` for a minute), and
    which, made with ``serve_exit(listen=False)``, serves connections accepted elsewhere."""

    front: FrontDoor
    factory: Callable[[], ServerConnection] | None = None
    adopting = False  # takes connections through ``adopt`` (until closed)

    def is_serving(self) -> bool:
        # websockets refuses upgrades (503) once its server is not serving.
        return self.adopting or super().is_serving()

    async def adopt(self, sock: socket.socket, on_lost: Callable[[], None] | None = None) -> None:
        """Serve ``sock``, a TCP connection accepted by another process, exactly as one
        this server accepted (the front door first); closed at once if the server is not
        adopting (closed, or listening itself). ``on_lost`` runs once when it is gone,
        however it ended."""

        def lost() -> None:  # once: the connection's own end and a failed adoption
            nonlocal on_lost
            if on_lost is not None:
                tell, on_lost = on_lost, None
                tell()

        make = self.factory
        if not self.adopting or make is None:
            sock.close()
            lost()
            return

        def connection() -> ServerConnection:
            conn = make()
            if isinstance(conn, GuardedConnection):
                conn.on_lost = lost
            return conn

        try:
            await asyncio.get_running_loop().connect_accepted_socket(connection, sock)
        except OSError:
            sock.close()  # reset before it was served
            lost()

    def close(self, *args: Any, **kwargs: Any) -> None:
        self.adopting = False
        self.front.close_all()
        super().close(*args, **kwargs)


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
    listen: bool = True,
) -> ExitServer:
    """Listen for tunnel clients behind the decoy site (or the fallback web server).

    ``handler`` runs for each admitted WebSocket (``connection.token`` holds the
    token it used). ``ssl`` (or ``settings.tls``) turns on TLS. Returns the started
    server; close it with ``close()`` + ``await wait_closed()``. With ``direct`` the
    connections deliver messages synchronously (``transport.direct``), not via ``recv()``.
    ``summary`` counts how connections were screened (a new one per server by default).
    Without ``listen`` the server has no socket of its own: connections accepted elsewhere
    (a worker's, handed over by its supervisor: ``exitnode.handoff``) come in through
    ``ExitServer.adopt``, and ``host`` and ``port`` are not used.
    """
    if ssl is not None:
        settings = _with_tls(settings, ssl)
    front = FrontDoor(settings, summary)
    connection_class = type(
        "ExitConnection",
        (GuardedConnection,),
        {"front": front, "direct_messages": direct},
    )
    where: dict[str, Any] = {"host": host, "port": port}
    if not listen:  # a socket never bound nor listened on: asyncio's server needs one
        where = {"sock": socket.socket(socket.AF_INET, socket.SOCK_STREAM), "start_serving": False}
    server = await serve(
        handler,
        compression=None,
        select_subprotocol=_select_subprotocol,
        process_response=_browser_like_101(settings.site.server),
        server_header=None,
        # The gate's header timer bounds a head; once admitted the request is
        # already whole, and a refused connection lives on in the decoy or the
        # fallback: the library's own open timeout would cut those.
        open_timeout=None,
        ping_interval=ping_interval,
        ping_timeout=SERVER_PING_TIMEOUT_S,
        close_timeout=CLOSE_TIMEOUT_S,
        max_size=max_size,
        max_queue=MAX_QUEUE_MESSAGES,
        write_limit=WRITE_LIMIT_BYTES,
        create_connection=connection_class,
        logger=_QuietPerConnection(logging.getLogger("websockets.server")),
        backlog=backlog,
        **where,
    )
    # websockets builds its Server itself; this subclass adds to close() and adopts.
    server.__class__ = ExitServer
    assert isinstance(server, ExitServer)
    server.front = front
    if not listen:
        server.factory = _connection_factory(server)
        server.adopting = True
    return server


def _connection_factory(server: Server) -> Callable[[], ServerConnection]:
    """The function websockets' ``serve`` made to build each connection (the protocol
    factory it gives asyncio), taken from the server it returned: a connection made with
    it is the library's own, handshake, handler and bookkeeping included."""
    make = server.create_server
    code = getattr(make, "__code__", None)
    if code is not None and "protocol_factory" in code.co_freevars and make.__closure__:
        factory = make.__closure__[code.co_freevars.index("protocol_factory")].cell_contents
        if callable(factory):
            return cast(Callable[[], ServerConnection], factory)
    raise RuntimeError(
        "this websockets version builds its server differently: adopting connections "
        "(network.workers) needs websockets' serve() to keep its protocol_factory"
    )


def _with_tls(settings: ServerSettings, context: ssl_module.SSLContext) -> ServerSettings:
    return replace(settings, tls=context)
