"""Pulse-per-second adapters: the kernel's /dev/ppsN, the DCD line of a serial port, a fake.

Each reader hands out :class:`PpsEdge`: the sequence number and the host's
``CLOCK_REALTIME`` at the assert edge. The kernel device timestamps the edge in its
interrupt handler (best); the DCD reader wakes from ``TIOCMIWAIT`` and reads the clock
itself, so it adds the scheduler's wake-up latency (tens of microseconds).
A pseudo-terminal has no modem lines, so tests drive :class:`FakePps`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import struct
import termios
import threading
import time
from dataclasses import dataclass
from typing import Protocol

# linux/pps.h: #define PPS_FETCH _IOWR('p', 0xa4, struct pps_fdata *): the size field is
# that of a pointer (8 on 64-bit), a quirk the kernel keeps for compatibility.
PPS_FETCH = (3 << 30) | (8 << 16) | (ord("p") << 8) | 0xA4
# struct pps_fdata { struct pps_kinfo info; struct pps_ktime timeout; } on x86-64/arm64:
# assert_sequence, clear_sequence, assert_tu{sec, nsec, flags}, clear_tu{...}, mode, pad,
# timeout{sec, nsec, flags}
_FDATA = struct.Struct("=IIqiIqiIi4xqiI")
PPS_TIME_INVALID = 1
TIOCM_CD = getattr(termios, "TIOCM_CD", 0x040)
TIOCMIWAIT = getattr(termios, "TIOCMIWAIT", 0x545C)


class PpsError(OSError):
    """The PPS device could not be opened or read."""


@dataclass(frozen=True, slots=True)
class PpsEdge:
    sequence: int
    realtime: float  # host CLOCK_REALTIME at the assert edge


class PpsReader(Protocol):
    def wait(self, timeout: float) -> PpsEdge | None:
        """The next assert edge, or None if none came within ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


def pack_fetch(timeout: float) -> bytes:
    """The ``pps_fdata`` argument of PPS_FETCH for a bounded wait."""
    sec = int(timeout)
    nsec = int((timeout - sec) * 1e9)
    return _FDATA.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, sec, nsec, 0)


def unpack_fetch(data: bytes) -> tuple[int, float]:
    """(assert_sequence, assert time in seconds) from a filled ``pps_fdata``."""
    fields = _FDATA.unpack(data)
    return fields[0], fields[2] + fields[3] * 1e-9


class KernelPps:
    """``/dev/ppsN`` through the PPS_FETCH ioctl (RFC 2783 as Linux implements it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise PpsError(f"cannot open {path}: {exc}") from exc
        self._last = -1

    def wait(self, timeout: float) -> PpsEdge | None:
        buf = bytearray(pack_fetch(timeout))
        try:
            fcntl.ioctl(self._fd, PPS_FETCH, buf, True)
        except TimeoutError:
            return None
        except OSError as exc:
            if exc.errno == getattr(os, "ETIMEDOUT", 110):
                return None
            raise PpsError(f"{self.path}: {exc}") from exc
        seq, t = unpack_fetch(bytes(buf))
        if seq == self._last:
            return None
        self._last = seq
        return PpsEdge(seq, t)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class DcdPps:
    """Rising edges of DCD on a serial port's file descriptor (``TIOCMIWAIT``).

    ``TIOCMIWAIT`` cannot time out, so one daemon thread waits on it and queues edges;
    closing the descriptor (owned by the caller) ends the thread.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.owns_fd = False
        self._edges: queue.Queue[PpsEdge | BaseException] = queue.Queue(maxsize=64)
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pps-dcd", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, device: str) -> DcdPps:
        """A reader on its own descriptor of ``device`` (modem lines are per tty, not per fd)."""
        try:
            fd = os.open(device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise PpsError(f"cannot open {device}: {exc}") from exc
        reader = cls(fd)
        reader.owns_fd = True
        return reader

    def _dcd(self) -> bool:
        buf = fcntl.ioctl(self._fd, termios.TIOCMGET, struct.pack("i", 0))
        return bool(struct.unpack("i", buf)[0] & TIOCM_CD)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fcntl.ioctl(self._fd, TIOCMIWAIT, TIOCM_CD)
                stamp = time.time()
                rising = self._dcd()
            except OSError as exc:
                with contextlib.suppress(queue.Full):
                    self._edges.put_nowait(PpsError(f"DCD wait: {exc}"))
                return
            if rising:
                self._seq += 1
                with contextlib.suppress(queue.Full):
                    self._edges.put_nowait(PpsEdge(self._seq, stamp))

    def wait(self, timeout: float) -> PpsEdge | None:
        try:
            item = self._edges.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self.owns_fd:
            with contextlib.suppress(OSError):
                os.close(self._fd)


class FakePps:
    """Edges pushed by a test (or a simulator) with :meth:`pulse`."""

    def __init__(self) -> None:
        self._edges: queue.Queue[PpsEdge] = queue.Queue()
        self._seq = 0
        self.closed = False

    def pulse(self, realtime: float) -> None:
        self._seq += 1
        self._edges.put(PpsEdge(self._seq, realtime))

    def wait(self, timeout: float) -> PpsEdge | None:
        if self.closed:
            raise PpsError("fake PPS closed")
        try:
            return self._edges.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True
