"""Epoch arithmetic and the scheduler that fires key rotations on exact boundaries.

Epoch ``e`` of interval ``T`` is the span ``[e*T, (e+1)*T)`` of disciplined UTC seconds,
so two nodes whose clocks agree to within milliseconds agree on the epoch number except
within milliseconds of a boundary; :func:`epoch_matches` gives a peer that much grace.

:class:`EpochTimer` is the sans-I/O core (``now`` in, crossed epochs out);
:class:`EpochScheduler` is its asyncio driver that sleeps until the next boundary of the
disciplined clock and calls the callbacks with the new epoch number.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from timing.constants import (
    EPOCH_ACCEPT_TOLERANCE,
    EPOCH_EARLY_WAKE,
    EPOCH_TWO_STAGE,
    MAX_ROTATION_INTERVAL,
    MIN_ROTATION_INTERVAL,
)
from timing.errors import ConfigError, TimingError

log = logging.getLogger(__name__)

Callback = Callable[[int], Awaitable[None] | None]


def check_interval(interval: float) -> float:
    if not math.isfinite(interval) or not (
        MIN_ROTATION_INTERVAL <= interval <= MAX_ROTATION_INTERVAL
    ):
        raise ConfigError(
            "key_rotation_interval",
            f"must be between {MIN_ROTATION_INTERVAL:g} s and {MAX_ROTATION_INTERVAL:g} s",
        )
    return float(interval)


def epoch_of(t: float, interval: float) -> int:
    return math.floor(t / interval)


def boundary(epoch: int, interval: float) -> float:
    return epoch * interval


def epoch_matches(
    epoch: int, now: float, interval: float, tolerance: float = EPOCH_ACCEPT_TOLERANCE
) -> bool:
    """Whether a peer announcing ``epoch`` agrees with our clock reading ``now``.

    True if ``now`` lies in that epoch widened by ``tolerance`` on both sides, so a peer
    whose clock is slightly ahead or behind at a boundary is not refused.
    """
    start = boundary(epoch, interval)
    return start - tolerance <= now < start + interval + tolerance


@dataclass(frozen=True, slots=True)
class Fired:
    epoch: int
    boundary: float
    late: float  # clock reading minus the boundary when it was noticed
    skipped: int  # boundaries passed without firing (the process was stalled)


class EpochTimer:
    """Remembers the last epoch seen and reports each new one once."""

    def __init__(self, interval: float) -> None:
        self.interval = check_interval(interval)
        self._last: int | None = None
        self.skipped = 0

    def start(self, now: float) -> None:
        self._last = epoch_of(now, self.interval)

    @property
    def current(self) -> int | None:
        return self._last

    def next_boundary(self, now: float) -> float:
        return boundary(epoch_of(now, self.interval) + 1, self.interval)

    def poll(self, now: float) -> Fired | None:
        """The newest epoch if ``now`` crossed into one not yet reported."""
        e = epoch_of(now, self.interval)
        if self._last is None:
            self._last = e
            return None
        if e <= self._last:
            return None
        skipped = e - self._last - 1
        self.skipped += skipped
        self._last = e
        start = boundary(e, self.interval)
        return Fired(e, start, now - start, skipped)


class EpochScheduler:
    """Calls every callback with the new epoch number at each boundary of ``clock()``.

    ``clock`` returns disciplined UTC seconds; it is assumed to run at the rate of the
    event loop's clock (the discipline keeps it within parts per million), and each sleep
    is recomputed from ``clock`` so no error accumulates. A failing callback is logged
    and counted; the others still run.
    """

    def __init__(self, clock: Callable[[], float], interval: float) -> None:
        self._clock = clock
        self.timer = EpochTimer(interval)
        self._callbacks: list[Callback] = []
        self.fired: list[Fired] = []
        self.failures = 0
        self.clock_failures = 0
        self.keep_history = 10_000

    @property
    def interval(self) -> float:
        return self.timer.interval

    def add(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def current_epoch(self) -> int:
        return epoch_of(self._clock(), self.timer.interval)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fire until ``stop`` is set (or forever).

        A clock that raises a TimingError (fallback ``refuse`` without quorum) skips
        boundaries until it answers again: no rotation on a time nobody vouches for.

        Each boundary costs one timer wake-up (two for waits over ``EPOCH_TWO_STAGE``,
        where the clock is read again just before the boundary so a discipline step
        during a long wait is honoured). Setting ``stop`` cancels the sleep rather than
        racing a watcher task against every wait, which is what keeps rotation at a
        one-second interval cheap.
        """
        stop = stop or asyncio.Event()
        if stop.is_set():
            return
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(stop.wait())
        watcher.add_done_callback(lambda _w: task.cancel())
        try:
            await self._loop()
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            task.uncancel()
        finally:
            watcher.cancel()

    async def _loop(self) -> None:
        started = False
        while True:
            try:
                now = self._clock()
            except TimingError:
                self.clock_failures += 1
                await asyncio.sleep(min(1.0, self.timer.interval))
                continue
            if not started:
                self.timer.start(now)
                started = True
            wait = self.timer.next_boundary(now) - now
            if wait > EPOCH_TWO_STAGE:
                # wake a little early, then sleep the (fresh) remainder
                await asyncio.sleep(wait - EPOCH_EARLY_WAKE)
                now = self._clock()
                wait = self.timer.next_boundary(now) - now
                if wait > 2 * EPOCH_EARLY_WAKE:
                    continue  # the clock was stepped back: start over
            if wait > 0:
                # the loop's timers overshoot by up to a millisecond, never undershoot
                await asyncio.sleep(wait)
            fired = self.timer.poll(self._clock())
            if fired is None:
                continue
            self._remember(fired)
            await self._fire(fired.epoch)

    def _remember(self, fired: Fired) -> None:
        self.fired.append(fired)
        if len(self.fired) > self.keep_history:
            del self.fired[: len(self.fired) - self.keep_history]

    async def _fire(self, epoch: int) -> None:
        for cb in list(self._callbacks):
            try:
                result = cb(epoch)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.failures += 1
                log.exception("epoch %d callback failed", epoch)
