"""The exit's one token bucket: burst, refill, cap, clock steps."""

from __future__ import annotations

import pytest

from exitnode.ratelimit import TokenBucket


def test_burst_then_refill_at_rate_capped_at_burst() -> None:
    b = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.1) and not b.take(0.1)  # 0.1 s * 10/s = one token
    assert sum(b.take(100.0) for _ in range(10)) == 3  # never more than the burst


def test_clock_stepping_back_refills_nothing() -> None:
    b = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)  # backwards: no refill
    assert not b.take(10.5)  # only half a token since 10.0, not 5.5 s worth
    assert b.take(11.0)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0.0, 1.0), (-1.0, 5.0), (1.0, 0.5), (float("nan"), 2.0), (1.0, float("inf"))],
)
def test_bad_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)
