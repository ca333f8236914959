"""Optional feed to chrony through its SOCK refclock (``refclock SOCK /path.sock``).

chronyd binds a datagram Unix socket and reads ``struct sock_sample`` (refclock_sock.c):
``struct timeval tv`` (system time of the measurement), ``double offset`` (true time minus
system time), ``int pulse`` (1 if only the offset within the second is known), ``int leap``,
``int _pad``, ``int magic`` (0x534f434b), in native layout: 40 bytes on 64-bit Linux.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Callable

from timing.clock import DisciplinedClock
from timing.constants import CHRONY_FEED_INTERVAL, CHRONY_SOCK_MAGIC
from timing.errors import SourceError, TimingError

SOCK_SAMPLE = struct.Struct("@qqdiiii")
log = logging.getLogger(__name__)


def pack_sample(system_time: float, offset: float, pulse: bool = False, leap: int = 0) -> bytes:
    if not math.isfinite(system_time) or not math.isfinite(offset) or leap not in (0, 1, 2):
        raise ValueError("sample must be finite with leap 0, 1 or 2")
    sec = math.floor(system_time)
    usec = min(round((system_time - sec) * 1e6), 999_999)
    return SOCK_SAMPLE.pack(sec, usec, offset, int(pulse), leap, 0, CHRONY_SOCK_MAGIC)


def unpack_sample(data: bytes) -> tuple[float, float, bool, int]:
    """(system time, offset, pulse, leap); ValueError for a wrong size or magic."""
    if len(data) != SOCK_SAMPLE.size:
        raise ValueError("wrong size")
    sec, usec, offset, pulse, leap, _pad, magic = SOCK_SAMPLE.unpack(data)
    if magic != CHRONY_SOCK_MAGIC:
        raise ValueError("wrong magic")
    return sec + usec * 1e-6, offset, bool(pulse), leap


class ChronyFeed:
    """Sends the disciplined clock's view to chronyd, one sample per call to :meth:`send`."""

    def __init__(
        self, path: str, clock: DisciplinedClock, system: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._clock = clock
        self._system = system
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sent = 0
        self.skipped = 0

    def send(self) -> bool:
        """Send a sample if the clock is disciplined (synced or holdover); False otherwise.

        Never feeds chrony the system clock back to itself.
        """
        try:
            mode, t, _u = self._clock.reading()
        except TimingError:
            self.skipped += 1
            return False
        system = self._system()
        if mode == "system":
            self.skipped += 1
            return False
        try:
            self._sock.sendto(pack_sample(system, t - system), self.path)
        except OSError as exc:
            raise SourceError(f"chrony socket {self.path}: {exc.strerror}") from None
        self.sent += 1
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class ChronyFeeder:
    """Runs a :class:`ChronyFeed` in a daemon thread, one sample every ``interval`` seconds.

    Started and stopped like a time source (``start``/``stop`` are idempotent). A socket
    that is not there yet (chronyd not started) is retried quietly; the first failure of a
    run is logged once, so an operator sees why chrony hears nothing.
    """

    def __init__(self, feed: ChronyFeed, interval: float = CHRONY_FEED_INTERVAL) -> None:
        self.feed = feed
        self.interval = interval
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chrony-feed", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        warned = False
        while not self._stop.wait(self.interval):
            try:
                self.feed.send()
            except SourceError as exc:
                self.failures += 1
                if not warned:
                    log.warning("%s (will keep trying)", exc)
                    warned = True
            else:
                warned = False

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.feed.close()
