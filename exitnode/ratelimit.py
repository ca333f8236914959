"""One token bucket for the exit's rate limits (sans-I/O: time is passed in).

The switch keeps one per port and per kind of flood. ``attestation.provider`` has its own
(attestation sits below ``exitnode`` and may not import it).
"""

from __future__ import annotations

import math


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``take`` spends one if it can.

    A clock that steps back refills nothing (and is not held against the bucket later).
    """

    __slots__ = ("_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(burst) and burst >= 1):
            raise ValueError("rate must be positive and burst at least 1, both finite")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        if now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
