"""Sans-I/O bound on how fast the clock's output may jump forward.

The clock's estimate (its ensemble filter, or the system clock as a fallback) can leap: a
source that lies, or whose filter restarts after a run of outliers, restarts the ensemble
at the new value. A forward leap is the harmful one: ``now()`` never goes back, so time
would then stand still until the real time caught up, and epochs cut from it would run
ahead of the peer's. So the output follows the estimate through this limiter:

* a correction backwards, or forwards by at most ``max_step``, is taken at once (backward
  ones are then held by the clock's never-backwards rule, as before);
* a larger forward correction is slewed: the output runs at most ``max_slew`` seconds per
  second faster than the local clock;
* it is stepped at once only when confirmed: by the caller (at least two agreeing sources
  put the time there), or by persisting ``confirm_after`` seconds of local time, or on the
  first disciplined reading (nothing earlier to keep continuity with but the host clock).

With the defaults the output cannot run ahead of the truth by more than ``max_step +
max_slew * confirm_after`` (0.275 s) before a step is confirmed: inside the peer's epoch
tolerance. A quorum of 1 cannot outvote a lying source: a lie that persists for
``confirm_after`` is taken. Only more sources and a higher quorum defend against that.
"""

from __future__ import annotations

import math

from timing.constants import MAX_FORWARD_STEP, MAX_SLEW_RATE, STEP_CONFIRM_AFTER


class StepLimiter:
    """Follows a target offset (true minus local time) with forward leaps bounded."""

    __slots__ = (
        "_disciplined",
        "_local",
        "_since",
        "applied",
        "confirm_after",
        "max_slew",
        "max_step",
    )

    def __init__(
        self,
        max_step: float = MAX_FORWARD_STEP,
        max_slew: float = MAX_SLEW_RATE,
        confirm_after: float = STEP_CONFIRM_AFTER,
    ) -> None:
        for name, value in (("max_step", max_step), ("max_slew", max_slew)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and not negative")
        if not (confirm_after >= 0):  # inf allowed: never step on persistence alone
            raise ValueError("confirm_after must not be negative")
        self.max_step = max_step
        self.max_slew = max_slew
        self.confirm_after = confirm_after
        self.applied: float | None = None  # the offset the output uses now
        self._local = 0.0  # local time of the last update
        self._since: float | None = None  # local time a held-back leap was first seen
        self._disciplined = False

    def follow(self, local: float, target: float, *, disciplined: bool, confirmed: bool) -> float:
        """The offset to use at ``local`` for an estimate ``target``; updates the state.

        ``disciplined``: the target comes from time sources (not the host clock fallback).
        ``confirmed``: the caller vouches for a leap (enough independent sources agree).
        """
        prev = self.applied
        first_disciplined = disciplined and not self._disciplined
        self._disciplined = self._disciplined or disciplined
        if prev is None or first_disciplined or target - prev <= self.max_step or confirmed:
            return self._take(local, target)
        if self._since is None:
            self._since = local
        if local - self._since >= self.confirm_after:
            return self._take(local, target)
        slewed = prev + self.max_slew * max(0.0, local - self._local)
        self._local = local
        self.applied = min(target, slewed)
        return self.applied

    def held_back(self, target: float) -> float:
        """How much of a forward leap to ``target`` is still held back (0 if none)."""
        if self.applied is None:
            return 0.0
        return max(0.0, target - self.applied)

    def confirm_in(self, local: float) -> float | None:
        """Seconds until a held-back leap is stepped by persistence; None if none is held."""
        if self._since is None:
            return None
        return max(0.0, self.confirm_after - (local - self._since))

    def _take(self, local: float, target: float) -> float:
        self._since = None
        self._local = local
        self.applied = target
        return target
