"""Key rotation on the disciplined clock's epoch boundaries, at both ends of a tunnel.

Epoch ``e`` is ``[e*T, (e+1)*T)`` of disciplined UTC seconds, ``T`` being
``security.key_rotation_interval`` (``timing.epoch``).

* Client: :class:`RotationDriver` runs a ``timing.epoch.EpochScheduler`` on the clock and,
  at every boundary, starts an in-band rekey of the link in use to the new epoch number.
  Between boundaries it also rekeys on volume: once a second it asks the session whether
  a key in use (its own or the exit's, which only a client rekey replaces) nears its
  reject-after limits, and rekeys early in the same clock epoch, so a busy tunnel is never
  torn down by a key running out.
* Exit: it never starts a rekey; its session checks that a client's rekey epoch is within
  one epoch of its own clock's (``SessionConfig.rekey_interval`` + the link's clock, see
  :func:`exit_session_config`), so two clocks that agree to well under a second agree on
  the epoch except right at a boundary, where the one-epoch tolerance covers them.

:class:`TunnelClock` is the clock both ends hand to their links. It reads the disciplined
clock and never raises: when the clock's fallback is ``refuse`` and the quorum is lost,
``now()`` falls back to the system clock (sessions still need time for their reject-after
limits) while ``epoch_time()`` returns None, so no rotation is started on a time the
operator said not to trust. Its mode (``synced``, ``holdover``, ``system``, ``unsynced``)
is published as a gauge and in the status page, so the fallback is never silent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from l2bridge.node.metrics import Counters, Metrics
from l2bridge.protocol.session import SessionConfig
from timing.clock import DisciplinedClock
from timing.epoch import EpochScheduler
from timing.errors import NoQuorumError

log = logging.getLogger(__name__)

MODE_CODES = {"synced": 0.0, "holdover": 1.0, "system": 2.0, "unsynced": 3.0}
TALLY_INTERVAL_S = 1.0
VOLUME_CHECK_S = 1.0  # far inside the margin between rekey-after and reject-after
# How long ``TunnelClock.now`` carries one reading of the disciplined clock forward on the
# monotonic clock. Every record sealed or opened asks for the time, and a full reading
# (source selection, filters, the step limiter) costs about 18 us warm and several times
# that in a process that has slept. What a record needs the time for is coarse: key
# lifetimes (minutes), a rekey's epoch (+-1 epoch of at least a second), a hello's
# freshness (seconds). Carried for a second, the time differs from a fresh reading by the
# monotonic clock's rate error over that second: the discipline's slew (500 ppm, 0.5 ms)
# in normal running, at most 83 ms while chrony slews a large correction at its fastest.
# Rotation's boundaries (``epoch_time``) always read afresh.
CLOCK_REUSE_S = 1.0


class RekeyingSession(Protocol):
    def needs_rekey(self, now: float) -> bool: ...


class RekeyingLink(Protocol):
    """What rotation needs from ``l2bridge.node.link.Link``."""

    rekeys_completed: int

    @property
    def session(self) -> RekeyingSession: ...

    def rekey(self, epoch: int) -> bool: ...


class TunnelClock:
    """A disciplined clock that never raises; ``mode`` says what it is running on.

    ``now`` (the per-record time) reuses one reading for up to ``reuse_s`` of the
    ``monotonic`` clock, advanced by the monotonic time elapsed; ``epoch_time``
    (rotation's boundaries) and the published gauges read afresh.
    """

    def __init__(
        self,
        clock: DisciplinedClock | None = None,
        *,
        reuse_s: float = CLOCK_REUSE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.mode = "system" if clock is None else "unsynced"
        self.uncertainty: float | None = None
        self._warned: str | None = None
        self._reuse_s = reuse_s
        self._monotonic = monotonic
        self._read_at = float("-inf")  # monotonic time of the reading now() carries forward
        self._read_t = 0.0
        self._last_now = float("-inf")

    def _read(self) -> tuple[str, float, float | None]:
        if self.clock is None:
            return "system", time.time(), None
        try:
            mode, t, u = self.clock.reading()
        except NoQuorumError:
            return "unsynced", time.time(), None
        return mode, t, u

    def _remember(self, mode: str, u: float | None) -> None:
        self.mode, self.uncertainty = mode, u
        if mode != self._warned and mode in ("system", "unsynced") and self.clock is not None:
            log.warning(
                "time sources lost or out of quorum: running on the system clock (%s)%s",
                mode,
                "; rotations paused until the quorum is back" if mode == "unsynced" else "",
            )
        self._warned = mode if mode in ("system", "unsynced") else None

    def now(self) -> float:
        mono = self._monotonic()
        elapsed = mono - self._read_at
        if 0.0 <= elapsed < self._reuse_s:
            t = self._read_t + elapsed
        else:
            mode, t, u = self._read()
            self._remember(mode, u)
            self._read_at, self._read_t = mono, t
        # A fresh reading may fall a few microseconds behind the carried one (the
        # discipline slews): that is not handed out as a step back. A larger step back
        # is the system clock's own (the fallback when no source counts), passed on as
        # before, never held for its length.
        if self._last_now - self._reuse_s <= t < self._last_now:
            t = self._last_now
        self._last_now = t
        return t

    def epoch_time(self) -> float | None:
        """Time to cut epochs from, or None when the operator refused an untrusted clock."""
        mode, t, u = self._read()
        self._remember(mode, u)
        return None if mode == "unsynced" else t

    def offset(self) -> float | None:
        """Disciplined time minus the system clock (what the discipline corrects)."""
        if self.clock is None:
            return 0.0
        try:
            return self.clock.now() - time.time()
        except NoQuorumError:
            return None

    def publish(self, metrics: Metrics) -> None:
        metrics.set_gauge("clock_offset_s", self.offset)
        metrics.set_gauge("clock_uncertainty_s", lambda: self._read()[2])
        metrics.set_gauge("clock_mode", lambda: MODE_CODES.get(self._read()[0]))


def exit_session_config(interval: float, base: SessionConfig | None = None) -> SessionConfig:
    """The exit's session settings: a rekey epoch must match its clock's, +-1 epoch."""
    return dataclasses.replace(base or SessionConfig(), rekey_interval=interval)


class RekeyTally:
    """Folds the links' completed rekeys into the node's ``rekeys`` counter."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._seen: weakref.WeakKeyDictionary[RekeyingLink, int] = weakref.WeakKeyDictionary()

    def track(self, link: RekeyingLink) -> None:
        self._seen.setdefault(link, link.rekeys_completed)

    def fold(self) -> None:
        for link, seen in list(self._seen.items()):
            done = link.rekeys_completed
            if done > seen:
                self._counters.rekeys += done - seen
                self._seen[link] = done

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.fold()
            try:
                await asyncio.wait_for(stop.wait(), TALLY_INTERVAL_S)
            except TimeoutError:
                continue
        self.fold()


class RotationDriver:
    """Client side: rekey the current link at each epoch boundary of ``clock``."""

    def __init__(
        self,
        clock: TunnelClock,
        interval: float,
        current_link: Callable[[], RekeyingLink | None],
        metrics: Metrics | None = None,
    ) -> None:
        self._clock = clock
        self._current = current_link
        self.scheduler = EpochScheduler(self._epoch_clock, interval)
        self.scheduler.add(self.on_epoch)
        self.tally = RekeyTally(metrics.counters) if metrics is not None else None
        self.started: list[int] = []
        self.paused = 0
        self.volume_rekeys = 0

    def _epoch_clock(self) -> float:
        # The scheduler needs a number; while the clock is refused we keep it moving on
        # the system clock and skip the rotations themselves in on_epoch.
        return self._clock.now()

    def on_epoch(self, epoch: int) -> None:
        if self._clock.epoch_time() is None:
            self.paused += 1
            return
        link = self._current()
        if link is None:
            return
        if self.tally is not None:
            self.tally.track(link)
            self.tally.fold()
        if link.rekey(epoch):
            self.started.append(epoch)
            del self.started[:-1000]

    def check_volume(self) -> bool:
        """Rekey the link in use now if one of its keys nears its limits; True if started."""
        link = self._current()
        if link is None or self._clock.epoch_time() is None:
            return False
        if not link.session.needs_rekey(self._clock.now()):
            return False
        if link.rekey(self.scheduler.current_epoch()):
            self.volume_rekeys += 1
            return True
        return False

    async def _watch_volume(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), VOLUME_CHECK_S)
            except TimeoutError:
                self.check_volume()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.ensure_future(self.scheduler.run(stop)),
            asyncio.ensure_future(self._watch_volume(stop)),
        ]
        if self.tally is not None:
            tasks.append(asyncio.ensure_future(self.tally.run(stop)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
