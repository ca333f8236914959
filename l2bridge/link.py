"""The tunnel link: WebSocket transport + handshake + Session, driven by asyncio.

Client: ``link = await connect(url, handshake, access_key=..., node_id=...)``
mints a single-use token, opens the browser-like WebSocket, sends the hello,
takes the exit's answer, sends ClientFinish, and returns a running Link.
Exit: ``await serve(on_link, settings, make_handshake, host=..., port=...)``
answers everything else with the decoy site (transport.server) and calls
``on_link(link)`` for each authorised tunnel.

A Link runs one task per direction:
- writer: takes a batch from a bounded queue, seals it (one record per batch,
  split only when a batch is larger than a record holds), sends each record as
  one binary message. Control records (rekey init/reply) jump the data queue.
  A full queue blocks ``send_frames``: a slow peer slows its sender, memory
  does not grow.
- reader: each message -> ``session.receive`` -> frames to a bounded inbound
  queue (a full queue stops reading; websockets then pauses the socket), and
  replies to the writer.

Sealing and sending happen in the writer with no await in between, so records
leave in counter order, which the ordered session requires. Rekeys are driven
from outside: whoever owns the clock calls ``link.rekey(epoch)`` on epoch
boundaries (the client starts them; the exit follows in-band).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed

from l2bridge.constants import MAX_RECORD_SIZE
from l2bridge.errors import KeyExpired, PeerError, StateError
from l2bridge.records import Buffer
from l2bridge.session import Closed, PeerAuthenticated, RekeyCompleted, Session
from l2bridge.transport.client import open_transport
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings, serve_exit
from l2bridge.transport.token import AccessKey, mint_token

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Batches waiting in each direction. With batches of up to ~200 KiB this bounds
# a link's buffered payload to a few MiB either way.
LINK_QUEUE_BATCHES = 16
HANDSHAKE_TIMEOUT_S = 15.0
CLOSE_WAIT_S = 5.0
# Room for the WebSocket frame header on top of the largest record.
MAX_MESSAGE_SIZE = MAX_RECORD_SIZE + 64

_CLOSE = object()
_WAKE = object()


class ClientHandshakeLike(Protocol):
    """l2bridge.handshake.ClientHandshake, as the link uses it."""

    def hello(self) -> bytes: ...

    def receive(self, data: bytes, now: float) -> tuple[Session, bytearray]: ...


class ServerHandshakeLike(Protocol):
    """l2bridge.handshake.ServerHandshake, as the link uses it."""

    def receive(self, data: bytes, now: float) -> tuple[Session, bytes]: ...


class Link:
    """One running tunnel over one WebSocket. Create with connect() or serve()."""

    def __init__(
        self,
        ws: Connection,
        session: Session,
        *,
        is_client: bool,
        clock: Clock = time.time,
        queue_batches: int = LINK_QUEUE_BATCHES,
    ) -> None:
        self._ws = ws
        self.session = session
        self.is_client = is_client
        self._clock = clock
        self._out: asyncio.Queue[object] = asyncio.Queue(queue_batches)
        self._in: asyncio.Queue[list[memoryview] | None] = asyncio.Queue(queue_batches)
        self._control: deque[bytearray] = deque()
        # The exit may seal only after the client's ClientFinish verified.
        self._authenticated = asyncio.Event()
        if is_client:
            self._authenticated.set()
        self._send_done = False
        self._recv_done = False
        self.rekeys_started = 0
        self.rekeys_skipped = 0
        self.rekeys_completed = 0
        self.close_reason: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._writer(), name="link-writer"),
            asyncio.create_task(self._reader(), name="link-reader"),
        ]

    @property
    def peer_authenticated(self) -> bool:
        return self._authenticated.is_set()

    # --- public API ----------------------------------------------------------

    async def send_frames(self, frames: Sequence[Buffer]) -> None:
        """Queue one batch (waits while the queue is full). Raises TransportClosed."""
        if self._send_done:
            raise TransportClosed("link closed")
        if frames:
            await self._out.put(list(frames))

    async def recv_frames(self) -> list[memoryview]:
        """Next received batch. Raises TransportClosed when the link has ended."""
        if self._recv_done and self._in.empty():
            raise TransportClosed("link closed")
        batch = await self._in.get()
        if batch is None:
            self._in.put_nowait(None)  # wake the next waiter too
            raise TransportClosed("link closed")
        return batch

    def rekey(self, epoch: int) -> bool:
        """Start an in-band rekey to ``epoch`` (client). Returns True when started.

        The exit never starts one (it answers the client's), so on the exit this
        returns False. A rekey still in flight or an epoch not ahead of the
        current one is skipped and counted, not raised: the caller is a clock.
        """
        if not self.is_client or self._send_done:
            return False
        try:
            record = self.session.start_rekey(epoch, self._clock())
        except (StateError, KeyExpired):
            self.rekeys_skipped += 1
            return False
        self.rekeys_started += 1
        self._push_control(record)
        return True

    def stats(self) -> dict[str, int]:
        out = self.session.stats.as_dict()
        out.update(
            rekeys_started=self.rekeys_started,
            rekeys_skipped=self.rekeys_skipped,
            rekeys_completed=self.rekeys_completed,
            epoch=self.session.epoch,
        )
        return out

    async def close(self) -> None:
        """Send what is queued, a close notice, close the WebSocket, wipe keys."""
        if not self._send_done:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await self._out.put(_CLOSE)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S * 2)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._ws.close()
        self.session.close()

    # --- tasks -----------------------------------------------------------------

    def _push_control(self, record: bytearray) -> None:
        self._control.append(record)
        # Wake the writer if it is waiting for data; if the queue is full it is
        # busy and looks at the control records before its next batch anyway.
        with contextlib.suppress(asyncio.QueueFull):
            self._out.put_nowait(_WAKE)

    async def _send_control(self) -> None:
        while self._control:
            await self._ws.send(self._control.popleft())

    async def _writer(self) -> None:
        try:
            while True:
                await self._send_control()
                item = await self._out.get()
                await self._send_control()
                if item is _WAKE:
                    continue
                if item is _CLOSE:
                    if self.session.established:
                        await self._ws.send(self.session.close_notice(now=self._clock()))
                    self.close_reason = self.close_reason or "closed"
                    break
                await self._authenticated.wait()
                assert isinstance(item, list)
                for record in self.session.seal_batches(item, self._clock()):
                    await self._ws.send(record)
        except ConnectionClosed:
            self.close_reason = self.close_reason or "connection closed"
        except (KeyExpired, StateError) as exc:
            # Never keep sending under a stale key: end the link instead.
            log.warning("link send stopped: %s", exc)
            self.close_reason = self.close_reason or "key expired"
        finally:
            self._send_done = True
            # Release senders blocked on a full queue; their frames are dropped.
            while not self._out.empty():
                self._out.get_nowait()
            await self._ws.close()

    async def _reader(self) -> None:
        try:
            async for message in self._ws:
                if isinstance(message, str):
                    self.close_reason = "text message"
                    break
                received = self.session.receive(message, self._clock())
                for reply in received.replies:
                    self._push_control(reply)
                ended = False
                for event in received.events:
                    if isinstance(event, PeerAuthenticated):
                        self._authenticated.set()
                    elif isinstance(event, RekeyCompleted):
                        self.rekeys_completed += 1
                    elif isinstance(event, Closed):
                        self.close_reason = "closed by peer"
                        ended = True
                if received.frames:
                    await self._in.put(received.frames)
                if ended:
                    break
        except ConnectionClosed:
            self.close_reason = self.close_reason or "connection closed"
        except PeerError as exc:
            # Logged locally with its detail; the peer only sees the close.
            log.warning("link ended by protocol error: %s (%s)", exc, exc.detail)
            self.close_reason = "protocol error"
        finally:
            self._recv_done = True
            if self._in.empty():
                self._in.put_nowait(None)
            # Stop the writer too: nothing more can be acknowledged.
            self._send_done = True
            with contextlib.suppress(asyncio.QueueFull):
                self._out.put_nowait(_CLOSE)
            await self._ws.close()


async def _recv_binary(ws: Connection) -> bytes:
    message = await ws.recv()
    if isinstance(message, str):
        raise TransportClosed("unexpected text message")
    return message


async def connect(
    url: str,
    handshake: ClientHandshakeLike,
    *,
    access_key: AccessKey,
    node_id: bytes,
    token_window: int = 60,
    clock: Clock = time.time,
    queue_batches: int = LINK_QUEUE_BATCHES,
    **transport_kwargs: object,
) -> Link:
    """Open a tunnel to the exit ``node_id`` at ``url``.

    Raises UpgradeRefused (the exit answered as a web server), TransportClosed,
    PeerError (the handshake failed: wrong exit, bad evidence), TimeoutError.
    """
    token = mint_token(access_key, node_id, clock(), window_s=token_window)
    ws = await open_transport(url, token, max_size=MAX_MESSAGE_SIZE, **transport_kwargs)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            await ws.send(bytes(handshake.hello()))
            server_hello = await _recv_binary(ws)
        session, finish = handshake.receive(server_hello, clock())
        await ws.send(bytes(finish))
    except ConnectionClosed:
        await ws.close()
        raise TransportClosed("exit closed the connection during the handshake") from None
    except BaseException:
        await ws.close()
        raise
    link = Link(ws, session, is_client=True, clock=clock, queue_batches=queue_batches)
    link.start()
    return link


async def serve(
    on_link: Callable[[Link], Awaitable[None]],
    settings: ServerSettings,
    make_handshake: Callable[[], ServerHandshakeLike],
    *,
    host: str,
    port: int,
    clock: Clock = time.time,
    queue_batches: int = LINK_QUEUE_BATCHES,
    **transport_kwargs: object,
) -> Server:
    """Serve tunnels behind the decoy site; ``on_link`` runs per tunnel.

    The link is closed when ``on_link`` returns. A client whose handshake fails
    is disconnected without any explanation.
    """

    async def handler(ws: ServerConnection) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                hello = await _recv_binary(ws)
            session, server_hello = make_handshake().receive(hello, clock())
            await ws.send(bytes(server_hello))
        except (PeerError, TimeoutError, ConnectionClosed, TransportClosed) as exc:
            log.info("tunnel handshake failed: %s", type(exc).__name__)
            return
        link = Link(ws, session, is_client=False, clock=clock, queue_batches=queue_batches)
        link.start()
        try:
            await on_link(link)
        finally:
            await link.close()

    return await serve_exit(
        handler,
        settings,
        host=host,
        port=port,
        max_size=MAX_MESSAGE_SIZE,
        **transport_kwargs,  # type: ignore[arg-type]
    )
