"""Per-device policy: VLANs and broadcast rate as the device's PortPolicy, a byte rate in
front of the switch, allowed hours; and the ``devices`` section's validation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exitnode.policy import (
    DROP_POLICY_RATE,
    ByteBucket,
    RateLimitedLink,
    port_policy,
    within_hours,
)
from exitnode.switch import PortPolicy
from hardware import ethernet
from l2bridge.node.config import ConfigError, DevicePolicy, config_from_mapping
from l2bridge.node.metrics import Metrics
from tests.unit.exitnode.fakelink import link_pair
from tests.unit.exitnode.test_switchboard import BCAST, TIMEOUT, A, Bench, raw, run

DEFAULT = PortPolicy(vlans=None)


def test_devices_section_parses_and_names_bad_values(tmp_path: Path) -> None:
    cfg = config_from_mapping(
        {"devices": {"lan-a": {"vlans": [0, 10], "rate": "8mbit", "broadcast_rate": 50,
                               "hours": "22:00-06:00"}}},
        base_dir=tmp_path,
    )  # fmt: skip
    device = cfg.device("lan-a")
    assert device == DevicePolicy("lan-a", (0, 10), 1_000_000.0, 50.0, (1320, 360))
    assert cfg.device("lan-b") is None
    for raw_policy, field in (
        ({"vlans": [4095]}, r"devices\.lan-a\.vlans\[0\]"),
        ({"rate": "fast"}, r"devices\.lan-a\.rate"),
        ({"hours": "8-18"}, r"devices\.lan-a\.hours"),
        ({"hours": "25:00-06:00"}, r"devices\.lan-a\.hours"),
        ({"broadcast_rate": 0}, r"devices\.lan-a\.broadcast_rate"),
        ({"bandwidth": 1}, r"devices\.lan-a\.bandwidth: unknown setting"),
        ({"dhcp_server": "yes"}, r"devices\.lan-a\.dhcp_server"),
    ):
        with pytest.raises(ConfigError, match=field):
            config_from_mapping({"devices": {"lan-a": raw_policy}}, base_dir=tmp_path)


def test_port_policy_maps_vlans_and_broadcast_rate() -> None:
    assert port_policy(None, DEFAULT) is DEFAULT
    policy = port_policy(DevicePolicy("x", vlans=(0, 10), broadcast_rate=5.0), DEFAULT)
    assert policy.vlans == frozenset({0, 10}) and policy.broadcast_rate == 5.0
    assert port_policy(DevicePolicy("x", rate=100.0), DEFAULT) == DEFAULT


def test_a_device_may_be_trusted_to_answer_dhcp_and_no_device_is_by_default(
    tmp_path: Path,
) -> None:
    cfg = config_from_mapping(
        {"devices": {"office": {"dhcp_server": True}, "laptop": {"vlans": [0]}}},
        base_dir=tmp_path,
    )
    assert port_policy(cfg.device("office"), DEFAULT).dhcp_server
    assert not port_policy(cfg.device("laptop"), DEFAULT).dhcp_server
    assert not port_policy(None, DEFAULT).dhcp_server


def test_hours_window_including_one_that_wraps_midnight() -> None:
    day = 86400 * 20000
    office = DevicePolicy("x", hours=(8 * 60, 18 * 60))
    night = DevicePolicy("x", hours=(22 * 60, 6 * 60))
    assert within_hours(None, day)
    assert within_hours(office, day + 9 * 3600) and not within_hours(office, day + 18 * 3600)
    assert within_hours(night, day + 23 * 3600) and within_hours(night, day + 3600)
    assert not within_hours(night, day + 12 * 3600)


def test_byte_bucket_refills_at_its_rate() -> None:
    bucket = ByteBucket(1000.0, 1500.0, 0.0)
    assert bucket.take(1500, 0.0) and not bucket.take(1, 0.0)
    assert not bucket.take(600, 0.5) and bucket.take(500, 0.5)


def test_vlans_of_a_device_policy_are_enforced_by_its_port() -> None:
    async def body(b: Bench) -> None:
        policy = port_policy(DevicePolicy("lan-a", vlans=(10,)), DEFAULT)
        link = b.client("lan-a", policy)
        await b.until(lambda: len(b.board.clients) == 1)
        await link.send_frames([ethernet.NO_OFFLOAD + raw(A, BCAST, vlan=20)])
        await b.until(lambda: b.metrics.counters.drops["vlan_denied"] == 1)
        await link.send_frames([ethernet.NO_OFFLOAD + raw(A, BCAST, vlan=10)])
        await b.until(lambda: b.tap.stats.frames_written == 1)

    run(body)


def test_rate_limited_link_drops_what_arrives_faster_and_counts_it() -> None:
    async def body() -> None:
        ours, theirs = link_pair(64)
        metrics = Metrics("exit")
        now = [0.0]
        limited = RateLimitedLink(theirs, 1000.0, metrics, clock=lambda: now[0])
        frame = b"x" * 1000
        await ours.send_frames([frame] * 80)  # 80 KB at once; burst is one super-frame
        got = await asyncio.wait_for(limited.recv_frames(), TIMEOUT)
        assert 0 < len(got) < 80
        assert metrics.counters.drops[DROP_POLICY_RATE] == 80 - len(got)
        now[0] = 2.0  # two seconds later: 2000 bytes more
        await ours.send_frames([frame] * 5)
        assert len(await asyncio.wait_for(limited.recv_frames(), TIMEOUT)) == 2

    asyncio.run(body())
