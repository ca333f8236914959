"""A pseudo-terminal whose slave is reachable at a stable symlink, with unplug/replug."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty


class PtyLink:
    """The simulator's end (master) of a pty; clients open ``link`` with pyserial.

    The simulator keeps its own slave descriptor open so the master never sees EIO when a
    client comes and goes. :meth:`unplug` closes both ends, which a client sees as a
    vanished device; :meth:`replug` makes a fresh pty behind the same symlink, as udev
    does for a USB adapter.
    """

    def __init__(self, link: str) -> None:
        self.link = link
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self.replug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_name(self) -> str | None:
        return os.ttyname(self._slave) if self._slave is not None else None

    def replug(self) -> None:
        with self._lock:
            if self._master is not None:
                return
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo or line editing before a client sets it up
            tmp = f"{self.link}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.ttyname(slave), tmp)
            os.replace(tmp, self.link)
            self._master, self._slave = master, slave

    def unplug(self) -> None:
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None

    def close(self) -> None:
        self.unplug()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.link)

    def write(self, data: bytes) -> bool:
        """Write to the client; False if unplugged or the write failed."""
        with self._lock:
            fd = self._master
            if fd is None:
                return False
            try:
                os.write(fd, data)
            except OSError:
                return False
            return True

    def read(self, timeout: float) -> bytes:
        """What the client wrote, or b'' after ``timeout`` (or while unplugged)."""
        fd = self._master
        if fd is None:
            threading.Event().wait(timeout)
            return b""
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return b""
            return os.read(fd, 4096)
        except (OSError, ValueError):
            return b""
