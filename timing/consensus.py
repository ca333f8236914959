"""Sans-I/O source selection: interval intersection (Marzullo) with a quorum.

Each candidate says "true offset lies in ``[offset - u, offset + u]``". The intersection
covered by the most intervals is where the truth most likely lies; sources whose interval
misses it are *falsetickers*.

What the quorum means here, precisely:

1. A *candidate* is a source that is lock-valid (its device says it is locked/has a fix)
   and fresh (heard from within its staleness limit). The caller decides both.
2. The selection succeeds only if there are at least ``quorum`` candidates **and** the
   best intersection is shared by a strict majority of the candidates. With three
   candidates and quorum 3, one liar is therefore outvoted (2 of 3 agree) and flagged.
3. Otherwise the result says why (``no-quorum``: too few candidates; ``no-majority``:
   no interval is agreed by more than half) and names the sources, so the clock can fall
   back as configured and ``shadowmesh clock status`` can show it.

The chosen offset is the inverse-variance mean of the agreeing sources, clipped into the
intersection; its uncertainty reaches to the far edge of the intersection.

A candidate's offset must be finite and its uncertainty finite and not negative: a negative
one would otherwise pass the intersection (which takes the width) yet dominate the
weighted mean, so :class:`Candidate` refuses it (``ValueError``, a caller's bug).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

OK = "ok"
NO_QUORUM = "no-quorum"
NO_MAJORITY = "no-majority"


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    offset: float
    uncertainty: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.offset):
            raise ValueError(f"candidate {self.name}: offset must be finite")
        if not (math.isfinite(self.uncertainty) and self.uncertainty >= 0):
            raise ValueError(f"candidate {self.name}: uncertainty must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class Selection:
    status: str
    offset: float | None
    uncertainty: float | None
    truechimers: tuple[str, ...]
    falsetickers: tuple[str, ...]
    candidates: int
    quorum: int
    message: str

    @property
    def ok(self) -> bool:
        return self.status == OK


def intersect(candidates: Sequence[Candidate]) -> tuple[int, float, float]:
    """Marzullo's algorithm: (count, low, high) of the region most intervals share."""
    edges: list[tuple[float, int]] = []
    for c in candidates:
        u = abs(c.uncertainty)
        edges.append((c.offset - u, -1))  # start; sorts before an end at the same point
        edges.append((c.offset + u, +1))
    edges.sort()
    best, count = 0, 0
    lo = hi = 0.0
    for i, (value, kind) in enumerate(edges):
        count -= kind
        if kind == -1 and count > best:
            best = count
            lo = value
            hi = edges[i + 1][0]
    return best, lo, hi


def _overlaps(c: Candidate, lo: float, hi: float) -> bool:
    u = abs(c.uncertainty)
    return c.offset - u <= hi and c.offset + u >= lo


def select(candidates: Sequence[Candidate], quorum: int) -> Selection:
    n = len(candidates)
    names = tuple(c.name for c in candidates)
    if n < quorum or n == 0:
        return Selection(
            NO_QUORUM,
            None,
            None,
            (),
            (),
            n,
            quorum,
            f"{n} healthy source(s), quorum is {quorum}",
        )
    count, lo, hi = intersect(candidates)
    inside = [c for c in candidates if _overlaps(c, lo, hi)]
    if 2 * count <= n:
        return Selection(
            NO_MAJORITY,
            None,
            None,
            (),
            names,
            n,
            quorum,
            f"best agreement is {count} of {n} sources: no majority",
        )
    falsetickers = tuple(c.name for c in candidates if not _overlaps(c, lo, hi))
    weights = [1.0 / max(c.uncertainty, 1e-12) ** 2 for c in inside]
    mean = sum(w * c.offset for w, c in zip(weights, inside, strict=True)) / sum(weights)
    offset = min(max(mean, lo), hi)
    message = f"{count} of {n} sources agree"
    if falsetickers:
        message += "; outvoted: " + ", ".join(falsetickers)
    return Selection(
        OK,
        offset,
        max(offset - lo, hi - offset),
        tuple(c.name for c in inside),
        falsetickers,
        n,
        quorum,
        message,
    )
