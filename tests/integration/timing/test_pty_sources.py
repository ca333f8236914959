"""Simulators on real pseudo-terminals, read through pyserial, in real time."""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from hardware.serial_port import PySerialPort, SerialSettings
from lab.clocksim import ClockModel, GpsdoSim, Prs10Sim, ScpiSim, Window
from timing import clock as clk
from timing.sources import GpsdoSource, Prs10Source, ScpiSource

pytestmark = pytest.mark.integration

OFFSET = 0.25  # the simulated devices run a quarter second ahead of this host


def _wait(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _reading(clock):
    """``clock.reading()`` and whether its stated uncertainty covers the true time.

    The host's clock read just before and just after bounds the true time of the reading,
    so a test thread preempted between the reads cannot fail a correct clock.
    """
    before = time.time() + OFFSET
    mode, t, u = clock.reading()
    after = time.time() + OFFSET
    return mode, t, u, t + u >= before and t - u <= after


@pytest.fixture
def tmpdir_pid():
    with tempfile.TemporaryDirectory(prefix=f"clocksim-{os.getpid()}-") as d:
        yield d


def test_nmea_only_error_within_reported_uncertainty_and_unplug_holdover_replug(tmpdir_pid):
    """What a user relies on: the clock's stated uncertainty covers its real error.

    The accuracy figure itself (the < 2 ms goal for NMEA alone) is measured on a quiet
    machine by ``bench/timing.py``; here the machine may be loaded by other tests, which
    delays sentence arrivals, and the clock must say so in its uncertainty rather than
    claim more than it has.
    """
    link = os.path.join(tmpdir_pid, "gpsdo")
    sim = GpsdoSim(link, ClockModel(offset=OFFSET, jitter=50e-6, seed=1))
    clock = clk.DisciplinedClock(stale_after=2.5)
    src = GpsdoSource("gpsdo", clock, PySerialPort(SerialSettings(link)))
    sim.start()
    src.start()
    try:
        assert _wait(lambda: clock.status().mode == clk.SYNCED, 10)
        # converged: the filter has averaged a few seconds of sentence arrivals
        assert _wait(lambda: clock.status().sources[0].samples >= 6, 10)
        readings = []
        for _ in range(16):  # 8 s of readings after convergence
            time.sleep(0.5)
            mode, t, u, covered = _reading(clock)
            assert mode == clk.SYNCED
            # the NMEA bound is 2 ms; a few sigmas of a converged filter add little to it
            assert u < 4e-3, u
            readings.append((t, u, covered))
        assert all(covered for _t, _u, covered in readings), readings
        sim.unplug()
        assert _wait(lambda: clock.status().mode == clk.HOLDOVER, 6)
        st = next(s for s in clock.status().sources if s.name == "gpsdo")
        assert st.state == "disconnected"
        mode, t, u, covered = _reading(clock)
        assert mode == clk.HOLDOVER and u < 4e-3 and covered  # holdover keeps time
        sim.replug()
        assert _wait(lambda: clock.status().mode == clk.SYNCED, 8)
        assert src.reconnects >= 1
    finally:
        src.stop()
        sim.stop()
    assert not os.path.exists(link)


def test_scpi_and_prs10_over_pty_with_a_lying_gpsdo_outvoted(tmpdir_pid):
    d = tmpdir_pid
    gps = GpsdoSim(f"{d}/gps", ClockModel(offset=OFFSET, lies=(Window(0, 3600, 0.05),)))
    rb1 = ScpiSim(f"{d}/rb1", ClockModel(offset=OFFSET))
    rb2 = ScpiSim(f"{d}/rb2", ClockModel(offset=OFFSET))
    prs = Prs10Sim(f"{d}/prs", ClockModel(offset=OFFSET, lock_after=1.0))
    clock = clk.DisciplinedClock(quorum=3)
    sources = [
        GpsdoSource("gps", clock, PySerialPort(SerialSettings(f"{d}/gps"))),
        ScpiSource("rb1", clock, PySerialPort(SerialSettings(f"{d}/rb1")), poll_interval=0.5),
        ScpiSource("rb2", clock, PySerialPort(SerialSettings(f"{d}/rb2")), poll_interval=0.5),
        Prs10Source("prs", clock, PySerialPort(SerialSettings(f"{d}/prs")), poll_interval=0.5),
    ]
    sims = [gps, rb1, rb2, prs]
    for x in (*sims, *sources):
        x.start()
    try:
        assert _wait(lambda: clock.status().quorum_met, 10)
        assert _wait(
            lambda: any(s.falseticker for s in clock.status().sources if s.name == "gps"), 6
        )
        assert _wait(lambda: any(s.locked for s in clock.status().sources if s.name == "prs"), 5)
        st = clock.status()
        by = {s.name: s for s in st.sources}
        assert by["rb1"].selected and by["rb2"].selected and not by["gps"].selected
        assert by["prs"].locked and not by["prs"].selected  # no PPS reader: status only
        assert sources[3].identity is not None and sources[3].time_tag is not None
        mode, t, u, covered = _reading(clock)
        assert mode == clk.SYNCED and u < 2e-3 and covered, (mode, t, u)
    finally:
        for x in sources:
            x.stop()
        for x in sims:
            x.stop()
