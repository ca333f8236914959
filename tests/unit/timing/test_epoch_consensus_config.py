import asyncio
import os
import socket
import tempfile
import time

import pytest

from l2bridge.node.config import config_from_mapping
from timing import chrony, consensus, epoch
from timing import clock as clk
from timing.config import settings_from
from timing.discipline import Sample
from timing.errors import ConfigError


def test_epoch_arithmetic_and_tolerance():
    assert epoch.epoch_of(59.999, 60) == 0 and epoch.epoch_of(60.0, 60) == 1
    assert epoch.boundary(3, 10) == 30
    assert epoch.epoch_matches(5, 49.9, 10, tolerance=0.5)  # a peer slightly ahead
    assert epoch.epoch_matches(5, 60.3, 10, tolerance=0.5)  # slightly behind
    assert not epoch.epoch_matches(5, 61.0, 10, tolerance=0.5)
    for bad in (0.5, float("nan"), 10 * 86400.0):
        with pytest.raises(ConfigError):
            epoch.check_interval(bad)


def test_epoch_timer_reports_each_epoch_once_and_counts_skips():
    t = epoch.EpochTimer(10)
    assert t.poll(5.0) is None
    assert t.poll(9.99) is None
    fired = t.poll(10.001)
    assert fired is not None and fired.epoch == 1 and fired.late == pytest.approx(0.001)
    assert t.poll(15.0) is None
    fired = t.poll(41.0)
    assert fired is not None and fired.epoch == 4 and fired.skipped == 2 and t.skipped == 2
    assert t.next_boundary(41.0) == 50.0


def test_scheduler_fires_on_boundaries_of_an_offset_clock():
    async def main():
        loop = asyncio.get_running_loop()
        # a disciplined clock 0.3 s ahead of the loop's, with a fine interval
        scheduler = epoch.EpochScheduler(lambda: loop.time() + 1000.3, 1.0)
        seen = []

        async def async_cb(e):
            seen.append(("async", e))

        def broken(e):
            raise RuntimeError("callback bug")

        scheduler.add(lambda e: seen.append(("sync", e)))
        scheduler.add(broken)
        scheduler.add(async_cb)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        while len([s for s in seen if s[0] == "sync"]) < 2:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 2)
        return scheduler, seen

    scheduler, seen = asyncio.run(main())
    epochs = [e for kind, e in seen if kind == "sync"]
    assert epochs[1] == epochs[0] + 1
    assert ("async", epochs[0]) in seen
    assert scheduler.failures >= 2
    assert all(f.late >= 0 for f in scheduler.fired)


def test_scheduler_stop_returns_and_outside_cancel_propagates():
    async def main():
        loop = asyncio.get_running_loop()
        sched = epoch.EpochScheduler(lambda: loop.time() + 1000.5, 10.0)
        stop = asyncio.Event()
        task = asyncio.create_task(sched.run(stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 2)  # returns normally, no CancelledError
        assert task.done() and not task.cancelled()

        other = asyncio.create_task(sched.run(asyncio.Event()))
        await asyncio.sleep(0.05)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert other.cancelled()

        already = asyncio.Event()
        already.set()
        await asyncio.wait_for(sched.run(already), 1)

    asyncio.run(main())


def test_marzullo_selection():
    a = consensus.Candidate("a", 0.0, 1.0)
    b = consensus.Candidate("b", 0.5, 1.0)
    c = consensus.Candidate("c", 10.0, 1.0)
    assert consensus.intersect([a, b, c]) == (2, -0.5, 1.0)
    sel = consensus.select([a, b, c], quorum=3)
    assert sel.ok and sel.truechimers == ("a", "b") and sel.falsetickers == ("c",)
    assert -0.5 <= sel.offset <= 1.0
    assert sel.uncertainty <= 1.0
    assert consensus.select([a, c], quorum=2).status == consensus.NO_MAJORITY
    assert consensus.select([a, b], quorum=3).status == consensus.NO_QUORUM
    assert consensus.select([], quorum=1).status == consensus.NO_QUORUM
    one = consensus.select([a], quorum=1)
    assert one.ok and one.offset == 0.0 and one.uncertainty == 1.0


def test_chrony_sample_layout_and_feed():
    data = chrony.pack_sample(1700000000.25, -1.5e-6)
    assert len(data) == 40
    t, off, pulse, leap = chrony.unpack_sample(data)
    assert t == pytest.approx(1700000000.25) and off == -1.5e-6 and not pulse and leap == 0
    with pytest.raises(ValueError):
        chrony.unpack_sample(data[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError):
        chrony.pack_sample(float("nan"), 0.0)

    local = [100.0]
    c = clk.DisciplinedClock(local_clock=lambda: local[0], system_clock=lambda: local[0])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chrony.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        feed = chrony.ChronyFeed(path, c, system=lambda: local[0])
        try:
            assert not feed.send()  # on the system clock: nothing to tell chrony
            c.note("s", "ok", True)
            c.ingest(Sample("s", 100.0, 0.25, 1e-6))
            assert feed.send()
            _t, offset, _p, _l = chrony.unpack_sample(server.recv(64))
            assert offset == pytest.approx(0.25)
        finally:
            feed.close()
            server.close()


def test_settings_from_config_dataclass_and_mapping():
    # The node's configuration file goes through the same parser, so both agree.
    at = config_from_mapping(
        {
            "atomic_time": {
                "enabled": True,
                "sources": [{"rubidium": "/dev/ttyUSB0"}, {"gpsdo": "/dev/ttyUSB1"}],
                "consensus_quorum": 3,
            }
        },
        env={},
    ).atomic_time
    s = settings_from(at)
    assert s is at
    assert [x.kind for x in s.sources] == ["rubidium", "gpsdo"] and s.quorum == 3
    (warning,) = s.warnings()
    assert "quorum 3 exceeds the 2" in warning
    m = settings_from(
        {
            "enabled": True,
            "consensus_quorum": 1,
            "fallback": "system",
            "sources": [
                {"kind": "gpsdo", "device": "/dev/ttyS0", "baudrate": 9600, "pps": "/dev/pps0"},
                {"prs10": "/dev/ttyUSB2"},
                "system",
            ],
        }
    )
    assert m.sources[0].baudrate == 9600 and m.sources[0].pps == "/dev/pps0"
    assert not m.sources[1].gives_time and m.fallback == "system" and m.warnings() == []
    for bad, field in (
        ({"sources": [{"laser": "/dev/x"}]}, "sources[0]"),
        ({"sources": [{"kind": "gpsdo", "device": "/dev/x", "parity": "Q"}]}, "sources[0]"),
        ({"consensus_quorum": 0}, "consensus_quorum"),
        ({"fallback": "pray"}, "fallback"),
    ):
        with pytest.raises(ConfigError) as info:
            settings_from(bad)
        assert info.value.field == field


def test_node_feeds_chrony_when_configured_and_survives_a_missing_socket():
    from l2bridge.client.layers import tunnel_clock

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chrony.sock")
        cfg = config_from_mapping(
            {
                "atomic_time": {
                    "enabled": True,
                    "sources": [{"gpsdo": "/dev/nonexistent-sm-gps"}],
                    "consensus_quorum": 1,
                    "chrony_socket": path,
                }
            },
            env={},
        )
        _clock, runners = tunnel_clock(cfg)
        feeders = [r for r in runners if isinstance(r, chrony.ChronyFeeder)]
        assert len(feeders) == 1 and feeders[0].feed.path == path
        feeders[0].stop()  # never started: stopping closes its socket
        # without chrony_socket there is no feeder; `clock status` (build) never feeds
        plain = config_from_mapping(
            {"atomic_time": {"enabled": True, "sources": [{"gpsdo": "/dev/x"}]}}, env={}
        )
        assert not any(isinstance(r, chrony.ChronyFeeder) for r in tunnel_clock(plain)[1])

        local = [100.0]
        c = clk.DisciplinedClock(local_clock=lambda: local[0], system_clock=lambda: local[0])
        c.note("s", "ok", True)
        c.ingest(Sample("s", 100.0, 0.5, 1e-6))
        # chronyd not started yet: the feeder keeps trying and never raises
        early = chrony.ChronyFeeder(chrony.ChronyFeed(path, c, system=lambda: local[0]), 0.01)
        early.start()
        deadline = time.monotonic() + 5
        while early.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        early.stop()
        assert early.failures >= 2
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(5)
        feeder = chrony.ChronyFeeder(chrony.ChronyFeed(path, c, system=lambda: local[0]), 0.01)
        try:
            feeder.start()
            _t, offset, _p, _l = chrony.unpack_sample(server.recv(64))
            assert offset == pytest.approx(0.5)
        finally:
            feeder.stop()
            server.close()


def test_source_settings_a_kind_does_not_use_are_refused():
    from timing.config import settings_from as parse
    from timing.errors import ConfigError as TimingConfigError

    for kind, key, value in (
        ("rubidium", "pps", "/dev/pps0"),
        ("rubidium", "delay", 0.1),
        ("cesium", "uncertainty", 0.001),
        ("prs10", "delay", 0.1),
        ("prs10", "uncertainty", 0.1),
    ):
        section = {"enabled": True, "sources": [{"kind": kind, "device": "/dev/x", key: value}]}
        with pytest.raises(TimingConfigError, match=f"'{key}' is used only by"):
            parse(section)
    ok = {"kind": "gpsdo", "device": "/dev/x", "pps": "dcd", "delay": 0.1, "uncertainty": 0.01}
    assert parse({"enabled": True, "sources": [ok]}).sources[0].delay == 0.1
    assert parse({"sources": [{"kind": "prs10", "device": "/dev/x", "pps": "dcd"}]}).sources
