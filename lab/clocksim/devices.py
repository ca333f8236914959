"""The three simulated devices. Each runs one thread; ``start``/``stop`` are idempotent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lab.clocksim.model import ClockModel
from lab.clocksim.pty import PtyLink
from timing import nmea, prs10, scpi
from timing.errors import ParseError
from timing.lines import Line, LineSplitter

SPIN = 0.001  # sleep to this close to a send time, then spin, so sends land within µs


class Simulator:
    """Base: owns the pty link, the model and the thread."""

    def __init__(
        self, link: str, model: ClockModel, truth: Callable[[], float] = time.time
    ) -> None:
        self.model = model
        self.truth = truth
        if not model.started:
            model.started = truth()
        self.pty = PtyLink(link)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.messages = 0

    @property
    def link(self) -> str:
        return self.pty.link

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3.0)
        self.pty.close()

    def unplug(self) -> None:
        self.pty.unplug()

    def replug(self) -> None:
        self.pty.replug()

    def _run(self) -> None:
        raise NotImplementedError

    def _sleep_until(self, true: float) -> bool:
        """Sleep until the truth clock reads ``true``; False if stopped meanwhile."""
        while True:
            left = true - self.truth()
            if left <= 0:
                return True
            if left > SPIN:
                if self._stop.wait(left - SPIN):
                    return False
            elif self._stop.is_set():
                return False


class GpsdoSim(Simulator):
    """Sends RMC, GGA and ZDA for each second of its clock, ``delay`` after the second.

    Before ``lock_after`` it sends the blank sentences of a receiver without a fix;
    during an outage it says nothing; a lie shifts the seconds it announces.
    """

    def __init__(
        self,
        link: str,
        model: ClockModel,
        *,
        delay: float = 0.0,
        talker: str = "GP",
        truth: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(link, model, truth)
        self.delay = delay
        self.talker = talker

    def burst(self, label: float, locked: bool) -> bytes:
        if not locked:
            return (
                nmea.encode_rmc(None, False, self.talker)
                + nmea.encode_gga(None, 0, 0, self.talker)
                + nmea.encode_zda(None, self.talker)
            )
        return (
            nmea.encode_rmc(label, True, self.talker)
            + nmea.encode_gga(label, 1, 9, self.talker)
            + nmea.encode_zda(label, self.talker)
        )

    def _run(self) -> None:
        m = self.model
        second = int(m.device_time(self.truth())) + 1
        while not self._stop.is_set():
            # the device announces second N when its own clock reaches N (+ delay)
            at = m.true_time_of(second) + self.delay + m.noise()
            if not self._sleep_until(at):
                return
            now = self.truth()
            if not m.silent(now):
                label = second + m.lie(now)
                if self.pty.write(self.burst(label, m.locked(now))):
                    self.messages += 1
            second = max(second + 1, int(m.device_time(self.truth())))


class _Responder(Simulator):
    """A polled device: reads command lines from the pty and answers each."""

    terminator = b"\n"

    def __init__(
        self, link: str, model: ClockModel, truth: Callable[[], float] = time.time
    ) -> None:
        super().__init__(link, model, truth)
        self._lines = LineSplitter()
        self.bad_commands = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self.pty.read(0.1)
            if not data:
                if not self.pty.plugged:
                    self._lines.reset()
                continue
            for item in self._lines.feed(data, self.truth()):
                if not isinstance(item, Line):
                    self.bad_commands += 1
                    continue
                now = self.truth()
                if self.model.silent(now):
                    continue
                try:
                    reply = self.answer(item.data, now)
                except ParseError:
                    self.bad_commands += 1
                    continue
                if reply and self.pty.write(reply):
                    self.messages += 1

    def answer(self, line: bytes, now: float) -> bytes:
        raise NotImplementedError


class ScpiSim(_Responder):
    """The SCPI-style rubidium of :mod:`timing.scpi`."""

    identity = scpi.Identity("SHADOWSIM", "RB-SCPI", "SN0001", "1.0")

    def answer(self, line: bytes, now: float) -> bytes:
        query = scpi.parse_command(line)
        m = self.model
        locked = m.locked(now)
        if query is scpi.Query.IDN:
            return scpi.encode_identity(self.identity)
        if query is scpi.Query.LOCK:
            return scpi.encode_lock(locked)
        if query is scpi.Query.STATUS:
            return scpi.encode_status(0 if locked else scpi.STATUS_WARMUP)
        device = m.device_time(now) + m.noise()
        if query is scpi.Query.DATE:
            t = time.gmtime(int(device))
            return scpi.encode_date(t.tm_year, t.tm_mon, t.tm_mday)
        return scpi.encode_time(device)


class Prs10Sim(_Responder):
    """The PRS10 two-letter dialect; TT reports its 1 PPS against the (true) input."""

    def __init__(
        self, link: str, model: ClockModel, truth: Callable[[], float] = time.time
    ) -> None:
        super().__init__(link, model, truth)
        self.lock_loop = True

    def answer(self, line: bytes, now: float) -> bytes:
        command, value = prs10.parse_command(line)
        if value is not None:  # LO 0 / LO 1: switch the lock loop, no reply
            self.lock_loop = value == "1"
            return b""
        m = self.model
        locked = m.locked(now) and self.lock_loop
        if command is prs10.Command.ID:
            return prs10.encode_identity(prs10.Identity("3.24", "77777"))
        if command is prs10.Command.ST:
            warm = 0 if m.locked(now) else 1
            return prs10.encode_status((warm, 0, 0, 0 if self.lock_loop else 1, 4, 0))
        if command is prs10.Command.LO:
            return prs10.encode_lock(locked)
        # its pulse comes when its clock reads a whole second: early by its offset
        return prs10.encode_time_tag(-(m.device_time(now) - now) + m.noise())
