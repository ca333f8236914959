"""Rotation glue: the tunnel clock's fallbacks, the epoch driver and the rekey tally."""

from __future__ import annotations

import asyncio

from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import RekeyTally, RotationDriver, TunnelClock, exit_session_config
from l2bridge.protocol.session import SessionConfig
from timing.clock import DisciplinedClock
from timing.config import build, settings_from
from timing.errors import NoQuorumError


class FakeSession:
    def __init__(self) -> None:
        self.due = False

    def needs_rekey(self, now: float) -> bool:
        return self.due


class FakeLink:
    def __init__(self) -> None:
        self.rekeys_completed = 0
        self.asked: list[int] = []
        self.session = FakeSession()

    def rekey(self, epoch: int) -> bool:
        self.asked.append(epoch)
        self.rekeys_completed += 1
        return True


def test_dead_source_falls_back_to_system_clock_and_says_so():
    settings = settings_from({"enabled": True, "sources": [{"rubidium": "/dev/nonexistent-sm"}]})
    clock, sources = build(settings)
    for s in sources:
        s.start()
    try:
        tc = TunnelClock(clock)
        for _ in range(50):
            status = clock.status()
            if status.sources and status.sources[0].state == "disconnected":
                break
            asyncio.run(asyncio.sleep(0.02))
        assert status.sources[0].state == "disconnected"
        assert "nonexistent" in status.sources[0].detail
        t = tc.now()
        assert tc.mode == "system" and tc.epoch_time() is not None
        assert t > 1.6e9
        metrics = Metrics("exit")
        tc.publish(metrics)
        gauges = metrics.snapshot()["gauges"]
        assert gauges["clock_mode"] == 2.0 and gauges["clock_uncertainty_s"] > 0
    finally:
        for s in sources:
            s.stop()


def test_refusing_clock_pauses_rotation_but_never_raises():
    link = FakeLink()
    tc = TunnelClock(DisciplinedClock(fallback="refuse"))
    assert tc.now() > 1.6e9  # sessions still get a time
    assert tc.epoch_time() is None and tc.mode == "unsynced"
    driver = RotationDriver(tc, 1.0, lambda: link)
    driver.on_epoch(7)
    assert link.asked == [] and driver.paused == 1


def test_driver_rekeys_current_link_and_tallies():
    link = FakeLink()
    metrics = Metrics("client")
    current: list[FakeLink | None] = [None]
    driver = RotationDriver(TunnelClock(None), 1.0, lambda: current[0], metrics)
    driver.on_epoch(5)  # no link yet: nothing to do
    current[0] = link
    driver.on_epoch(6)
    driver.on_epoch(7)
    assert link.asked == [6, 7] and driver.started == [6, 7]
    assert driver.tally is not None
    driver.tally.fold()
    assert metrics.counters.rekeys == 2


def test_driver_fires_on_real_boundaries():
    link = FakeLink()

    async def scenario() -> None:
        driver = RotationDriver(TunnelClock(None), 1.0, lambda: link)
        stop = asyncio.Event()
        task = asyncio.ensure_future(driver.run(stop))
        for _ in range(40):
            if len(link.asked) >= 2:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert len(link.asked) >= 2 and link.asked[1] == link.asked[0] + 1


def test_tally_counts_each_rekey_once():
    metrics = Metrics("exit")
    tally = RekeyTally(metrics.counters)
    a, b = FakeLink(), FakeLink()
    a.rekeys_completed = 3  # done before tracking: not ours to count
    tally.track(a)
    tally.track(b)
    a.rekeys_completed += 2
    b.rekeys_completed += 1
    tally.fold()
    tally.fold()
    assert metrics.counters.rekeys == 3


def test_exit_session_checks_epochs():
    config = exit_session_config(10.0, SessionConfig(pad_to=64))
    assert config.rekey_interval == 10.0 and config.pad_to == 64


def test_volume_rekey_between_boundaries_only_when_a_key_is_due():
    link = FakeLink()
    tc = TunnelClock()  # system clock
    driver = RotationDriver(tc, 3600.0, lambda: link)
    assert driver.check_volume() is False and link.asked == []
    link.session.due = True
    assert driver.check_volume() is True
    # started in the current clock epoch, not the next boundary's
    assert link.asked == [driver.scheduler.current_epoch()]
    assert driver.volume_rekeys == 1
    paused = RotationDriver(TunnelClock(DisciplinedClock(fallback="refuse")), 60.0, lambda: link)
    assert paused.check_volume() is False and len(link.asked) == 1
    assert RotationDriver(tc, 60.0, lambda: None).check_volume() is False


class ScriptedClock(DisciplinedClock):
    """A disciplined clock whose readings the test sets, counting how often it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.value: tuple[str, float, float] | None = ("synced", 1_000.0, 1e-5)
        self.reads = 0

    def reading(self) -> tuple[str, float, float]:
        self.reads += 1
        if self.value is None:
            raise NoQuorumError("lost")
        return self.value


def test_now_carries_one_reading_forward_within_the_window():
    disciplined = ScriptedClock()
    mono = [50.0]
    tc = TunnelClock(disciplined, reuse_s=0.01, monotonic=lambda: mono[0])
    assert tc.now() == 1_000.0 and disciplined.reads == 1
    mono[0] += 0.004
    # the disciplined clock moved on, but within the window the reading is carried
    disciplined.value = ("synced", 1_000.5, 1e-5)
    assert tc.now() == 1_000.004 and disciplined.reads == 1
    mono[0] += 0.007  # 11 ms after the reading: read afresh
    assert tc.now() == 1_000.5 and disciplined.reads == 2
    # rotation's boundaries and the published mode are never carried
    disciplined.value = ("holdover", 1_000.6, 1e-3)
    assert tc.epoch_time() == 1_000.6 and tc.mode == "holdover" and disciplined.reads == 3


def test_now_never_steps_back_by_the_carry_but_passes_a_real_step_back():
    disciplined = ScriptedClock()
    mono = [50.0]
    tc = TunnelClock(disciplined, reuse_s=0.01, monotonic=lambda: mono[0])
    tc.now()
    mono[0] += 0.0099
    carried = tc.now()
    mono[0] += 0.0002
    # the discipline slewed: the fresh reading is a few us behind what was carried
    disciplined.value = ("synced", carried - 5e-6, 1e-5)
    assert tc.now() == carried
    # the system clock (the fallback) stepped back an hour: handed on, not held an hour
    disciplined.value = ("system", carried - 3_600.0, 0.1)
    mono[0] += 0.02
    assert tc.now() == carried - 3_600.0 and tc.mode == "system"


def test_lost_quorum_is_noticed_within_the_window():
    disciplined = ScriptedClock()
    mono = [50.0]
    tc = TunnelClock(disciplined, reuse_s=0.01, monotonic=lambda: mono[0])
    tc.now()
    assert tc.mode == "synced"
    disciplined.value = None
    mono[0] += 0.005
    tc.now()
    assert tc.mode == "synced"  # still carried
    mono[0] += 0.005
    tc.now()
    assert tc.mode == "unsynced"
