"""The demo's expectations match what the clients really do.

``best_exit`` is the demo's statement of which exit every client must pick; it must agree
with the clients' ranking (``l2bridge.selection.rank``) for fresh, healthy exits, and the
demo's timers must keep exits fresh and the first exit a reputation band ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from exitnode.demo_steps import best_exit
from exitnode.demo_world import Settings
from l2bridge.selection import REPUTATION_BAND, Refusals, SelectionPolicy, rank

NOW = 1_000_000


@dataclass(frozen=True, slots=True)
class Point:
    x: bytes
    y: bytes


@dataclass(frozen=True, slots=True)
class Record:
    node_id: bytes
    reputation: int
    last_attestation: int
    endpoint: str = "ws://172.31.0.1:8443/ws"
    ak: Point = Point(b"\1" * 32, b"\2" * 32)
    status: str = "active"
    healthy: bool = True


@given(
    reps=st.lists(st.integers(500, 1000), min_size=2, max_size=2),
    ids=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=2, unique=True),
    ages=st.lists(st.integers(0, 2), min_size=2, max_size=2),
)
def test_best_exit_is_what_the_clients_rank_first(reps, ids, ages):
    settings = Settings()
    names = ("exit-1", "exit-2")
    records = [Record(i, r, NOW - a) for i, r, a in zip(ids, reps, ages, strict=True)]
    policy = SelectionPolicy(min_reputation=500, max_attestation_age=settings.window_s)
    ranked = rank(records, policy, Refusals(), NOW)
    assert ranked.best is not None
    chosen = best_exit(dict(zip(names, reps, strict=True)), dict(zip(names, ids, strict=True)))
    assert ids[names.index(chosen)] == ranked.best.node_id


def test_timers_keep_exits_fresh_and_the_first_exit_a_band_ahead():
    for window in (4, 6, 8, 60):
        s = Settings(window_s=window)
        # attested at most one upkeep period (+ a round's time) ago: younger than half a
        # window, so freshness never reorders the exits
        assert s.upkeep_s < window / 2
        # 10 reputation per on-time round: the head start outlasts one band (5 rounds)
        # even if the second exit gains a round on the first
        rounds_ahead = s.head_start_s / s.upkeep_s
        assert (rounds_ahead - 1) * 10 >= REPUTATION_BAND
