"""Forward leaps of the disciplined clock's output are bounded (virtual time, nothing sleeps)."""

from itertools import pairwise

import pytest

from tests.unit.timing.vclock import Oscillator
from timing import clock as clk
from timing.discipline import Sample
from timing.errors import ConfigError
from timing.slew import StepLimiter

JITTER = 1e-6
BOUND = 0.125 + 500e-6 * 300  # max_step + max_slew * step_confirm with the defaults


def _clock(osc, **kw):
    return clk.DisciplinedClock(local_clock=lambda: osc.local, system_clock=lambda: osc.t, **kw)


def _feed(c, osc, name, lie=0.0):
    local = osc.pps_local(JITTER)
    return c.ingest(Sample(name, local, osc.t - local + lie, JITTER))


def _synced(osc, names=("s",), **kw):
    c = _clock(osc, **kw)
    for n in names:
        c.note(n, "ok", True)
    for _ in range(30):
        osc.advance(1.0)
        for n in names:
            _feed(c, osc, n)
    mode, t, _u = c.reading()
    assert mode == clk.SYNCED and abs(t - osc.t) < 1e-4
    return c


def test_one_source_jumping_10s_does_not_carry_now_10s_ahead_at_once():
    osc = Oscillator(seed=31)
    c = _synced(osc)
    errors = []
    for _ in range(60):  # the source lies +10 s for a minute: its filter and then the
        osc.advance(1.0)  # ensemble restart on the lie after their runs of outliers
        _feed(c, osc, "s", lie=10.0)
        errors.append(c.now() - osc.t)
    # The ensemble did take the lie (so the bound, not the outlier gate, held it) ...
    st = c.status()
    assert st.offset is not None and st.offset > osc.t - osc.local + 9.9
    assert "forward leap of" in st.message and "slewed" in st.message
    # ... yet now() only gained max_step plus 500 ppm of a minute.
    assert max(errors) < 0.125 + 500e-6 * 60 + 1e-3
    # slewing: no second gains more than 500 ppm of it (plus the crystal's 20 ppm)
    assert all(b - a < 600e-6 for a, b in pairwise(errors))
    assert errors[-1] > 0.01  # and it does run fast: the lie is not simply ignored
    mode, _t, u = c.reading()
    assert mode == clk.SYNCED and u >= 9.8  # the gap is owned up to
    # The source recovers: time did not stand still for 10 s, it tracks again.
    for _ in range(40):
        osc.advance(1.0)
        _feed(c, osc, "s")
    before = c.now()
    osc.advance(1.0)
    _feed(c, osc, "s")
    after = c.now()
    assert after - before > 0.99 and abs(after - osc.t) < 0.2


def test_a_persisting_leap_is_stepped_after_step_confirm_quorum_one_cannot_outvote():
    osc = Oscillator(seed=32)
    c = _synced(osc, step_confirm=30.0)
    errors = []
    for _ in range(60):
        osc.advance(1.0)
        _feed(c, osc, "s", lie=10.0)
        errors.append(c.now() - osc.t)
    assert max(errors[:40]) < BOUND  # until confirmed by persistence, bounded
    assert errors[-1] == pytest.approx(10.0, abs=1e-3)  # then the lie is taken


def test_a_leap_agreed_by_two_sources_is_stepped_at_once():
    osc = Oscillator(seed=33)
    c = _synced(osc, names=("a", "b", "c"), quorum=3)
    errors = []
    for _ in range(40):  # every source steps: e.g. a leap second applied late
        osc.advance(1.0)
        for n in ("a", "b", "c"):
            _feed(c, osc, n, lie=2.0)
        errors.append(c.now() - osc.t)
    assert errors[-1] == pytest.approx(2.0, abs=1e-3)
    assert max(errors) <= 2.0 + 1e-3 and c.status().agreeing == 3


def test_first_disciplined_reading_steps_from_the_host_clock():
    osc = Oscillator(seed=34)
    c = clk.DisciplinedClock(local_clock=lambda: osc.local, system_clock=lambda: osc.t - 5.0)
    mode, t, _u = c.reading()
    assert mode == clk.SYSTEM and t == pytest.approx(osc.t - 5.0)
    c.note("s", "ok", True)
    osc.advance(1.0)
    _feed(c, osc, "s")
    mode, t, _u = c.reading()
    assert mode == clk.SYNCED and abs(t - osc.t) < 1e-4  # no earlier discipline to keep


def test_a_host_clock_leap_in_fallback_is_slewed_too():
    osc = Oscillator(seed=35)
    host = [0.0]
    c = clk.DisciplinedClock(
        fallback="system", local_clock=lambda: osc.local, system_clock=lambda: osc.t + host[0]
    )
    first = c.now()
    osc.advance(1.0)
    host[0] = 3600.0  # someone sets the host clock an hour ahead
    assert c.now() - first < 1.0 + 0.125 + 1e-3


def test_limiter_directly():
    lim = StepLimiter(max_step=0.1, max_slew=0.01, confirm_after=10.0)
    assert lim.follow(0.0, 5.0, disciplined=False, confirmed=False) == 5.0  # first
    assert lim.follow(1.0, 5.05, disciplined=False, confirmed=False) == 5.05  # small
    assert lim.follow(2.0, 4.0, disciplined=False, confirmed=False) == 4.0  # backward
    assert lim.follow(3.0, 9.0, disciplined=False, confirmed=False) == pytest.approx(4.01)
    assert lim.held_back(9.0) == pytest.approx(4.99) and lim.confirm_in(3.0) == 10.0
    assert lim.follow(5.0, 9.0, disciplined=False, confirmed=False) == pytest.approx(4.03)
    assert lim.follow(6.0, 9.0, disciplined=True, confirmed=False) == 9.0  # first disciplined
    assert lim.follow(7.0, 19.0, disciplined=True, confirmed=False) == pytest.approx(9.01)
    assert lim.follow(7.5, 19.0, disciplined=True, confirmed=True) == 19.0
    assert lim.confirm_in(7.5) is None
    assert lim.follow(8.0, 29.0, disciplined=True, confirmed=False) == pytest.approx(19.005)
    assert lim.follow(18.0, 29.0, disciplined=True, confirmed=False) == 29.0  # persisted
    for bad in ({"max_step": -1.0}, {"max_slew": float("nan")}, {"confirm_after": -1.0}):
        with pytest.raises(ValueError):
            StepLimiter(**bad)
    with pytest.raises(ConfigError):
        clk.DisciplinedClock(max_slew=-1.0)
