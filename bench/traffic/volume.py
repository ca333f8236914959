"""The handshake's volume: a floor under what any shaping of the tunnel can hide.

Every tunnel session starts with the tunnel's own hybrid handshake (X25519 + ML-KEM-1024 keys,
Ed25519 + ML-DSA-87 signatures, the exit's evidence) right after the WebSocket upgrade. Its
bytes must cross the path in both directions before a single frame can, and shaping can only
add bytes, never remove them. So a censor can use a rule as plain as "at least U bytes up
and D bytes down within the first second" (U and D: the least any tunnel session sent), and
no shaping mode gets a tunnel session past it.

Against a set of browser sessions, the rule leaves a floor: if a fraction f of the browser
sessions also move U up and D down in their first second, a tunnel shaped perfectly like
those sessions (the best any shaping can do while still carrying the handshake) is still
told apart with ROC AUC ``1 - f / 2`` by this rule alone. With f = 0 no shaping can bring
the AUC below 1.

Pure Python (no scikit-learn), so the tests run without the bench extra.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WINDOW_S = 1.0  # the tunnel's handshake is done well within this (tens of ms on a LAN)

Packet = tuple[float, int, int]  # (time, direction: +1 up / -1 down, TCP payload bytes)


def early_bytes(packets: Sequence[Packet], window_s: float = WINDOW_S) -> tuple[int, int]:
    """Bytes up and down within ``window_s`` of the session's first packet."""
    if not packets:
        return 0, 0
    end = packets[0][0] + window_s
    up = down = 0
    for t, d, n in packets:
        if t > end:
            break
        if d > 0:
            up += n
        else:
            down += n
    return up, down


@dataclass(frozen=True, slots=True)
class VolumeRule:
    """Tunnel when at least ``up`` bytes went up and ``down`` bytes down early on."""

    up: int
    down: int

    @classmethod
    def fit(cls, tunnels: Iterable[tuple[int, int]]) -> VolumeRule:
        """The least each direction carried over these tunnel sessions' early bytes."""
        pairs = list(tunnels)
        if not pairs:
            raise ValueError("no tunnel sessions to fit the rule on")
        return cls(min(u for u, _ in pairs), min(d for _, d in pairs))

    def score(self, up: int, down: int) -> float:
        """1.0 when both thresholds are met, else how far the session got toward the nearer
        miss (a continuous score, so a ROC curve can be drawn from it)."""
        ratio = min(up / self.up if self.up else 1.0, down / self.down if self.down else 1.0)
        return min(1.0, ratio)


@dataclass(frozen=True, slots=True)
class Floor:
    rule: VolumeRule
    carriers: int  # browser sessions that met both thresholds
    browsers: int

    @property
    def auc(self) -> float:
        """The AUC the rule alone reaches against a perfect mimic of the carriers."""
        return 1.0 - self.carriers / self.browsers / 2 if self.browsers else 1.0

    def as_json(self) -> dict[str, object]:
        return {
            "window_s": WINDOW_S,
            "tunnel_min_up_bytes": self.rule.up,
            "tunnel_min_down_bytes": self.rule.down,
            "browser_sessions_carrying_it": self.carriers,
            "browser_sessions": self.browsers,
            "floor_auc": round(self.auc, 4),
        }


def floor(browsers: Iterable[tuple[int, int]], tunnels: Iterable[tuple[int, int]]) -> Floor:
    """The rule fitted on all of ``tunnels`` (early bytes), and how many ``browsers`` pass it."""
    rule = VolumeRule.fit(tunnels)
    early = list(browsers)
    carriers = sum(1 for u, d in early if u >= rule.up and d >= rule.down)
    return Floor(rule, carriers, len(early))
