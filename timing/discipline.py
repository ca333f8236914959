"""Sans-I/O clock discipline: a two-state Kalman filter of the local oscillator.

The state is the offset ``theta`` (true time minus local time, seconds) and the frequency
``f`` (seconds per second) of the local timescale against a source. Between measurements
the offset grows by ``f * dt`` and both states wander with the oscillator's noise: white
frequency noise ``q_wfm`` and random-walk frequency noise ``q_rwfm``, the standard clock
model (e.g. Zucca & Tavella). That same propagation is holdover: with no measurements the
covariance keeps growing, so the reported uncertainty grows as ``sqrt(q_wfm*t +
q_rwfm*t^3/3)`` plus the frequency error carried forward.

Measurements further than ``outlier_sigmas`` from the prediction are refused; after
``max_outliers`` refusals in a row the filter takes it that the source stepped and starts
again from the new measurement (the caller's consensus decides whether to believe it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from timing.constants import (
    CONVERGED_SIGMA,
    INITIAL_FREQ_SIGMA,
    MAX_CONSECUTIVE_OUTLIERS,
    OSC_RANDOM_WALK_FM,
    OSC_WHITE_FM,
    OUTLIER_SIGMAS,
    UNCERTAINTY_SIGMAS,
)


@dataclass(frozen=True, slots=True)
class FilterParams:
    q_wfm: float = OSC_WHITE_FM
    q_rwfm: float = OSC_RANDOM_WALK_FM
    initial_freq_sigma: float = INITIAL_FREQ_SIGMA
    outlier_sigmas: float = OUTLIER_SIGMAS
    max_outliers: int = MAX_CONSECUTIVE_OUTLIERS
    converged_sigma: float = CONVERGED_SIGMA


@dataclass(frozen=True, slots=True)
class Estimate:
    """The filter's view at local time ``local``.

    ``uncertainty`` bounds the error: the measurements' systematic bound plus
    ``UNCERTAINTY_SIGMAS`` standard deviations of the offset.
    """

    local: float
    offset: float
    frequency: float
    offset_sigma: float
    frequency_sigma: float
    bias_bound: float
    age: float  # seconds since the last accepted measurement

    @property
    def uncertainty(self) -> float:
        return self.bias_bound + UNCERTAINTY_SIGMAS * self.offset_sigma


class Verdict(Enum):
    ACCEPTED = "accepted"
    OUTLIER = "outlier"
    RESTARTED = "restarted"


class ClockFilter:
    """Offset and frequency of the local timescale against one reference."""

    def __init__(self, params: FilterParams | None = None) -> None:
        self.params = params or FilterParams()
        self._t: float | None = None
        self._x = (0.0, 0.0)
        self._p = (0.0, 0.0, 0.0)  # P00, P01, P11
        self._bias = 0.0
        self._last_accept = 0.0
        self._outliers_in_row = 0
        self.accepted = 0
        self.outliers = 0
        self.restarts = 0

    @property
    def started(self) -> bool:
        return self._t is not None

    def _predict(self, t: float) -> tuple[tuple[float, float], tuple[float, float, float]]:
        assert self._t is not None
        dt = max(0.0, t - self._t)
        theta, f = self._x
        p00, p01, p11 = self._p
        q1, q2 = self.params.q_wfm, self.params.q_rwfm
        # P' = F P F^T + Q with F = [[1, dt], [0, 1]]
        n00 = p00 + 2 * dt * p01 + dt * dt * p11 + q1 * dt + q2 * dt**3 / 3
        n01 = p01 + dt * p11 + q2 * dt * dt / 2
        n11 = p11 + q2 * dt
        return (theta + f * dt, f), (n00, n01, n11)

    def _start(self, local: float, offset: float, sigma: float, bias: float) -> None:
        self._t = local
        self._x = (offset, 0.0)
        self._p = (sigma * sigma, 0.0, self.params.initial_freq_sigma**2)
        self._bias = bias
        self._last_accept = local
        self._outliers_in_row = 0

    def update(self, local: float, offset: float, sigma: float, bias: float = 0.0) -> Verdict:
        """Feed one measurement: at local time ``local`` the reference said ``offset``.

        ``sigma`` is its random noise (1 sigma), ``bias`` a bound on its systematic error.
        Measurements older than the last one are ignored as outliers.
        """
        sigma = max(sigma, 1e-9)
        if self._t is None:
            self._start(local, offset, sigma, bias)
            self.accepted += 1
            return Verdict.ACCEPTED
        if local < self._t:
            self.outliers += 1
            return Verdict.OUTLIER
        (theta, f), (p00, p01, p11) = self._predict(local)
        r = sigma * sigma
        innovation = offset - theta
        s = p00 + r
        if innovation * innovation > self.params.outlier_sigmas**2 * s:
            self._outliers_in_row += 1
            self.outliers += 1
            if self._outliers_in_row >= self.params.max_outliers:
                self.restarts += 1
                self._start(local, offset, sigma, bias)
                return Verdict.RESTARTED
            return Verdict.OUTLIER
        k0, k1 = p00 / s, p01 / s
        self._x = (theta + k0 * innovation, f + k1 * innovation)
        # Joseph-free form is fine here: the 2x2 update stays symmetric by construction
        self._p = (p00 - k0 * p00, p01 - k0 * p01, p11 - k1 * p01)
        self._t = local
        self._bias = bias
        self._last_accept = local
        self._outliers_in_row = 0
        self.accepted += 1
        return Verdict.ACCEPTED

    def estimate(self, local: float) -> Estimate | None:
        """The state propagated to ``local`` (holdover if no measurement came since)."""
        if self._t is None:
            return None
        t = max(local, self._t)
        (theta, f), (p00, _p01, p11) = self._predict(t)
        return Estimate(
            local=t,
            offset=theta,
            frequency=f,
            offset_sigma=math.sqrt(max(p00, 0.0)),
            frequency_sigma=math.sqrt(max(p11, 0.0)),
            bias_bound=self._bias,
            age=t - self._last_accept,
        )

    def converged(self, local: float) -> bool:
        est = self.estimate(local)
        return est is not None and est.offset_sigma <= self.params.converged_sigma

    def reset(self) -> None:
        self._t = None
        self._outliers_in_row = 0


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement from a source.

    At local time ``local`` the source said true time was ``local + offset``. ``sigma``
    is the measurement's random noise (1 sigma) and ``bias`` a bound on its systematic
    error (e.g. how late a serial sentence may be).
    """

    source: str
    local: float
    offset: float
    sigma: float
    bias: float = 0.0
