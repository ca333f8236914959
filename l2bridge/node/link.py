"""The tunnel link: WebSocket transport + handshake + Session, driven by asyncio.

Client: ``link = await connect(url, handshake, credential=..., node_id=...)``
mints a single-use token from the device's credential for that exit, opens the
browser-like WebSocket, sends the hello, takes the exit's answer, sends ClientFinish
(the only message naming the client, sealed), waits for the exit's admission record,
and returns a running Link.
Exit: ``await serve(on_link, settings, make_handshake, host=..., port=...)``
answers everything else with the decoy site (transport.server) and calls
``on_link(link)`` for each tunnel whose ClientFinish verified, after sending the
client a padding-only admission record; ``link.admission`` names the device whose
credential minted the token (the finish must come from that device).

The data path runs inside the event loop's callbacks, with no task switch per
record (each one cost a loop iteration per hop, which was most of the added
latency):

- send: ``send_now(frames)`` seals one record per batch and writes it to the
  socket at once. When it cannot (the socket's write buffer is over its limit,
  earlier batches are still queued, or the exit is still waiting for the
  client's ClientFinish) it returns False and the caller uses ``send_frames``,
  which queues the batch in a bounded queue that a writer task drains: a full
  queue blocks the sender, so a slow peer slows its sender and memory does not
  grow.
- receive: each message goes through ``session.receive`` inside the socket's
  ``data_received`` (transport.direct); the frames go to the sink set with
  ``deliver_to`` or else to a bounded inbound queue read by ``recv_frames``
  (a full queue pauses reading the socket).

A record is always written in the same step that sealed it, so records leave
in counter order, which the ordered session requires; control records (rekey
init/reply, close notice) are written the moment they are sealed. Rekeys are
driven from outside: whoever owns the clock calls ``link.rekey(epoch)`` on
epoch boundaries (the client starts them; the exit follows in-band).

With a ``cover`` plan (l2bridge.node.cover) an idle link also sends padding-only records at
random intervals within a byte budget, written like any other record.

With a ``shaper`` / ``chatter`` filter (obfuscation.shaping / lan_chatter,
l2bridge.protocol.shaping) each batch goes through them instead: the records they say are
due are sealed and written at once, the rest by a timer at their deadline (at most 50 ms,
1 s for held LAN chatter), still one record per seal in counter order. Their queues are
bounded and they write what is due even while the socket's buffer is over its limit, so a
shaped link may buffer up to the shaper's queue bound more than an unshaped one.

Liveness, both ways and on both ends: a side that has written nothing for about
``keepalive_s`` (jittered) sends a small padding-only record, which looks like any other
record on the wire (browsers cannot send WebSocket pings, so the client never does), and a
side that has heard no record from its peer for ``liveness_s`` ends the link with reason
"peer silent" and drops the connection without a closing handshake (the path is dead, so
nothing would answer it). The client then reconnects or fails over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, cast

from websockets.asyncio.server import Server, ServerConnection

from l2bridge.constants import CLOSE_REVOKED as RECORD_REVOKED
from l2bridge.constants import (
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MAX_RECORD_SIZE,
    MAX_SERVER_HELLO_SIZE,
)
from l2bridge.errors import (
    CertificateRevoked,
    DeviceRevoked,
    HelloRefused,
    KeyExpired,
    PeerError,
    ProtocolViolation,
    StateError,
)
from l2bridge.logsummary import Summary
from l2bridge.node.audit import audit
from l2bridge.node.cover import CoverPlan, ShapingPlan
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.protocol.records import Buffer
from l2bridge.protocol.session import Closed, PeerAuthenticated, RekeyCompleted, Session
from l2bridge.protocol.shaping import ChatterFilter, Shaper
from l2bridge.transport.admission import Admission
from l2bridge.transport.caps import source_key
from l2bridge.transport.client import default_origin, open_transport
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.errors import TransportClosed, UpgradeRefused
from l2bridge.transport.impersonate import open_impersonated
from l2bridge.transport.server import ExitServer, ServerSettings, serve_exit
from l2bridge.transport.token import Credential, mint_token

log = logging.getLogger(__name__)

Clock = Callable[[], float]
FrameSink = Callable[[list[memoryview]], None]

# Batches waiting in each direction. With batches of up to ~200 KiB this bounds
# a link's buffered payload to a few MiB either way.
LINK_QUEUE_BATCHES = 16
HANDSHAKE_TIMEOUT_S = 15.0
CLOSE_WAIT_S = 5.0
# Exit: handshakes computed at the same time in worker threads (TPM quote + signatures).
HANDSHAKE_WORKERS = 4
CLOSE_INTERNAL_ERROR = 1011  # WebSocket close code; no reason text goes with it
# The one refusal a client is told (no reason text either): its certificate is revoked, so
# retrying cannot help. Only a holder of a live credential and of the certificate learns it.
# Sent after the authenticated CLOSE record that says the same; clients act on the record only.
CLOSE_REVOKED = 4403
# A batch sent within this long after the previous record waits one loop iteration so
# that what else arrives meanwhile joins its record: an idle link (a ping) sends at once,
# a busy one (1500-byte frames one by one) makes few large records, not one per frame.
COALESCE_S = 0.0005
COALESCE_FRAMES = 64
# ... but only a small batch: one of this many bytes or more (a GSO super-frame) is a
# large record already, and waiting would only cost the loop iteration.
COALESCE_BYTES = 16384
# Room for the WebSocket frame header on top of the largest record or handshake message.
# What an exit reads from whoever connects:
MAX_MESSAGE_SIZE = max(MAX_RECORD_SIZE, MAX_HANDSHAKE_MESSAGE_SIZE) + 64
# What a client reads from its exit (the exit's hello carries its attestation evidence):
MAX_EXIT_MESSAGE_SIZE = max(MAX_RECORD_SIZE, MAX_SERVER_HELLO_SIZE) + 64
# Liveness (see the module docstring); endpoints.keepalive_interval / liveness_timeout.
KEEPALIVE_S = 5.0
LIVENESS_S = 15.0
KEEPALIVE_JITTER = 0.5  # the idle time before a keepalive is uniform in [0.5, 1] x interval
KEEPALIVE_MAX_PADDING = 96  # a keepalive's padding is random in [0, this] bytes
LIVENESS_MIN_SLEEP_S = 0.01

_CLOSE = object()
# Tasks that live as long as a server (a reference keeps them from being collected).
server_tasks: set[asyncio.Future[None]] = set()


class ClientHandshakeLike(Protocol):
    """l2bridge.protocol.handshake.ClientHandshake, as the link uses it."""

    def hello(self) -> bytes: ...

    def receive(
        self, data: bytes, now: float, *, token: str | bytes | None = None
    ) -> tuple[Session, bytearray]: ...


class ServerHandshakeLike(Protocol):
    """l2bridge.protocol.handshake.ServerHandshake, as the link uses it."""

    def receive(
        self,
        data: bytes,
        now: float,
        *,
        token: str | bytes | None = None,
        expected_device: bytes | None = None,
    ) -> tuple[Session, bytes]: ...


class TunnelSocket(Protocol):
    """A websockets connection with transport.direct's mixin, as the link uses it."""

    write_paused: bool

    @property
    def is_open(self) -> bool: ...

    def write_binary(self, data: bytes | bytearray | memoryview) -> None: ...

    def deliver_to(self, sink: Callable[[Buffer | None], None]) -> None: ...

    async def next_message(self) -> Buffer: ...

    async def drain(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def close(self, code: int = 1000) -> None: ...

    @property
    def close_code(self) -> int | None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None: ...


class Link:
    """One running tunnel over one WebSocket. Create with connect() or serve()."""

    def __init__(
        self,
        ws: TunnelSocket,
        session: Session,
        *,
        is_client: bool,
        clock: Clock = time.time,
        queue_batches: int = LINK_QUEUE_BATCHES,
        cover: CoverPlan | None = None,
        keepalive_s: float | None = KEEPALIVE_S,
        liveness_s: float | None = LIVENESS_S,
        shaper: Shaper | None = None,
        chatter: ChatterFilter | None = None,
    ) -> None:
        """``keepalive_s`` / ``liveness_s``: None turns that side of liveness off.
        ``shaper`` / ``chatter``: shaping of what this side sends (l2bridge.protocol.shaping)."""
        self._shaper = shaper
        self._chatter = chatter
        self._shape_timer: asyncio.TimerHandle | None = None
        self._ws = ws
        self._keepalive_s = keepalive_s
        self._liveness_s = liveness_s
        self._last_heard = time.monotonic()  # the handshake was heard just now
        self.keepalives_sent = 0
        self._cover = cover
        self._ended = asyncio.Event()  # set once sending has stopped for good
        self.cover_sent = 0
        self.session = session
        self.is_client = is_client
        self.admission: Admission | None = None  # exit: what the gate admitted
        self._clock = clock
        self._queue_batches = queue_batches
        self._out: asyncio.Queue[object] = asyncio.Queue(queue_batches)
        self._in: deque[list[memoryview]] = deque()
        self._in_ready = asyncio.Event()
        self._in_paused = False
        self._sink: FrameSink | None = None
        # The exit may seal only after the client's ClientFinish verified.
        self._authenticated = asyncio.Event()
        if is_client or session.established:
            self._authenticated.set()
        self._writer_busy = False
        self._pending: list[Buffer] = []  # coalescing: sealed at the next loop iteration
        self._flush_scheduled = False
        self._last_write = 0.0
        self._waiting_senders = 0
        self._send_done = False
        self._recv_done = False
        self.rekeys_started = 0
        self.rekeys_skipped = 0
        self.rekeys_completed = 0
        self.close_reason: str | None = None
        self.ended_at: float | None = None  # time.monotonic() when the link ended
        self._close_code = 1000
        self.last_handshake = time.monotonic()  # the handshake, then each completed rekey
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._ws.deliver_to(self._on_message)
        self._tasks = [
            asyncio.create_task(self._writer(), name="link-writer"),
            asyncio.create_task(self._watch(), name="link-watch"),
        ]
        if self._cover is not None:
            self._tasks.append(asyncio.create_task(self._send_cover(self._cover), name="cover"))
        if self._keepalive_s is not None or self._liveness_s is not None:
            self._tasks.append(asyncio.create_task(self._liveness(), name="link-liveness"))

    @property
    def silent_for(self) -> float:
        """Seconds since the last record from the peer (or since the handshake)."""
        return time.monotonic() - self._last_heard

    @property
    def peer_authenticated(self) -> bool:
        return self._authenticated.is_set()

    # --- public API ----------------------------------------------------------

    def send_now(self, frames: Sequence[Buffer]) -> bool:
        """Seal ``frames`` and write them at once; False when they must wait.

        False means: queued batches go first, the socket's write buffer is full,
        or the exit still waits for ClientFinish; use ``send_frames`` then.
        Raises TransportClosed once the link has ended.
        """
        if self._send_done:
            raise TransportClosed("link closed")
        if not self.ready_to_send:
            return False
        if not frames:
            return True
        if self._pending or (time.monotonic() - self._last_write < COALESCE_S and _small(frames)):
            self._pending.extend(frames)
            if len(self._pending) >= COALESCE_FRAMES:
                self._flush_pending()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._scheduled_flush)
            return True
        self._seal_and_write(frames)
        return True

    @property
    def ready_to_send(self) -> bool:
        """Whether ``send_now`` would write right now."""
        return (
            not self._writer_busy
            and not self._send_done
            and self._out.empty()
            and not self._waiting_senders
            and not self._ws.write_paused
            and self._authenticated.is_set()
        )

    async def send_frames(self, frames: Sequence[Buffer]) -> None:
        """Send one batch, queueing it while it cannot go at once. Raises TransportClosed."""
        if frames and not self.send_now(frames):
            # Counted while waiting for room, so send_now cannot overtake this batch.
            self._waiting_senders += 1
            try:
                await self._out.put(list(frames))
            finally:
                self._waiting_senders -= 1
            if self._send_done:
                raise TransportClosed("link closed")

    def deliver_to(self, sink: FrameSink) -> None:
        """Hand every received batch to ``sink`` synchronously from now on.

        Batches already queued go first. ``recv_frames`` then only waits for the
        end of the link (it raises TransportClosed).
        """
        self._sink = sink
        while self._in:
            sink(self._in.popleft())
        self._resume_in()

    async def recv_frames(self) -> list[memoryview]:
        """Next received batch. Raises TransportClosed when the link has ended."""
        while not self._in:
            if self._recv_done:
                raise TransportClosed("link closed")
            self._in_ready.clear()
            await self._in_ready.wait()
        batch = self._in.popleft()
        if len(self._in) <= self._queue_batches // 2:
            self._resume_in()
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
        self._write(record)
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

    @property
    def remote_address(self) -> str | None:
        """The peer's "host:port", where the socket knows it."""
        address = getattr(self._ws, "remote_address", None)
        if not isinstance(address, tuple) or len(address) < 2:
            return None
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"

    async def close(self, *, revoked: bool = False) -> None:
        """Send what is queued, a close notice, close the WebSocket, wipe keys.

        ``revoked`` (exit): close with CLOSE_REVOKED, so the client stops retrying."""
        if revoked:
            self._close_code = CLOSE_REVOKED
            self.close_reason = self.close_reason or "revoked"
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

    # --- sending -----------------------------------------------------------------

    def _write(self, record: bytearray) -> None:
        if not self._ws.is_open:
            self._end("connection closed")
            raise TransportClosed("link closed")
        self._ws.write_binary(record)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        with contextlib.suppress(TransportClosed):  # the link ended meanwhile
            self._flush_pending()

    def _flush_pending(self) -> None:
        frames, self._pending = self._pending, []
        if frames and not self._send_done:
            self._seal_and_write(frames)

    def _seal_and_write(self, frames: Sequence[Buffer]) -> None:
        if self._shaper is not None or self._chatter is not None:
            self._shape(frames)
            return
        self._seal_frames(frames)

    def _seal_frames(self, frames: Sequence[Buffer], size: int = 0) -> None:
        try:
            if size:
                records = [self.session.seal_sized(frames, size, self._clock())]
            else:
                records = self.session.seal_batches(list(frames), self._clock())
        except (KeyExpired, StateError) as exc:
            # Never keep sending under a stale key: end the link instead.
            log.warning("link send stopped: %s", exc)
            self._end("key expired")
            raise TransportClosed("link closed") from None
        for record in records:
            self._write(record)
        self._last_write = time.monotonic()

    def _shape(self, frames: Sequence[Buffer], *, closing: bool = False) -> None:
        """Frames through the chatter filter and the shaper; sends what is due and sets a
        timer for the rest (``closing``: everything now)."""
        now = time.monotonic()
        if self._chatter is not None:
            frames = (
                self._chatter.release()
                if closing
                else (self._chatter.filter(frames, now) + self._chatter.due(now))
            )
        if self._shaper is None:
            if frames:
                self._seal_frames(frames)
        else:
            self._shaper.push(frames, now)
            for out in self._shaper.flush() if closing else self._shaper.due(now):
                self._seal_frames(out.frames, out.size)
        deadlines = []
        if self._shaper is not None and (d := self._shaper.deadline()) is not None:
            deadlines.append(d)
        if self._chatter is not None and (d := self._chatter.deadline()) is not None:
            deadlines.append(d)
        if self._shape_timer is not None:
            self._shape_timer.cancel()
            self._shape_timer = None
        if deadlines and not closing:
            loop = asyncio.get_running_loop()
            delay = max(0.0, min(deadlines) - now)
            self._shape_timer = loop.call_later(delay, self._shape_later)

    def _shape_later(self) -> None:
        self._shape_timer = None
        if not self._send_done:
            with contextlib.suppress(TransportClosed):  # the link ended meanwhile
                self._shape(())

    async def _writer(self) -> None:
        """Drains batches that could not be sent at once, in order."""
        try:
            while True:
                item = await self._out.get()
                self._writer_busy = True
                if self._send_done and item is not _CLOSE:
                    break  # ended from the receiving side; the batch is dropped
                if item is _CLOSE:
                    self._flush_pending()
                    if self._shaper is not None or self._chatter is not None:
                        self._shape((), closing=True)
                    parting, self.session.parting = self.session.parting, None
                    if parting is not None and self._ws.is_open:
                        self._write(parting)  # sealed when the session was refused
                    elif self.session.established and self._ws.is_open:
                        reason = RECORD_REVOKED if self._close_code == CLOSE_REVOKED else 0
                        self._write(self.session.close_notice(reason, now=self._clock()))
                    self.close_reason = self.close_reason or "closed"
                    break
                await self._authenticated.wait()
                if self._ws.write_paused:
                    await self._ws.drain()
                assert isinstance(item, list)
                self._flush_pending()  # batches taken by send_now went first
                self._seal_and_write(item)
                self._writer_busy = False
        except TransportClosed:
            self.close_reason = self.close_reason or "connection closed"
        finally:
            self._writer_busy = True
            self._send_done = True
            self._ended.set()
            # Release senders blocked on a full queue; their frames are dropped.
            while not self._out.empty():
                self._out.get_nowait()
            await self._ws.close(code=self._close_code)

    # --- receiving ---------------------------------------------------------------

    def _on_message(self, message: Buffer | None) -> None:
        """One WebSocket message, from inside the socket's data_received."""
        if self._recv_done:
            return
        if message is None:
            self._end("text message")
            return
        try:
            authentic = self.session.stats.records_received
            received = self.session.receive(message, self._clock())
            if self.session.stats.records_received != authentic:
                self._last_heard = time.monotonic()  # only authenticated records count
        except PeerError as exc:
            # Logged locally with its detail; the peer only sees the close (a revoked
            # device is told that much, in the CLOSE record the session sealed for it).
            if is_revoked(exc):
                self._close_code = CLOSE_REVOKED
                self._end("revoked")
                return
            log.warning("link ended by protocol error: %s (%s)", exc, exc.detail)
            self._end("protocol error")
            return
        except Exception as exc:
            # A local failure while answering the peer (a key past its limit when a rekey
            # init arrives, a failing authorizer): end this link only, never the socket's
            # callback; the peer sees a close and nothing else.
            log.error("link ended by local error: %s: %s", type(exc).__name__, exc)
            self._end("local error")
            return
        try:
            for reply in received.replies:
                self._write(reply)
        except TransportClosed:
            return
        ended: str | None = None
        for event in received.events:
            if isinstance(event, PeerAuthenticated):
                self._authenticated.set()
            elif isinstance(event, RekeyCompleted):
                self.rekeys_completed += 1
                self.last_handshake = time.monotonic()
            elif isinstance(event, Closed):
                ended = "revoked" if event.reason == RECORD_REVOKED else "closed by peer"
        if received.frames:
            self._frames_in(received.frames)
        if ended:
            self._end(ended)

    def _frames_in(self, frames: list[memoryview]) -> None:
        sink = self._sink
        if sink is None:
            self._in.append(frames)
            self._in_ready.set()
            if len(self._in) >= self._queue_batches and not self._in_paused:
                self._in_paused = True
                self._ws.pause_reading()
            return
        try:
            sink(frames)
        except Exception:
            # A sink's bug must not kill the socket's protocol callback silently.
            log.exception("frame sink failed; ending the link")
            self._end("local error")

    def _resume_in(self) -> None:
        if self._in_paused:
            self._in_paused = False
            self._ws.resume_reading()

    def _end(self, reason: str) -> None:
        """Stop both directions; the writer task closes the WebSocket."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        self._recv_done = True
        self._in_ready.set()
        self._send_done = True
        self._ended.set()
        self._writer_busy = True
        self._resume_in()
        with contextlib.suppress(asyncio.QueueFull):
            self._out.put_nowait(_CLOSE)

    # --- cover traffic ------------------------------------------------------------

    async def _send_cover(self, plan: CoverPlan) -> None:
        """Padding-only records at random intervals while no data goes out (l2bridge.node.cover)."""
        rng = random.SystemRandom()  # intervals and sizes an observer cannot predict
        tokens, last = plan.budget, time.monotonic()
        while not self._ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), plan.next_delay(rng))
                return
            now = time.monotonic()
            tokens = min(plan.budget, tokens + (now - last) * plan.budget)
            last = now
            # ready_to_send is False until the exit has the client's ClientFinish.
            shaping = self._shaper is not None and len(self._shaper) > 0
            if (
                now - self._last_write < plan.idle_s
                or self._pending
                or shaping
                or not self.ready_to_send
            ):
                continue  # data is flowing (or waiting): it is its own cover
            size = plan.size(rng)
            if size > tokens:
                continue
            try:
                record = self.session.seal_cover(size, self._clock())
                self._write(record)
            except (KeyExpired, StateError, TransportClosed):
                return  # the data path notices and ends the link
            tokens -= len(record)
            self.cover_sent += 1

    async def _liveness(self) -> None:
        """Keepalives when idle; ends the link when the peer has been silent too long.

        Wakes exactly when the next keepalive is due or the deadline would pass, so a
        silent peer is noticed ``liveness_s`` after the last record heard, not later.
        """
        rng = random.SystemRandom()
        keepalive, deadline = self._keepalive_s, self._liveness_s
        idle_needed = keepalive * rng.uniform(KEEPALIVE_JITTER, 1.0) if keepalive else 0.0
        deferred = time.monotonic()  # idle is counted from the later of this and a write
        while not self._ended.is_set():
            now = time.monotonic()
            wake = [self._last_heard + deadline] if deadline is not None else []
            if keepalive is not None:
                wake.append(max(self._last_write, deferred) + idle_needed)
            delay = max(min(wake) - now, LIVENESS_MIN_SLEEP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), delay)
                return
            now = time.monotonic()
            if deadline is not None and now - self._last_heard >= deadline:
                log.warning(
                    "peer silent for %.1f s (liveness deadline %g s): dropping the link",
                    now - self._last_heard,
                    deadline,
                )
                self._end("peer silent")
                self._ws.abort()
                return
            if keepalive is None or now - max(self._last_write, deferred) < idle_needed:
                continue
            if self._pending or not self.ready_to_send:
                deferred = now  # data is waiting to go: it is its own keepalive
                continue
            try:
                size = rng.randint(0, KEEPALIVE_MAX_PADDING)
                self._write(self.session.seal_cover(size, self._clock()))
            except (KeyExpired, StateError, TransportClosed):
                return  # the data path notices and ends the link
            self._last_write = deferred = now
            self.keepalives_sent += 1
            idle_needed = keepalive * rng.uniform(KEEPALIVE_JITTER, 1.0)

    async def _watch(self) -> None:
        """Notices the connection ending under us (peer gone, TCP reset)."""
        await self._ws.wait_closed()
        # Not "revoked" on the close code: only the authenticated CLOSE record says that.
        self._end("connection closed")


def _small(frames: Sequence[Buffer]) -> bool:
    total = 0
    for frame in frames:
        total += len(frame)
        if total >= COALESCE_BYTES:
            return False
    return True


def is_revoked(exc: BaseException) -> bool:
    """Whether the Authorizer refused because the device's certificate is revoked."""
    return isinstance(exc, CertificateRevoked)


def _address(connection: object) -> str | None:
    address = getattr(connection, "remote_address", None)
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else None


def _direct(ws: object) -> TunnelSocket:
    # open_transport / serve_exit with direct=True make DirectMessages connections.
    assert isinstance(ws, DirectMessages) and ws.direct_messages
    return cast(TunnelSocket, ws)


async def connect(
    url: str,
    handshake: ClientHandshakeLike,
    *,
    credential: Credential | None,
    node_id: bytes,
    token_window: int = 60,
    clock: Clock = time.time,
    queue_batches: int = LINK_QUEUE_BATCHES,
    cover: CoverPlan | None = None,
    keepalive_s: float | None = KEEPALIVE_S,
    liveness_s: float | None = LIVENESS_S,
    token: str | None = None,
    shaping: ShapingPlan | None = None,
    impersonate: tuple[str, Path | None] | None = None,
    **transport_kwargs: object,
) -> Link:
    """Open a tunnel to the exit ``node_id`` at ``url``.

    ``credential``: this device's credential for that exit (transport.token); its
    ``exit_node_id`` must be ``node_id``. ``token``: a token minted elsewhere (a relaying
    exit mints the next hop's from its own credential); else one is minted here.
    ``impersonate``: (curl_cffi target, CA file) to open the WebSocket through curl_cffi
    with a browser's TLS ClientHello (l2bridge.transport.impersonate) instead of websockets.
    Raises UpgradeRefused (the exit answered as a web server), TransportClosed,
    PeerError (the handshake failed: wrong exit, bad evidence), DeviceRevoked (the exit
    said this device is revoked), TransportClosed (also: the exit refused this device
    after its ClientFinish, or a replayed/over-quota hello), TimeoutError.
    """
    if token is None:
        if credential is None:
            raise ValueError("a credential or a token is needed")
        if credential.exit_node_id != node_id:
            raise ValueError("the credential is for another exit")
        token = mint_token(credential, clock(), window_s=token_window)
    try:
        if impersonate is not None:
            ws: TunnelSocket = await open_impersonated(
                url, token, target=impersonate[0], origin=default_origin(url),
                ca_file=impersonate[1],
            )  # fmt: skip
        else:
            ws = _direct(
                await open_transport(
                    url,
                    token,
                    max_size=MAX_EXIT_MESSAGE_SIZE,
                    direct=True,
                    **transport_kwargs,  # type: ignore[arg-type]
                )
            )
    except UpgradeRefused as exc:
        # The exit answers every refusal as a web server would; these are the causes.
        raise UpgradeRefused(
            f"{exc}: the exit did not recognise this client (check endpoints.credential_file "
            "holds a live credential from this exit, endpoints.exit_node_id and the URL "
            "path, and that this clock is within endpoints.token_window of the exit's)"
        ) from None
    try:
        if not ws.is_open:
            raise TransportClosed("closed")
        ws.write_binary(handshake.hello())
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            server_hello = bytes(await ws.next_message())
        session, finish = handshake.receive(server_hello, clock(), token=token)
        try:
            if not ws.is_open:
                raise TransportClosed("closed")
            ws.write_binary(finish)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await _admission(ws, session, clock)
        except BaseException:
            session.close()
            raise
    except TransportClosed:
        # A close code of CLOSE_REVOKED alone is not believed (anyone on a plain ws://
        # path can forge one): only the exit's authenticated CLOSE record says revoked.
        await ws.close()
        raise TransportClosed("exit closed the connection during the handshake") from None
    except BaseException:
        await ws.close()
        raise
    link = Link(
        ws, session, is_client=True, clock=clock, queue_batches=queue_batches, cover=cover,
        keepalive_s=keepalive_s, liveness_s=liveness_s,
        shaper=shaping.shaper(True) if shaping else None,
        chatter=shaping.chatter_filter(True) if shaping else None,
    )  # fmt: skip
    link.start()
    return link


async def _admission(ws: TunnelSocket, session: Session, clock: Clock) -> None:
    """Client: wait for the exit's first record, its padding-only admission record.

    The exit learns who the client is only from the ClientFinish, so its refusals (not
    authorised, revoked: a CLOSE record saying so) come after the finish; waiting for
    the admission keeps them failures of ``connect`` (the caller fails over, or stops
    retrying when revoked) rather than a link that dies at once. Records that do not
    open are dropped by the session and waited past; a CLOSE record saying revoked raises
    DeviceRevoked, another CLOSE record or a closed connection TransportClosed, a record
    with frames ProtocolViolation (the admission is always the exit's first record)."""
    while True:
        before = session.stats.records_received
        received = session.receive(await ws.next_message(), clock())
        if any(isinstance(e, Closed) and e.reason == RECORD_REVOKED for e in received.events):
            raise DeviceRevoked("the exit refused this device: its certificate is revoked")
        if session.closed or any(isinstance(e, Closed) for e in received.events):
            raise TransportClosed("closed")
        if received.frames:
            raise ProtocolViolation("frames before the exit's admission record")
        if session.stats.records_received > before:
            return


async def serve(
    on_link: Callable[[Link], Awaitable[None]],
    settings: ServerSettings,
    make_handshake: Callable[[], ServerHandshakeLike],
    *,
    host: str,
    port: int,
    clock: Clock = time.time,
    queue_batches: int = LINK_QUEUE_BATCHES,
    cover: CoverPlan | None = None,
    handshake_workers: int = HANDSHAKE_WORKERS,
    keepalive_s: float | None = KEEPALIVE_S,
    liveness_s: float | None = LIVENESS_S,
    hello_guard: HelloGuard | None = None,
    shaping: ShapingPlan | None = None,
    **transport_kwargs: object,
) -> ExitServer:
    """Serve tunnels behind the decoy site; ``on_link`` runs per tunnel.

    The link is closed when ``on_link`` returns. A client whose handshake fails
    is disconnected without any explanation.

    Per connection, the token the gate admitted (``connection.token``) is bound into the
    handshake, and the device it named (``connection.admission.device``, when the gate
    sets an admission) must be the one the ClientFinish proves. ``hello_guard`` (default:
    one with the protocol's defaults, shared by this server's connections) refuses
    duplicate hellos and attested hellos past their device's quota on the event loop,
    before any handshake work is queued.
    """
    guard = hello_guard if hello_guard is not None else HelloGuard()

    # Handshakes answered at once; more wait (within the handshake timeout) for a worker.
    # Those that ask for evidence have slots of their own: a slow or hung TPM (the
    # evidence provider has its own deadline) then never delays a plain handshake.
    plain_slots = asyncio.Semaphore(handshake_workers)
    attested_slots = asyncio.Semaphore(handshake_workers)
    # A pool of our own: the loop's default executor is shared and small (cores + 4).
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=2 * handshake_workers, thread_name_prefix="handshake"
    )
    handshake_failures = Summary(log, "tunnel handshakes failed")

    async def handler(connection: ServerConnection) -> None:
        ws = _direct(connection)
        handshake = make_handshake()
        token, device = _admitted(connection)
        session: Session | None = None
        try:
            # One deadline over reading the hello, waiting for a slot, answering it and
            # checking the ClientFinish.
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                hello = bytes(await ws.next_message())
                # Here, on the loop and before any work: a replayed hello, or an attested
                # one past its device's (else its source's) quota, is refused.
                quota_key = device if device is not None else _source(connection)
                parsed = guard.check(hello, quota_key=quota_key, now=clock())
                slots = attested_slots if parsed.nonce is not None else plain_slots
                async with slots:
                    # In a worker thread: the evidence step waits for a TPM quote (tens
                    # to hundreds of ms) and the signature costs too; every other
                    # tunnel's records keep flowing on the loop meanwhile. The slot is
                    # freed when the deadline passes even if the thread is still busy.
                    receive = functools.partial(
                        handshake.receive, token=token, expected_device=device
                    )
                    work = pool.submit(receive, hello, clock())
                    try:
                        answered, server_hello = await asyncio.wrap_future(work)
                    except asyncio.CancelledError:
                        work.add_done_callback(_wipe_late_session)  # past the deadline
                        raise
                session = answered
                if not ws.is_open:
                    raise TransportClosed("closed")
                ws.write_binary(server_hello)
                # The device says who it is only in its ClientFinish: nobody reaches
                # ``on_link`` before it verified (records that do not open are dropped and
                # counted by the session; anything else before the finish is fatal). On
                # the loop, as the link would do it: two signature checks, no TPM.
                while not answered.established:
                    answered.receive(await ws.next_message(), clock())
                # Admitted: tell the client (its connect waits for this), with a record
                # that looks like any keepalive.
                size = random.randint(0, KEEPALIVE_MAX_PADDING)
                ws.write_binary(answered.seal_cover(size, clock()))
        except HelloRefused as exc:
            # A replay or a quota: counted and summarised, never one log line each (a
            # flood would write the log), and no audit event (nobody was identified).
            handshake_failures.note(f"hello refused ({exc.detail})")
            log.debug("hello refused: %s from %s", exc.detail, _address(connection))
            return
        except (PeerError, TimeoutError, TransportClosed) as exc:
            # The operator's log says why (and who, as far as the token named the device;
            # the hello names no one); the peer learns nothing but a close, except a
            # revoked device, told so by the close code.
            handshake_failures.note(type(exc).__name__)
            who = (
                (session.peer_label if session is not None else None)
                or getattr(handshake, "peer_label", None)
                or "unknown device"
            )
            if isinstance(exc, PeerError):
                log.warning("tunnel refused: %s: %s (%s)", who, exc, exc.detail)
                audit("tunnel_refused", device=who, reason=f"{exc}: {exc.detail}",
                      address=_address(connection))  # fmt: skip
            else:
                log.debug("tunnel handshake failed: %s: %s", who, type(exc).__name__)
            if session is not None:
                if session.parting is not None and ws.is_open:
                    ws.write_binary(session.parting)  # revoked: the reason, authenticated
                session.close()
            if is_revoked(exc):
                await connection.close(code=CLOSE_REVOKED)
            return
        except Exception as exc:
            # Ours, not the peer's (oversized evidence, a TPM error): logged here, the
            # client only sees the connection close with "internal error" and no text.
            log.error("tunnel handshake failed locally: %s: %s", type(exc).__name__, exc)
            if session is not None:
                session.close()
            await connection.close(code=CLOSE_INTERNAL_ERROR)
            return
        assert session is not None and session.established
        link = Link(
            ws, session, is_client=False, clock=clock, queue_batches=queue_batches,
            cover=cover, keepalive_s=keepalive_s, liveness_s=liveness_s,
            shaper=shaping.shaper(False) if shaping else None,
        )  # fmt: skip
        link.admission = getattr(connection, "admission", None)
        link.start()
        try:
            await on_link(link)
        except Exception:
            log.exception("tunnel handler failed; closing the link")
        finally:
            await link.close()

    server = await serve_exit(
        handler,
        settings,
        host=host,
        port=port,
        max_size=MAX_MESSAGE_SIZE,
        direct=True,
        **transport_kwargs,  # type: ignore[arg-type]
    )
    server_tasks.add(asyncio.ensure_future(_release_pool(server, pool)))
    return server


async def _release_pool(server: Server, pool: concurrent.futures.Executor) -> None:
    """Free the handshake threads once the server has closed (never waits for them)."""
    try:
        await server.wait_closed()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _wipe_late_session(work: concurrent.futures.Future[tuple[Session, bytes]]) -> None:
    """A handshake answered after its deadline: nobody will use its keys."""
    if not work.cancelled() and work.exception() is None:
        work.result()[0].close()


def _admitted(connection: object) -> tuple[str | None, bytes | None]:
    """The token the gate admitted this connection with, and the device it named (if the
    gate knows devices: ``connection.admission.device``)."""
    token = getattr(connection, "token", None)
    admission = getattr(connection, "admission", None)
    device = getattr(admission, "device", None)
    return (
        token if isinstance(token, str) else None,
        bytes(device) if isinstance(device, bytes | bytearray) else None,
    )


def _source(connection: object) -> str:
    """The quota key of a connection whose token named no device: its source (an IPv4
    address or an IPv6 /64, as the connection caps count them)."""
    address = getattr(connection, "remote_address", None)
    return source_key(str(address[0])) if isinstance(address, tuple) and address else "unknown"
