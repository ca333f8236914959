"""A simulated local oscillator and PPS edges, in virtual time (nothing sleeps)."""

from __future__ import annotations

import math
import random


class Oscillator:
    """True time ``t`` and the local timescale ``local = t - theta`` of a drifting crystal."""

    def __init__(
        self,
        seed: int = 1,
        *,
        freq: float = 20e-6,
        q_wfm: float = 1e-16,
        q_rwfm: float = 1e-18,
        start: float = 1.7e9,
        theta: float = 0.0123,
    ) -> None:
        self.rng = random.Random(seed)
        self.t = start
        self.theta = theta  # true minus local
        self.y = freq
        self.q_wfm = q_wfm
        self.q_rwfm = q_rwfm

    @property
    def local(self) -> float:
        return self.t - self.theta

    def advance(self, dt: float) -> None:
        steps = max(1, int(dt))
        h = dt / steps
        for _ in range(steps):
            self.y += self.rng.gauss(0.0, math.sqrt(self.q_rwfm * h))
            self.theta += self.y * h + self.rng.gauss(0.0, math.sqrt(self.q_wfm * h))
            self.t += h

    def pps_local(self, jitter: float) -> float:
        """Local timestamp of the PPS edge at the current (whole-second) true time."""
        return self.local + self.rng.gauss(0.0, jitter)
