"""Cover traffic: how often an idle link sends padding-only records, and how big.

``obfuscation.cover_traffic`` picks a plan: ``on`` about one record a second, ``aggressive``
about ten, each of a random size, sent only while the link has carried no data for
``idle_s`` and never beyond ``budget`` bytes a second (a token bucket in the link). The
intervals are exponential (a Poisson process), so the records carry no period an observer
could key on. The link (l2bridge.node.link) runs the plan; the peer's session drops the records
after authenticating them and counts them (``cover_received``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from l2bridge.constants import AEAD_TAG_SIZE, COVER_AGGRESSIVE, COVER_ON, RECORD_HEADER_SIZE
from l2bridge.node.config import Obfuscation
from l2bridge.protocol.shaping import BrowserProfile, ChatterFilter, Shaper, Shaping

# Chromium's WebSocket messages measured by bench/traffic/make_profile.py: "up" is what the
# browser sends (the client follows it), "down" what the server sends (the exit follows it).
PROFILE_FILE = Path(__file__).with_name("browser_ws_profile.json")
# A shaped record's WebSocket message is the plaintext plus the record header and tag.
RECORD_OVERHEAD = RECORD_HEADER_SIZE + AEAD_TAG_SIZE


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


@dataclass(frozen=True, slots=True)
class ShapingPlan:
    """What ``obfuscation.shaping`` / ``lan_chatter`` ask of each link: a fresh shaper (and,
    on the client, chatter filter) per link, following ``up`` on the client, ``down`` on
    the exit."""

    mode: Shaping
    up: BrowserProfile
    down: BrowserProfile
    chatter: bool

    def shaper(self, is_client: bool) -> Shaper | None:
        if self.mode is Shaping.OFF:
            return None
        profile = self.up if is_client else self.down
        return Shaper(self.mode, profile, overhead=RECORD_OVERHEAD)

    def chatter_filter(self, is_client: bool) -> ChatterFilter | None:
        return ChatterFilter() if self.chatter and is_client else None


def load_profile(path: Path = PROFILE_FILE) -> tuple[BrowserProfile, BrowserProfile]:
    """(up, down) from a profile file; ``ValueError`` naming the file when unusable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return BrowserProfile.from_dict(doc["up"]), BrowserProfile.from_dict(doc["down"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"browser profile {path}: {exc}") from None


def shaping_plan(obfuscation: Obfuscation) -> ShapingPlan | None:
    """The plan for a node's ``obfuscation`` section (None: nothing to shape)."""
    mode = Shaping(obfuscation.shaping)
    chatter = obfuscation.lan_chatter == "aggregate"
    if not obfuscation.enabled or (mode is Shaping.OFF and not chatter):
        return None
    up, down = load_profile()
    return ShapingPlan(mode, up, down, chatter)
