"""Time sources: the I/O drivers around the sans-I/O dialects.

Each source runs one reader thread over a :class:`~hardware.serial_port.SerialPort`
(opened by path, reopened after an unplug), feeds bytes to its dialect and reports to a
:class:`~timing.clock.DisciplinedClock`: samples through ``ingest``, device state through
``note`` and rejected lines through ``reject``.

* :class:`GpsdoSource`: NMEA. Without PPS, the arrival of each second's first sentence is
  the measurement (milliseconds). With a PPS reader, NMEA only labels the edges and the
  edges are the measurement (microseconds).
* :class:`ScpiSource`: polls time, lock and status; offset at the midpoint of each
  query's round trip, half the round trip as its bound.
* :class:`Prs10Source`: polls ID/ST/LO/TT for lock and phase; its time comes from its
  1 PPS output on a PPS reader, labelled with the clock's own whole second.
* :class:`SystemClockSource`: the host clock, with a wide bound, for deployments that
  want it counted.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from hardware.pps import PpsError, PpsReader
from hardware.serial_port import SerialPort, SerialPortError
from timing import nmea, prs10, scpi
from timing.clock import DisciplinedClock
from timing.constants import (
    NMEA_DEFAULT_DELAY,
    NMEA_DEFAULT_UNCERTAINTY,
    PPS_JITTER_DEFAULT,
    PPS_MAX_LABEL_ERROR,
    PRS10_POLL_INTERVAL,
    REASON_TOO_LONG,
    REOPEN_INTERVAL,
    SCPI_POLL_INTERVAL,
    SCPI_RESOLUTION,
    SYSTEM_CLOCK_UNCERTAINTY,
)
from timing.discipline import Sample
from timing.errors import ParseError, TimingError
from timing.lines import LineSplitter, Overlong

log = logging.getLogger(__name__)


class Source:
    """Base: a named thread that the clock hears from. ``start``/``stop`` are idempotent."""

    kind = "source"

    def __init__(self, name: str, clock: DisciplinedClock) -> None:
        self.name = name
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        clock.register(name, self.kind)

    def _spawn(self, target: Callable[[], None], suffix: str) -> None:
        t = threading.Thread(target=target, name=f"{self.name}-{suffix}", daemon=True)
        self._threads.append(t)
        t.start()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)


class SerialSource(Source):
    """A reader thread over a serial port that survives unplug and re-plug."""

    def __init__(self, name: str, clock: DisciplinedClock, port: SerialPort) -> None:
        super().__init__(name, clock)
        self.port = port
        self.reconnects = 0

    def start(self) -> None:
        if not self._threads:
            self._spawn(self._run, "serial")

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.port.open()
            except SerialPortError as exc:
                self.clock.note(self.name, "disconnected", False, str(exc)[:120])
                self._stop.wait(REOPEN_INTERVAL)
                continue
            if not first:
                self.reconnects += 1
            first = False
            self.clock.note(self.name, "connected", False)
            try:
                self.on_open()
                self._session()
            except SerialPortError as exc:
                self.clock.note(self.name, "disconnected", False, str(exc)[:120])
            finally:
                self.port.close()
                self.on_close()
            self._stop.wait(REOPEN_INTERVAL)

    def _session(self) -> None:
        while not self._stop.is_set():
            data = self.port.read(1)
            now = self.clock.local()
            if data:
                waiting = self.port.in_waiting
                if waiting:
                    data += self.port.read(waiting)
                self.on_data(data, now)
            self.on_idle(self.clock.local())

    def on_open(self) -> None:
        """Called after each (re)open."""

    def on_close(self) -> None:
        """Called after the port was closed."""

    def on_data(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    def on_idle(self, now: float) -> None:
        """Called after every read, with or without data."""


def label_pps(edge_local: float, fix: nmea.GnssTime, delay: float) -> float | None:
    """The UTC second of a PPS edge, from the NMEA burst nearest to it.

    The burst describing second N starts ``delay`` after N's edge, so the edge of the
    second the burst names is at about ``fix.received - delay``. None if the fix is more
    than two seconds away (its label would be guesswork).
    """
    seconds_after = edge_local - (fix.received - delay)
    if abs(seconds_after) > 2.0:
        return None
    whole = round(seconds_after)
    if abs(seconds_after - whole) > PPS_MAX_LABEL_ERROR:
        return None
    return fix.label + whole


class PpsSerialSource(SerialSource, ABC):
    """A serial source that may also read a 1 PPS edge (DCD line or /dev/ppsN).

    The edge thread is the same for every device; what a second is called (``_label``)
    is the device's own business: NMEA's last fix for a GPSDO, the disciplined clock for
    a rubidium that only says it is locked.
    """

    def __init__(
        self,
        name: str,
        clock: DisciplinedClock,
        port: SerialPort,
        *,
        pps: PpsReader | None,
        pps_jitter: float,
        realtime: Callable[[], float],
    ) -> None:
        super().__init__(name, clock, port)
        self.pps = pps
        self.pps_jitter = pps_jitter
        self._realtime = realtime

    def start(self) -> None:
        if not self._threads:
            self._spawn(self._run, "serial")
            if self.pps is not None:
                self._spawn(self._pps_run, "pps")

    @abstractmethod
    def _label(self, local: float) -> Sample | None:
        """The sample for an edge seen at local time ``local``, or None to skip it."""

    def _pps_run(self) -> None:
        assert self.pps is not None
        while not self._stop.is_set():
            try:
                edge = self.pps.wait(0.5)
            except PpsError as exc:
                self.clock.note(self.name, "pps-lost", False, str(exc)[:120])
                self._stop.wait(REOPEN_INTERVAL)
                continue
            if edge is None:
                continue
            sample = self._label(edge.realtime - (self._realtime() - self.clock.local()))
            if sample is not None:
                self.clock.ingest(sample)


class GpsdoSource(PpsSerialSource):
    kind = "gpsdo"

    def __init__(
        self,
        name: str,
        clock: DisciplinedClock,
        port: SerialPort,
        *,
        delay: float = NMEA_DEFAULT_DELAY,
        uncertainty: float = NMEA_DEFAULT_UNCERTAINTY,
        pps: PpsReader | None = None,
        pps_jitter: float = PPS_JITTER_DEFAULT,
        realtime: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, clock, port, pps=pps, pps_jitter=pps_jitter, realtime=realtime)
        self.delay = delay
        self.uncertainty = uncertainty
        self._lines = LineSplitter()
        self._tracker = nmea.NmeaTimeTracker()
        self._fix: nmea.GnssTime | None = None
        self._fix_lock = threading.Lock()

    def on_open(self) -> None:
        self._lines.reset()
        self._tracker = nmea.NmeaTimeTracker()

    def on_data(self, data: bytes, now: float) -> None:
        for item in self._lines.feed(data, now):
            if isinstance(item, Overlong):
                self.clock.reject(self.name, REASON_TOO_LONG)
                continue
            try:
                parsed = nmea.parse(item.data)
            except ParseError as exc:
                self.clock.reject(self.name, exc.reason)
                continue
            for fix in self._tracker.feed(parsed, item.received):
                self._on_fix(fix)

    def on_idle(self, now: float) -> None:
        for fix in self._tracker.poll(now):
            self._on_fix(fix)

    def _on_fix(self, fix: nmea.GnssTime) -> None:
        if not fix.valid:
            self.clock.note(self.name, "no-fix", False, f"quality {fix.fix_quality}")
            return
        with self._fix_lock:
            self._fix = fix
        self.clock.note(self.name, "ok", True, f"quality {fix.fix_quality}")
        if self.pps is None:
            offset = fix.label + self.delay - fix.received
            # serial timing noise is about a quarter of its bound
            self.clock.ingest(
                Sample(self.name, fix.received, offset, self.uncertainty / 4, self.uncertainty)
            )

    def _label(self, local: float) -> Sample | None:
        with self._fix_lock:
            fix = self._fix
        if fix is None or not fix.valid:
            return None
        label = label_pps(local, fix, self.delay)
        if label is None:
            return None
        return Sample(self.name, local, label - local, self.pps_jitter, 0.0)


class ScpiSource(SerialSource):
    kind = "rubidium-scpi"

    def __init__(
        self,
        name: str,
        clock: DisciplinedClock,
        port: SerialPort,
        *,
        poll_interval: float = SCPI_POLL_INTERVAL,
        near: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, clock, port)
        self.poll_interval = poll_interval
        self._near = near
        self._client = scpi.ScpiClient()
        self._queue: list[scpi.Query] = []
        self._next_poll = 0.0
        self.identity: scpi.Identity | None = None
        self._locked = False
        self._healthy = False

    def on_open(self) -> None:
        self._client.reset()
        self._queue = [scpi.Query.IDN]
        self._next_poll = 0.0
        self._locked = self._healthy = False

    def on_idle(self, now: float) -> None:
        for event in self._client.expire(now):
            self._handle(event)
        if not self._queue and now >= self._next_poll:
            self._queue = [scpi.Query.STATUS, scpi.Query.LOCK, scpi.Query.TIME]
            self._next_poll = now + self.poll_interval
        if self._queue and not self._client.busy:
            query = self._queue.pop(0)
            sent = self.clock.local()
            self.port.write(self._client.request(query, sent))

    def on_data(self, data: bytes, now: float) -> None:
        for event in self._client.feed(data, now):
            self._handle(event)
        self.on_idle(self.clock.local())  # ask the next question at once

    def _handle(self, event: scpi.Event) -> None:
        if isinstance(event, scpi.Rejected):
            self.clock.reject(self.name, event.reason)
        elif isinstance(event, scpi.TimedOut):
            self.clock.reject(self.name, "timeout")
            self._queue.clear()
        elif isinstance(event, scpi.Identity):
            self.identity = event
        elif isinstance(event, scpi.Status):
            self._healthy = event.healthy
        elif isinstance(event, scpi.Lock):
            self._locked = event.locked
            ok = self._locked and self._healthy
            self.clock.note(self.name, "ok" if ok else "unlocked", ok)
        elif isinstance(event, scpi.TimeOfDay) and self._locked and self._healthy:
            mid = (event.sent + event.received) / 2
            half_rtt = (event.received - event.sent) / 2
            utc = scpi.resolve_day(event.seconds_of_day, self._near())
            bias = half_rtt + SCPI_RESOLUTION
            self.clock.ingest(Sample(self.name, mid, utc - mid, max(half_rtt / 2, 1e-6), bias))


class Prs10Source(PpsSerialSource):
    kind = "rubidium-prs10"

    def __init__(
        self,
        name: str,
        clock: DisciplinedClock,
        port: SerialPort,
        *,
        poll_interval: float = PRS10_POLL_INTERVAL,
        pps: PpsReader | None = None,
        pps_jitter: float = PPS_JITTER_DEFAULT,
        realtime: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, clock, port, pps=pps, pps_jitter=pps_jitter, realtime=realtime)
        self.poll_interval = poll_interval
        self._client = prs10.Prs10Client()
        self._queue: list[prs10.Command] = []
        self._next_poll = 0.0
        self.identity: prs10.Identity | None = None
        self.time_tag: float | None = None
        self._status: prs10.StatusBytes | None = None
        self._locked = False

    def on_open(self) -> None:
        self._client.reset()
        self._queue = [prs10.Command.ID]
        self._next_poll = 0.0
        self._locked = False

    def on_idle(self, now: float) -> None:
        for event in self._client.expire(now):
            self._handle(event)
        if not self._queue and now >= self._next_poll:
            self._queue = [prs10.Command.ST, prs10.Command.LO, prs10.Command.TT]
            self._next_poll = now + self.poll_interval
        if self._queue and not self._client.busy:
            self.port.write(self._client.request(self._queue.pop(0), now))

    def on_data(self, data: bytes, now: float) -> None:
        for event in self._client.feed(data, now):
            self._handle(event)
        self.on_idle(self.clock.local())

    def _handle(self, event: prs10.Event) -> None:
        if isinstance(event, prs10.Rejected):
            self.clock.reject(self.name, event.reason)
        elif isinstance(event, prs10.TimedOut):
            self.clock.reject(self.name, "timeout")
            self._queue.clear()
        elif isinstance(event, prs10.Identity):
            self.identity = event
        elif isinstance(event, prs10.StatusBytes):
            self._status = event
        elif isinstance(event, prs10.LockLoop):
            self._locked = event.locked and self._status is not None and self._status.healthy
            detail = "" if self.pps is not None else "no PPS reader: lock and status only"
            self.clock.note(self.name, "ok" if self._locked else "unlocked", self._locked, detail)
        elif isinstance(event, prs10.TimeTag):
            self.time_tag = event.seconds

    def _label(self, local: float) -> Sample | None:
        if not self._locked:
            return None
        try:
            mode, t, _u = self.clock.reading()
        except TimingError:
            return None  # fallback 'refuse' and nothing to label with
        if mode == "system" and self.clock.quorum > 1:
            return None  # an unchecked host clock must not label a rubidium
        est = t - (self.clock.local() - local)
        label = round(est)
        if abs(est - label) > PPS_MAX_LABEL_ERROR:
            return None
        return Sample(self.name, local, label - local, self.pps_jitter)


class SystemClockSource(Source):
    kind = "system"

    def __init__(
        self,
        name: str,
        clock: DisciplinedClock,
        *,
        interval: float = 1.0,
        uncertainty: float = SYSTEM_CLOCK_UNCERTAINTY,
        realtime: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, clock)
        self.interval = interval
        self.uncertainty = uncertainty
        self._realtime = realtime

    def start(self) -> None:
        if not self._threads:
            self._spawn(self._run, "poll")

    def _run(self) -> None:
        self.clock.note(self.name, "ok", True, "host clock")
        while not self._stop.is_set():
            local = self.clock.local()
            offset = self._realtime() - local
            sample = Sample(self.name, local, offset, self.uncertainty / 4, self.uncertainty)
            self.clock.ingest(sample)
            self._stop.wait(self.interval)
