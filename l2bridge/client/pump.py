"""The client's data path: one TAP (usually in a Linux bridge) <-> one link to an exit.

Per direction:

- TAP -> link: when the TAP is readable, read a batch until it is empty and hand each batch
  to the link (one record per batch). With a link that can send synchronously
  (``DirectLink``: ``l2bridge.node.link.Link``) this happens inside the reader callback, with no
  task switch per frame (that switch was most of the tunnel's added latency). When the link
  cannot take a batch at once (its socket is backed up), the reader callback is removed and
  a task hands the batches to ``link.send_frames``, which waits; only after that does reading
  resume. While we do not read, the kernel's TAP queue (``txqueuelen``) is the one bounded
  buffer and it drops when full: back-pressure, never memory growth.
- link -> TAP: each received batch is written straight to the TAP (by a direct link, from
  inside its socket callback).

When the link fails, the client reconnects with exponential backoff and jitter. A link
fails also when the exit falls silent: no record from it within the link's liveness
deadline (``endpoints.liveness_timeout``; both ends send keepalive records when idle, see
``l2bridge.node.link``), so a black-holed exit is left within that deadline. During the
outage the TAP keeps being drained and its frames are dropped and counted (``link_down``),
so nothing stale is delivered later and nothing accumulates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from hardware.tap import FrameDevice
from l2bridge.errors import DeviceRevoked
from l2bridge.node.metrics import Metrics

log = logging.getLogger(__name__)

Buffer: TypeAlias = bytes | bytearray | memoryview

BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 15.0
BACKOFF_JITTER = 0.2  # +-20 %, so many clients do not come back in lockstep
STABLE_AFTER_S = 10.0  # a connection that lived this long resets the backoff
# Largest batch handed to one record: the session's record holds a few super-frames.
BATCH_FRAMES = 64
BATCH_BYTES = 200 * 1024
# Batches one reader callback sends before it lets the loop run the other direction.
CALLBACK_BATCHES = 4


class FrameLink(Protocol):
    """What the client needs from a connected link (``l2bridge.node.link``)."""

    async def send_frames(self, frames: Sequence[Buffer]) -> None: ...

    async def recv_frames(self) -> Sequence[Buffer]: ...

    async def close(self) -> None: ...


@runtime_checkable
class DirectLink(FrameLink, Protocol):
    """A link that also sends and delivers synchronously (``l2bridge.node.link.Link``)."""

    def send_now(self, frames: Sequence[Buffer]) -> bool: ...

    def deliver_to(self, sink: Callable[[list[memoryview]], None]) -> None: ...


Connect: TypeAlias = Callable[[], Awaitable[FrameLink]]


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter; ``reset`` after a connection that worked."""

    initial: float = BACKOFF_INITIAL_S
    maximum: float = BACKOFF_MAX_S
    jitter: float = BACKOFF_JITTER
    _next: float = 0.0

    def next_delay(self) -> float:
        base = self._next or self.initial
        self._next = min(self.maximum, base * 2)
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = 0.0


class Client:
    """Bridges ``tap`` to an exit through links made by ``connect`` until ``stop`` is set."""

    def __init__(
        self,
        tap: FrameDevice,
        connect: Connect,
        metrics: Metrics,
        *,
        backoff: Backoff | None = None,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.tap = tap
        self._connect = connect
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self._batch_bytes = batch_bytes
        self._readable = asyncio.Event()
        self._link: FrameLink | None = None
        # Set while the reader callback sends straight to a direct link.
        self._direct: DirectLink | None = None
        self._held: list[bytes] | None = None  # read, but the link could not take it yet
        self.connections = 0  # successful connects, for status and tests
        self.connected = asyncio.Event()
        tap.stats.drops = metrics.counters.drops  # one drop counter per node
        metrics.watch_tap(tap.stats)
        self.metrics.set_gauge("connected", lambda: 1.0 if self._link is not None else 0.0)
        self.metrics.set_gauge("connections", lambda: float(self.connections))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tap.fileno(), self._on_readable)
        try:
            await self._connect_loop(stop)
        finally:
            loop.remove_reader(self.tap.fileno())

    async def _connect_loop(self, stop: asyncio.Event) -> None:
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    link = await _first(self._connect(), stopping)
                except (asyncio.CancelledError, DeviceRevoked):
                    raise  # revoked: no retry can help
                except Exception as exc:  # any failure to connect is retried
                    link = None
                    log.warning("connect failed: %s", _why(exc))
                if link is None:
                    if stop.is_set():
                        return
                    await _sleep_or_stop(self.backoff.next_delay(), stop)
                    continue
                self.connections += 1
                started = time.monotonic()
                await self._serve(link, stopping)
                if getattr(link, "close_reason", None) == "revoked":
                    # The exit ended the tunnel because this device was revoked. A new
                    # connection would only be answered as a web server (the gate refuses
                    # a revoked device's credential like a stranger's), so stop here.
                    raise DeviceRevoked(
                        "the exit ended the tunnel: this device's certificate is revoked"
                    )
                if time.monotonic() - started >= STABLE_AFTER_S:
                    # A working link was lost (its exit died, say): come back soon, at a
                    # random point of the first backoff step, so that all the exit's
                    # clients do not dial the next exit in the same instant.
                    self.backoff.reset()
                    delay = random.uniform(0.0, self.backoff.initial)
                else:
                    # An exit that accepts and then fails at once must not be hammered.
                    delay = self.backoff.next_delay()
                if not stop.is_set():
                    await _sleep_or_stop(delay, stop)
        finally:
            stopping.cancel()

    async def _serve(self, link: FrameLink, stopping: asyncio.Future[Any]) -> None:
        self._link = link
        self._direct = link if isinstance(link, DirectLink) else None
        self.connected.set()
        log.info("connected (connection %d)", self.connections)
        up = asyncio.ensure_future(self._tap_to_link(link))
        down = asyncio.ensure_future(self._link_to_tap(link))
        try:
            done, _ = await asyncio.wait({up, down, stopping}, return_when=asyncio.FIRST_COMPLETED)
            reason = getattr(link, "close_reason", None)
            for task in done:
                if task is not stopping and task.exception() is not None:
                    log.warning("link lost (%s): %s", reason or "?", _why(task.exception()))
        finally:
            self._link = None
            self._direct = None
            self._held = None
            # Reading may have been paused for back-pressure; while down it drops.
            asyncio.get_running_loop().add_reader(self.tap.fileno(), self._on_readable)
            self.connected.clear()
            for task in (up, down):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(), 5.0)

    def _on_readable(self) -> None:
        """The TAP's reader callback: send straight to a direct link, else wake a task."""
        counters = self.metrics.counters
        if self._link is None:
            # Frames read while no link is up are dropped and counted, never queued.
            while frames := self.tap.read_batch():
                counters.drop("link_down", len(frames))
            return
        link = self._direct
        if link is None:
            # The task reads; until it has caught up the loop must not call us again
            # (the TAP stays readable, and the callback would spin).
            asyncio.get_running_loop().remove_reader(self.tap.fileno())
            self._readable.set()
            return
        for _ in range(CALLBACK_BATCHES):  # the loop calls again while the TAP is readable
            frames = self.tap.read_batch(BATCH_FRAMES, self._batch_bytes)
            if not frames:
                return
            try:
                sent = link.send_now(frames)
            except Exception:  # the link ended: the tasks notice and reconnect
                counters.drop("link_down", len(frames))
                self._direct = None
                self._readable.set()
                return
            if not sent:
                # Back-pressure: stop reading until the task has handed these over.
                self._held = frames
                self._direct = None
                asyncio.get_running_loop().remove_reader(self.tap.fileno())
                self._readable.set()
                return
            counters.frames_out += len(frames)
            counters.bytes_out += sum(map(len, frames))
            if len(frames) < BATCH_FRAMES:
                # The read stopped at an empty device (or the byte limit, and then the
                # loop calls us again): no extra read just to hear EAGAIN.
                return

    async def _tap_to_link(self, link: FrameLink) -> None:
        counters = self.metrics.counters
        while True:
            await self._readable.wait()
            self._readable.clear()
            held, self._held = self._held, None
            while True:
                frames = held or self.tap.read_batch(BATCH_FRAMES, self._batch_bytes)
                held = None
                if not frames:
                    break
                await link.send_frames(frames)
                counters.frames_out += len(frames)
                counters.bytes_out += sum(map(len, frames))
            # Caught up: read in the callback again (sending directly if the link can).
            if isinstance(link, DirectLink):
                self._direct = link
            asyncio.get_running_loop().add_reader(self.tap.fileno(), self._on_readable)

    async def _link_to_tap(self, link: FrameLink) -> None:
        if isinstance(link, DirectLink):
            link.deliver_to(self._to_tap)
        while True:
            self._to_tap(await link.recv_frames())

    def _to_tap(self, frames: Sequence[Buffer]) -> None:
        if not frames:
            return
        counters = self.metrics.counters
        counters.frames_in += len(frames)
        counters.bytes_in += sum(map(len, frames))
        self.tap.write_batch(frames)  # refusals are counted by reason by the TAP


async def _first(work: Awaitable[FrameLink], stopping: asyncio.Future[Any]) -> FrameLink | None:
    task = asyncio.ensure_future(work)
    waiting: set[asyncio.Future[Any]] = {task, stopping}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _sleep_or_stop(delay: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


def _why(exc: BaseException | None) -> str:
    # Exception text from our own stack only; nothing from here goes to a peer.
    return f"{type(exc).__name__}: {exc}" if exc is not None else "closed"
