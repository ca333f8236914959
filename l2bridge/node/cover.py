"""Cover traffic: how often an idle link sends padding-only records, and how big.

``obfuscation.cover_traffic`` picks a plan: ``on`` about one record a second, ``aggressive``
about ten, each of a random size, sent only while the link has carried no data for
``idle_s`` and never beyond ``budget`` bytes a second (a token bucket in the link). The
intervals are exponential (a Poisson process), so the records carry no period an observer
could key on. The link (l2bridge.node.link) runs the plan; the peer's session drops the records
after authenticating them and counts them (``cover_received``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from l2bridge.constants import COVER_AGGRESSIVE, COVER_ON
from l2bridge.node.config import Obfuscation


@dataclass(frozen=True, slots=True)
class CoverPlan:
    rate: float  # mean records per second while idle
    min_size: int  # padding bytes (before rounding up to the session's pad_to)
    max_size: int
    budget: float  # bytes per second at most, records included
    idle_s: float  # the link is idle when no data record went out for this long

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.budget > 0 and self.idle_s >= 0):
            raise ValueError("cover rate, budget and idle time must be positive")
        if not 0 <= self.min_size <= self.max_size <= 65536:
            raise ValueError("cover sizes must be 0 <= min <= max <= 65536")

    @classmethod
    def for_level(cls, level: str) -> CoverPlan | None:
        """The plan for ``off``, ``on`` or ``aggressive`` (None for off)."""
        if level == "off":
            return None
        rate, min_size, max_size, budget, idle_s = {"on": COVER_ON, "aggressive": COVER_AGGRESSIVE}[
            level
        ]
        return cls(rate, min_size, max_size, budget, idle_s)

    def next_delay(self, rng: random.Random) -> float:
        return rng.expovariate(self.rate)

    def size(self, rng: random.Random) -> int:
        return rng.randint(self.min_size, self.max_size)


def obfuscation_settings(obfuscation: Obfuscation) -> tuple[int, CoverPlan | None]:
    """(SessionConfig.pad_to, cover plan) for a node's ``obfuscation`` section: padding
    and cover traffic only when ``obfuscation.enabled``."""
    if not obfuscation.enabled:
        return 0, None
    return obfuscation.padding, CoverPlan.for_level(obfuscation.cover_traffic.value)
