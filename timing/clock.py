"""The disciplined clock: sources' samples in, ``now()`` and a status out.

Two levels:

* one :class:`~timing.discipline.ClockFilter` per source, to know where each source
  thinks the time is (its estimate and uncertainty) even between its samples;
* a selection (:mod:`timing.consensus`) over the lock-valid, fresh sources' estimates,
  whose agreeing sources (*truechimers*) feed their accepted samples to the clock's own
  filter; that filter's estimate is ``now()``. When every agreeing source goes quiet the
  clock's filter carries on alone: holdover, its uncertainty growing.

Fallback when the quorum is not met (``fallback``):

* ``holdover`` (default): hold over from the last disciplined state while its uncertainty
  stays under ``max_holdover_uncertainty``; after that (or if never disciplined) use the
  system clock and say so.
* ``system``: use the system clock as soon as the quorum is lost.
* ``refuse``: hold over as above, then make ``now()`` raise NoQuorumError.

``now()`` never goes backwards: a correction that would step time back is held until the
clock catches up, so epoch numbers never repeat. Nor does it leap far forward: corrections
beyond ``max_step`` are slewed at ``max_slew`` unless confirmed by at least two agreeing
sources or held for ``step_confirm`` seconds (:mod:`timing.slew`), so one bad source
cannot carry the output (and the epochs cut from it) seconds ahead at once. While the
output lags the estimate, the reported uncertainty includes the gap.

With a quorum of 1 a lying source cannot be outvoted: the slew only bounds how fast its lie
is taken, and a lie held for ``step_confirm`` seconds is stepped to. Use three or more
sources and a quorum that makes one liar a minority.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from timing import consensus
from timing.constants import (
    DEFAULT_FALLBACK,
    FALLBACK_CHOICES,
    MAX_FORWARD_STEP,
    MAX_HOLDOVER_UNCERTAINTY,
    MAX_SLEW_RATE,
    REASON_BAD_SAMPLE,
    SOURCE_STALE_AFTER,
    STEP_CONFIRM_AFTER,
    SYSTEM_CLOCK_UNCERTAINTY,
)
from timing.discipline import ClockFilter, FilterParams, Sample, Verdict
from timing.errors import ConfigError, NoQuorumError
from timing.slew import StepLimiter

SYNCED = "synced"
HOLDOVER = "holdover"
SYSTEM = "system"
UNSYNCED = "unsynced"


def monotonic_local() -> Callable[[], float]:
    """A local timescale that never steps: CLOCK_MONOTONIC anchored to UTC at start."""
    anchor = time.time() - time.monotonic()
    return lambda: time.monotonic() + anchor


@dataclass(frozen=True, slots=True)
class SourceStatus:
    name: str
    kind: str
    state: str  # what the adapter last said: ok, no-fix, unlocked, disconnected, ...
    locked: bool
    offset: float | None
    uncertainty: float | None
    age: float | None  # seconds since its last sample
    samples: int
    outliers: int
    rejected: tuple[tuple[str, int], ...]
    selected: bool
    falseticker: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ClockStatus:
    mode: str
    offset: float | None
    uncertainty: float | None
    frequency: float | None
    quorum: int
    candidates: int
    agreeing: int
    quorum_met: bool
    fallback: str
    message: str
    sources: tuple[SourceStatus, ...]


class _Source:
    def __init__(self, name: str, kind: str, params: FilterParams) -> None:
        self.name = name
        self.kind = kind
        self.filter = ClockFilter(params)
        self.state = "starting"
        self.locked = False
        self.detail = ""
        self.last_local: float | None = None
        self.rejected: Counter[str] = Counter()
        self.falseticker = False
        self.selected = False


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _sane(sample: Sample) -> bool:
    return (
        _finite(sample.local, sample.offset, sample.sigma, sample.bias)
        and sample.sigma >= 0
        and sample.bias >= 0
    )


class DisciplinedClock:
    def __init__(
        self,
        quorum: int = 1,
        fallback: str = DEFAULT_FALLBACK,
        *,
        local_clock: Callable[[], float] | None = None,
        system_clock: Callable[[], float] = time.time,
        stale_after: float = SOURCE_STALE_AFTER,
        max_holdover_uncertainty: float = MAX_HOLDOVER_UNCERTAINTY,
        system_uncertainty: float = SYSTEM_CLOCK_UNCERTAINTY,
        params: FilterParams | None = None,
        max_step: float = MAX_FORWARD_STEP,
        max_slew: float = MAX_SLEW_RATE,
        step_confirm: float = STEP_CONFIRM_AFTER,
    ) -> None:
        if quorum < 1:
            raise ConfigError("consensus_quorum", "must be at least 1")
        if fallback not in FALLBACK_CHOICES:
            raise ConfigError("fallback", f"must be one of {', '.join(FALLBACK_CHOICES)}")
        self.quorum = quorum
        self.fallback = fallback
        self.local = local_clock or monotonic_local()
        self._system = system_clock
        self._stale = stale_after
        self._max_holdover = max_holdover_uncertainty
        self._system_uncertainty = system_uncertainty
        self._params = params or FilterParams()
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._ensemble = ClockFilter(self._params)
        self._selection: consensus.Selection | None = None
        self._last_selected_local: float | None = None
        self._last_now = float("-inf")
        try:
            self._limiter = StepLimiter(max_step, max_slew, step_confirm)
        except ValueError as exc:
            raise ConfigError("max_step", str(exc)) from None

    # --- what sources call ---------------------------------------------------------------

    def register(self, name: str, kind: str) -> None:
        with self._lock:
            if name not in self._sources:
                self._sources[name] = _Source(name, kind, self._params)

    def note(self, name: str, state: str, locked: bool, detail: str = "") -> None:
        """The adapter's view of a source: connected/fix/lock state."""
        with self._lock:
            src = self._source(name)
            src.state, src.locked, src.detail = state, locked, detail

    def reject(self, name: str, reason: str) -> None:
        """Count a line the source's parser rejected."""
        with self._lock:
            self._source(name).rejected[reason] += 1

    def ingest(self, sample: Sample) -> Verdict:
        """Feed one measurement; returns what the source's own filter made of it."""
        with self._lock:
            src = self._source(sample.source)
            if not _sane(sample):
                # e.g. a negative configured uncertainty: it would poison the filter and
                # then weigh without bound in the vote
                src.rejected[REASON_BAD_SAMPLE] += 1
                return Verdict.OUTLIER
            verdict = src.filter.update(sample.local, sample.offset, sample.sigma, sample.bias)
            # heard from, even if its filter refused the value: a liar must stay a
            # candidate so the vote can outvote and name it
            src.last_local = max(sample.local, src.last_local or sample.local)
            selection = self._select(sample.local)
            if selection.ok and verdict is Verdict.ACCEPTED and src.selected:
                self._ensemble.update(sample.local, sample.offset, sample.sigma, sample.bias)
                self._last_selected_local = sample.local
            return verdict

    def _source(self, name: str) -> _Source:
        src = self._sources.get(name)
        if src is None:
            src = self._sources[name] = _Source(name, "unknown", self._params)
        return src

    def _candidates(self, local: float) -> list[consensus.Candidate]:
        out = []
        for src in self._sources.values():
            if not src.locked or src.last_local is None or local - src.last_local > self._stale:
                continue
            est = src.filter.estimate(local)
            if est is not None and _finite(est.offset, est.uncertainty):
                out.append(consensus.Candidate(src.name, est.offset, est.uncertainty))
        return out

    def _select(self, local: float) -> consensus.Selection:
        selection = consensus.select(self._candidates(local), self.quorum)
        for src in self._sources.values():
            src.selected = src.name in selection.truechimers
            src.falseticker = selection.ok and src.name in selection.falsetickers
        self._selection = selection
        return selection

    # --- what users call -----------------------------------------------------------------

    def _reading(self, local: float) -> tuple[str, float, float]:
        """(mode, offset, uncertainty) at local time ``local``; lock held."""
        selection = self._select(local)
        est = self._ensemble.estimate(local)
        fresh = (
            self._last_selected_local is not None
            and local - self._last_selected_local <= self._stale
        )
        if est is not None and selection.ok and fresh:
            return SYNCED, est.offset, est.uncertainty
        if self.fallback != SYSTEM and est is not None and est.uncertainty <= self._max_holdover:
            return HOLDOVER, est.offset, est.uncertainty
        if self.fallback == "refuse":
            raise NoQuorumError(selection.message)
        return SYSTEM, self._system() - self.local(), self._system_uncertainty

    def _output(self, local: float) -> tuple[str, float, float]:
        """(mode, time, uncertainty) as handed out: leaps bounded, never back; lock held."""
        mode, target, u = self._reading(local)
        applied = self._limiter.follow(
            local, target, disciplined=mode != SYSTEM, confirmed=self._confirms(mode, target)
        )
        t = max(local + applied, self._last_now)
        self._last_now = t
        return mode, t, u + abs(t - (local + target))

    def _confirms(self, mode: str, target: float) -> bool:
        """Whether two or more agreeing sources put the time at ``target`` (lock held)."""
        sel = self._selection
        if mode != SYNCED or sel is None or len(sel.truechimers) < 2:
            return False
        assert sel.offset is not None and sel.uncertainty is not None
        return abs(sel.offset - target) <= sel.uncertainty + self._limiter.max_step

    def now(self) -> float:
        """Disciplined UTC seconds. Raises NoQuorumError only with fallback ``refuse``."""
        with self._lock:
            return self._output(self.local())[1]

    def reading(self) -> tuple[str, float, float]:
        """(mode, disciplined time, uncertainty) in one consistent look."""
        with self._lock:
            return self._output(self.local())

    def status(self) -> ClockStatus:
        with self._lock:
            local = self.local()
            try:
                mode, offset, u = self._reading(local)
            except NoQuorumError:
                mode, offset, u = UNSYNCED, float("nan"), float("inf")
            est = self._ensemble.estimate(local)
            sel = self._selection
            assert sel is not None
            sources = []
            for src in self._sources.values():
                e = src.filter.estimate(local)
                sources.append(
                    SourceStatus(
                        name=src.name,
                        kind=src.kind,
                        state=src.state,
                        locked=src.locked,
                        offset=e.offset if e else None,
                        uncertainty=e.uncertainty if e else None,
                        age=None if src.last_local is None else local - src.last_local,
                        samples=src.filter.accepted,
                        outliers=src.filter.outliers,
                        rejected=tuple(sorted(src.rejected.items())),
                        selected=src.selected,
                        falseticker=src.falseticker,
                        detail=src.detail,
                    )
                )
            message = sel.message
            held = self._limiter.held_back(offset) if math.isfinite(offset) else 0.0
            due = self._limiter.confirm_in(local)
            if held > 0 and due is not None:
                message += f"; forward leap of {held:.3f} s slewed (stepped in {due:.0f} s)"
            return ClockStatus(
                mode=mode,
                offset=offset,
                uncertainty=u,
                frequency=est.frequency if est else None,
                quorum=self.quorum,
                candidates=sel.candidates,
                agreeing=len(sel.truechimers),
                quorum_met=sel.ok,
                fallback=self.fallback,
                message=message,
                sources=tuple(sources),
            )
