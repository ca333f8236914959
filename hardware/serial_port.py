"""Serial line adapter (pyserial) and an in-memory fake beside it.

Only this module opens a serial device. A port is opened by path each time, so a USB
adapter that was unplugged and plugged back (or a simulator that re-created its
pseudo-terminal behind the same symlink) is found again by :meth:`SerialPort.open`.
Every OS or pyserial failure surfaces as :class:`SerialPortError`, so callers need to
catch one thing to notice an unplug.
"""

from __future__ import annotations

import collections
import contextlib
import termios
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import serial

DEFAULT_BAUDRATE = 115200
DEFAULT_TIMEOUT = 0.2


class SerialPortError(OSError):
    """The device could not be opened, read or written (unplugged, busy, missing)."""


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Line settings; 115200 8N1 without flow control unless told otherwise."""

    port: str
    baudrate: int = DEFAULT_BAUDRATE
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    rtscts: bool = False
    xonxoff: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.bytesize not in (5, 6, 7, 8):
            raise ValueError("bytesize must be 5, 6, 7 or 8")
        if self.parity not in ("N", "E", "O", "M", "S"):
            raise ValueError("parity must be one of N, E, O, M, S")
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        if self.baudrate <= 0 or self.timeout <= 0:
            raise ValueError("baudrate and timeout must be positive")


class SerialPort(Protocol):
    """What a time source needs from a serial line."""

    settings: SerialSettings

    def open(self) -> None: ...
    def close(self) -> None: ...
    @property
    def is_open(self) -> bool: ...
    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b'' after ``settings.timeout`` with nothing to read."""
        ...

    def write(self, data: bytes) -> None: ...
    @property
    def in_waiting(self) -> int: ...
    @property
    def cd(self) -> bool:
        """State of the DCD (carrier detect) modem line."""
        ...


class PySerialPort:
    """The real adapter over ``serial.Serial``."""

    def __init__(self, settings: SerialSettings) -> None:
        self.settings = settings
        self._s: serial.Serial | None = None

    def open(self) -> None:
        self.close()
        s = self.settings
        try:
            self._s = serial.Serial(
                port=s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                rtscts=s.rtscts,
                xonxoff=s.xonxoff,
                timeout=s.timeout,
                write_timeout=s.timeout,
            )
            # bytes queued while nobody listened are stale for a time source
            self._s.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            self.close()
            raise SerialPortError(f"cannot open {s.port}: {exc}") from exc

    def close(self) -> None:
        if self._s is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._s.close()  # may already be gone with the device
            self._s = None

    @property
    def is_open(self) -> bool:
        return self._s is not None and self._s.is_open

    def _port(self) -> serial.Serial:
        if self._s is None:
            raise SerialPortError(f"{self.settings.port} is not open")
        return self._s

    def read(self, size: int) -> bytes:
        try:
            return bytes(self._port().read(size))
        except (serial.SerialException, OSError, TypeError) as exc:
            # pyserial raises TypeError from a read racing with close()
            raise SerialPortError(f"read {self.settings.port}: {exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._port().write(data)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"write {self.settings.port}: {exc}") from exc

    @property
    def in_waiting(self) -> int:
        try:
            return int(self._port().in_waiting)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"{self.settings.port}: {exc}") from exc

    @property
    def cd(self) -> bool:
        try:
            return bool(self._port().cd)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"{self.settings.port}: {exc}") from exc


class FakeSerialPort:
    """In-memory port. The test plays the device through :meth:`inject` and ``responder``.

    ``responder(written_bytes) -> reply_bytes`` answers what the host writes, like a
    polled device would. :meth:`unplug` makes every call fail until :meth:`replug`.
    ``read`` blocks up to the timeout like the real one, so reader threads behave alike.
    """

    def __init__(
        self,
        settings: SerialSettings | None = None,
        responder: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.settings = settings or SerialSettings("fake")
        self.responder = responder
        self.written: list[bytes] = []
        self.dcd = False
        self.opens = 0
        self._rx: collections.deque[int] = collections.deque()
        self._cond = threading.Condition()
        self._open = False
        self._plugged = True

    def inject(self, data: bytes) -> None:
        with self._cond:
            self._rx.extend(data)
            self._cond.notify_all()

    def unplug(self) -> None:
        with self._cond:
            self._plugged = False
            self._open = False
            self._rx.clear()
            self._cond.notify_all()

    def replug(self) -> None:
        with self._cond:
            self._plugged = True

    def open(self) -> None:
        with self._cond:
            if not self._plugged:
                raise SerialPortError(f"cannot open {self.settings.port}: no such device")
            self._open = True
            self.opens += 1

    def close(self) -> None:
        with self._cond:
            self._open = False
            self._cond.notify_all()

    @property
    def is_open(self) -> bool:
        return self._open

    def _check(self) -> None:
        if not self._plugged:
            raise SerialPortError(f"{self.settings.port}: device went away")
        if not self._open:
            raise SerialPortError(f"{self.settings.port} is not open")

    def read(self, size: int) -> bytes:
        with self._cond:
            self._check()
            if not self._rx:
                self._cond.wait(self.settings.timeout)
                self._check()
            n = min(size, len(self._rx))
            return bytes(self._rx.popleft() for _ in range(n))

    def write(self, data: bytes) -> None:
        with self._cond:
            self._check()
            self.written.append(bytes(data))
        if self.responder is not None:
            reply = self.responder(bytes(data))
            if reply:
                self.inject(reply)

    @property
    def in_waiting(self) -> int:
        with self._cond:
            self._check()
            return len(self._rx)

    @property
    def cd(self) -> bool:
        with self._cond:
            self._check()
            return self.dcd
