"""The tunnel port of an exit with workers: the supervisor accepts, the least busy worker serves.

With ``SO_REUSEPORT`` on every worker's socket the kernel would place each connection by a
hash of its addresses: two clients land at one worker half the time, four all at one an
eighth of the time, and that worker then carries every tunnel on one core while the others
idle. An exit bridging a handful of LANs is exactly that case. So the supervisor holds the
only listening socket and hands every accepted connection, as a file descriptor over a
private Unix socket pair (``SCM_RIGHTS``), to the worker with the fewest open connections;
the worker serves it as if it had accepted it (``ExitServer.adopt``) and says, over the same
pair, when it is gone. Nothing of the connection is read before the hand-over: a prober
meets the same front door at any worker. Knowing every open connection, the supervisor also
holds ``endpoints.max_connections`` and ``max_connections_per_source`` for the whole exit
(over a cap a connection is closed unread, as a worker's front door would).

- ``Balance``: which worker gets the next connection (sans-I/O).
- ``Dispatcher``: the supervisor's accepting thread.
- ``Intake``: a worker's end, on its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from l2bridge.logsummary import Summary
from l2bridge.transport.caps import ConnectionCaps, source_key

log = logging.getLogger(__name__)

MAX_FDS = 8  # descriptors read per message (one is sent per message)
SELECT_S = 0.2  # how soon the accepting thread sees that it is to stop
OUT_OF_FILES_PAUSE_S = 0.1  # accept failed for want of descriptors: let some close first
HOLD_S = 5.0  # the longest connections wait for a worker that is (re)starting
_ID = struct.Struct("!Q")  # a handed connection's number, both ways
CLOSED_BATCH = 256  # close messages read per channel per round


class Balance:
    """Which ready worker takes the next connection: the fewest open connections, ties in
    turn. The dispatcher counts each connection from its hand-over until the worker says
    it is gone, so the count is exact."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.open = [0] * workers
        self._ready: set[int] = set()
        self._next = 0

    def ready(self, index: int) -> None:
        self._ready.add(index)

    def gone(self, index: int) -> None:
        """Worker ``index`` stopped (its connections went with it)."""
        self._ready.discard(index)
        self.open[index] = 0

    def is_ready(self, index: int) -> bool:
        return index in self._ready

    @property
    def any_ready(self) -> bool:
        return bool(self._ready)

    def order(self) -> list[int]:
        """Ready workers, the one to try first first."""
        n = self.workers
        return sorted(self._ready, key=lambda i: (self.open[i], (i - self._next) % n))

    def took(self, index: int) -> None:
        self.open[index] += 1
        self._next = (index + 1) % self.workers

    def closed(self, index: int) -> None:
        self.open[index] = max(0, self.open[index] - 1)


def listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host``:``port`` as asyncio's ``create_server`` makes them:
    one per address the name resolves to (all interfaces for ""), address reuse on, IPv6
    sockets IPv6-only. Raises OSError."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the worker's end) of a hand-over channel."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setblocking(False)
    return mine, theirs


class Dispatcher:
    """Accepts on ``listeners`` (a thread: ``run``) and hands each connection to a worker.

    A worker's channel is ``attach``-ed when it starts, but it gets connections only once
    ``ready`` (serving). While a worker is starting, or was ``lost`` and is to start again,
    connections wait in the listening socket's backlog, for at most ``hold_s`` from its
    start or loss: a worker that comes back gets its share of the clients that reconnect,
    instead of their all landing at the others and staying there. A worker whose channel is
    full (it stopped reading) or closed (it died) is passed over; with nowhere to go the
    connection is closed, as a server out of workers would. ``caps`` (if given) bound the
    open connections of the whole exit, in total and per source; ``summary`` counts those
    refused (as the front door counts its own), and its totals those closed unserved too."""

    def __init__(
        self,
        listeners: list[socket.socket],
        workers: int,
        *,
        caps: ConnectionCaps | None = None,
        summary: Summary | None = None,
        hold_s: float = HOLD_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listeners = listeners
        self.balance = Balance(workers)
        self.caps = caps
        self.summary = summary
        self.hold_s = hold_s
        self._monotonic = monotonic
        self._channels: dict[int, socket.socket] = {}
        self._starting: dict[int, float] = {}  # worker -> since when it is expected
        self._open: dict[int, tuple[int, str]] = {}  # connection -> (worker, source)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = Summary(
            log, "connections closed unserved (no worker could take them)",
            level=logging.WARNING, total=None if summary is None else summary.total,
        )  # fmt: skip

    def attach(self, index: int, channel: socket.socket) -> None:
        """Worker ``index`` is starting, with ``channel`` its end of the hand-over."""
        with self._lock:
            old = self._channels.pop(index, None)
            self._forget(index)
            self._channels[index] = channel
            self._starting.setdefault(index, self._monotonic())
        if old is not None:
            old.close()

    def ready(self, index: int) -> None:
        """Worker ``index`` serves: hand it connections."""
        with self._lock:
            if index in self._channels:
                self.balance.ready(index)
                self._starting.pop(index, None)

    def lost(self, index: int) -> None:
        """Worker ``index`` died (its connections with it); it is to start again."""
        with self._lock:
            channel = self._channels.pop(index, None)
            self._forget(index)
            self._starting[index] = self._monotonic()
        if channel is not None:
            channel.close()

    def _forget(self, index: int) -> None:
        """Worker ``index``'s connections are gone (lock held)."""
        self.balance.gone(index)
        for number, (worker, source) in list(self._open.items()):
            if worker == index:
                del self._open[number]
                if self.caps is not None:
                    self.caps.close(source)

    def is_ready(self, index: int) -> bool:
        with self._lock:
            return self.balance.is_ready(index)

    def open_connections(self) -> dict[int, int]:
        """Open connections by worker (after reading what the workers said)."""
        with self._lock:
            self._read_closed()
            return {i: self.balance.open[i] for i in sorted(self._channels)}

    def holding(self) -> bool:
        """Whether connections are to wait: no worker serves, or one is (re)starting and
        has been for less than ``hold_s``."""
        with self._lock:
            if not self.balance.any_ready:
                return True
            now = self._monotonic()
            return any(now - since < self.hold_s for since in self._starting.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="tunnel-accept", daemon=True)
        self._thread.start()

    @property
    def accepting(self) -> bool:
        """Whether the accepting thread runs (the exit's tunnel port is served)."""
        return self._thread is not None and self._thread.is_alive() and not self._closed.is_set()

    def run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self.listeners:
                selector.register(listener, selectors.EVENT_READ)
            while not self._closed.is_set():
                try:
                    self._round(selector)
                except Exception:  # a bug here must not leave the port unserved
                    log.exception("tunnel port: accepting failed; going on")
                    self._closed.wait(SELECT_S)

    def _round(self, selector: selectors.BaseSelector) -> None:
        with self._lock:
            self._read_closed()
        if self.holding():
            self._closed.wait(SELECT_S)
            return
        for key, _ in selector.select(SELECT_S):
            self._accept(key.fileobj)  # type: ignore[arg-type]

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.dropped.note("out of file descriptors")
                time.sleep(OUT_OF_FILES_PAUSE_S)
            return
        with conn:
            self.hand(conn, source_key(str(peer[0])) if isinstance(peer, tuple) else str(peer))

    def hand(self, conn: socket.socket, source: str = "") -> int | None:
        """Send ``conn`` (from ``source``, a ``source_key``) to the first worker that takes
        it; the caller closes its copy. The worker's index, or None: over a cap, or no
        worker could take it."""
        with self._lock:
            self._read_closed()
            if self.caps is not None and not self.caps.open(source):
                if self.summary is not None:
                    self.summary.note("over a connection cap")
                return None
            number = next(self._numbers)
            for index in self.balance.order():
                try:
                    socket.send_fds(
                        self._channels[index], [_ID.pack(number)], [conn.fileno()],
                        socket.MSG_DONTWAIT,
                    )  # fmt: skip
                except OSError:  # full (EAGAIN), or its process is gone (EPIPE)
                    continue
                self.balance.took(index)
                self._open[number] = (index, source)
                return index
            if self.caps is not None:
                self.caps.close(source)
        self.dropped.note("every worker busy or gone")
        return None

    def _read_closed(self) -> None:
        """Take in what the workers said of their connections' ends (lock held)."""
        for channel in self._channels.values():
            for _ in range(CLOSED_BATCH):
                try:
                    message = channel.recv(_ID.size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # its worker is gone: ``lost`` forgets its connections
                if len(message) != _ID.size:
                    break  # end of file (the worker is gone), or not ours
                held = self._open.pop(_ID.unpack(message)[0], None)
                if held is None:
                    continue
                worker, source = held
                self.balance.closed(worker)
                if self.caps is not None:
                    self.caps.close(source)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(SELECT_S * 5)
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for sock in (*self.listeners, *channels):
            sock.close()


Adopt = Callable[[socket.socket, Callable[[], None]], Coroutine[Any, Any, None]]


class Intake:
    """A worker's end of the channel: each connection the supervisor sends is ``adopt``-ed
    (``ExitServer.adopt``) on the running loop, and its end told back. ``on_gone`` runs
    once if the supervisor's end closes."""

    def __init__(
        self, channel: socket.socket, adopt: Adopt, on_gone: Callable[[], None] | None = None
    ) -> None:
        self.channel = channel
        self._adopt = adopt
        self._on_gone = on_gone
        self._tasks: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        self._loop.add_reader(self.channel.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.channel, _ID.size, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the supervisor's end is closed
                self.close()
                if self._on_gone is not None:
                    self._on_gone()
                return
            socks = []
            for fd in fds:
                try:
                    socks.append(socket.socket(fileno=fd))
                except OSError:
                    with contextlib.suppress(OSError):
                        socket.close(fd)
            if len(message) != _ID.size or len(socks) != 1:
                for sock in socks:  # not what a supervisor sends
                    sock.close()
                continue
            task = asyncio.ensure_future(self._adopt(socks[0], self._closed_by(message)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _closed_by(self, number: bytes) -> Callable[[], None]:
        def closed() -> None:
            with contextlib.suppress(OSError):  # the supervisor is gone, or not reading
                self.channel.send(number, socket.MSG_DONTWAIT)

        return closed

    def close(self) -> None:
        if self._loop is not None and self.channel.fileno() >= 0:
            self._loop.remove_reader(self.channel.fileno())
        self.channel.close()
