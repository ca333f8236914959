"""Consensus inputs that would bend the vote: negative or non-finite uncertainty/offset."""

import math

import pytest

from tests.unit.timing.vclock import Oscillator
from timing import clock as clk
from timing import consensus
from timing.discipline import Sample, Verdict


@pytest.mark.parametrize(
    ("offset", "uncertainty"),
    [(0.0, -1e-3), (0.0, math.nan), (0.0, math.inf), (math.nan, 1e-3), (math.inf, 1e-3)],
)
def test_candidate_refuses_negative_or_non_finite_values(offset, uncertainty):
    with pytest.raises(ValueError, match="candidate x"):
        consensus.Candidate("x", offset, uncertainty)


def test_zero_uncertainty_is_allowed_and_weighted_without_dividing_by_zero():
    a = consensus.Candidate("a", 0.0, 0.0)
    b = consensus.Candidate("b", 0.0, 1.0)
    sel = consensus.select([a, b], quorum=2)
    assert sel.ok and sel.offset == 0.0 and sel.truechimers == ("a", "b")


def test_a_sample_with_negative_uncertainty_is_rejected_not_voted():
    osc = Oscillator(seed=21)
    c = clk.DisciplinedClock(quorum=1, local_clock=lambda: osc.local, system_clock=lambda: osc.t)
    for n in ("good", "bad"):
        c.note(n, "ok", True)
    for _ in range(20):
        osc.advance(1.0)
        local = osc.pps_local(1e-6)
        assert c.ingest(Sample("good", local, osc.t - local, 1e-6)) is Verdict.ACCEPTED
        # a misconfigured source: 3 ms off, "uncertainty" -1 ms as its bias bound
        verdict = c.ingest(Sample("bad", local, osc.t - local + 3e-3, 1e-6, -1e-3))
        assert verdict is Verdict.OUTLIER
        verdict = c.ingest(Sample("bad", local, math.nan, 1e-6))
        assert verdict is Verdict.OUTLIER
    mode, t, _u = c.reading()
    assert mode == clk.SYNCED and abs(t - osc.t) < 1e-4
    by = {s.name: s for s in c.status().sources}
    assert dict(by["bad"].rejected) == {"bad-sample": 40}
    assert by["bad"].samples == 0 and not by["bad"].selected
