"""The sans-I/O traffic shaper and LAN chatter filter (l2bridge.protocol.shaping)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware import ethernet
from l2bridge.constants import FRAME_LENGTH_SIZE, MAX_FRAME_SIZE, MAX_RECORD_PLAINTEXT
from l2bridge.node.config import ConfigError, Obfuscation, load_config
from l2bridge.node.cover import load_profile, shaping_plan
from l2bridge.protocol.shaping import (
    OFFLOAD_HEADER_LEN,
    BrowserProfile,
    ChatterFilter,
    Distribution,
    Emission,
    Shaper,
    Shaping,
    is_group_frame,
)

SIZES = (120.0, 200.0, 400.0, 900.0, 1600.0)
PROFILE = BrowserProfile(
    first=(Distribution((300.0,)), Distribution((500.0, 600.0))),
    sizes=Distribution(SIZES),
    gaps=Distribution((0.0, 0.01, 0.02)),
)
# Tunnel frames: the offload header (NEEDS_CSUM set, as for most TCP), then Ethernet.
OFFLOAD = b"\x01" + bytes(9)
UNICAST = OFFLOAD + bytes.fromhex("020000000001") + bytes.fromhex("020000000002") + b"\x08\x00"
BROADCAST = OFFLOAD + b"\xff" * 6 + bytes.fromhex("020000000002") + b"\x08\x06"


def frame(n: int, tag: int) -> bytes:
    """A unicast frame of ``n`` bytes, ``tag`` after the headers (to check order)."""
    body = tag.to_bytes(4, "big") * (n // 4 + 1)
    return (UNICAST + body)[:n]


def run(shaper: Shaper, frames: list[bytes], step: float = 0.001) -> list[tuple[float, Emission]]:
    """Push ``frames`` one per ``step`` seconds and poll at every deadline until empty."""
    out: list[tuple[float, Emission]] = []
    now = 0.0
    for f in frames:
        shaper.push([f], now)
        out += [(now, e) for e in shaper.due(now)]
        now += step
    for _ in range(100_000):
        deadline = shaper.deadline()
        if deadline is None:
            break
        now = max(now, deadline)
        out += [(now, e) for e in shaper.due(now)]
    assert shaper.deadline() is None and len(shaper) == 0
    return out


def used(e: Emission) -> int:
    return sum(FRAME_LENGTH_SIZE + len(f) for f in e.frames)


@pytest.mark.parametrize("mode", [Shaping.SIZES, Shaping.BROWSER])
def test_no_frame_lost_split_or_reordered(mode: Shaping) -> None:
    rng = random.Random(7)
    frames = [frame(rng.choice((60, 90, 300, 1400, 1514)), i) for i in range(400)]
    out = run(Shaper(mode, PROFILE, rng=random.Random(1)), frames)
    sent = [bytes(f) for _, e in out for f in e.frames]
    assert sent == frames


def test_browser_sizes_follow_the_profile() -> None:
    shaper = Shaper(Shaping.BROWSER, PROFILE, overhead=29, rng=random.Random(3))
    out = [e for _, e in run(shaper, [frame(60, i) for i in range(300)])]
    # The first records take the profile's first-message sizes, less the overhead.
    assert out[0].size == 300 - 29
    assert out[1].size in range(500 - 29, 600 - 29 + 1)
    # Later ones lie within the profile's range; each holds as many frames as fit.
    for e in out[2:]:
        assert SIZES[0] - 29 <= e.size <= SIZES[-1] - 29
        assert used(e) <= e.size
    assert shaper.padding_bytes == sum(e.size - used(e) for e in out)
    assert shaper.padding_bytes > 0


def test_sizes_mode_shapes_only_the_first_records() -> None:
    shaper = Shaper(Shaping.SIZES, PROFILE, rng=random.Random(3))
    shaper.push([frame(60, 1)], 0.0)
    first = shaper.due(0.0)
    assert [e.size for e in first] == [300]
    shaper.push([frame(60, 2)], 0.0)
    assert next(e.size for e in shaper.due(0.0)) >= 500
    shaper.push([frame(60, 3), frame(70, 4)], 0.0)
    later = shaper.due(0.0)  # past the first messages: at once, unpadded, one record
    assert later == [Emission((frame(60, 3), frame(70, 4)), 0)]


def test_frame_bigger_than_every_profile_size_goes_alone() -> None:
    huge = frame(MAX_FRAME_SIZE, 9)
    shaper = Shaper(Shaping.BROWSER, PROFILE, rng=random.Random(5))
    shaper.push([frame(50, 1), huge, frame(50, 2)], 0.0)
    out = shaper.flush()
    sent = [bytes(f) for e in out for f in e.frames]
    assert sent == [frame(50, 1), huge, frame(50, 2)]
    alone = next(e for e in out if huge in e.frames)
    assert alone.frames == (huge,) and alone.size == used(alone)
    assert all(e.size <= MAX_RECORD_PLAINTEXT for e in out)


def test_a_frame_between_profile_sizes_gets_the_next_one_up() -> None:
    shaper = Shaper(Shaping.BROWSER, PROFILE, rng=random.Random(5))
    shaper._records = len(PROFILE.first)  # past the first messages
    # Whatever size is drawn, a 700-byte frame fits in none below 900.
    shaper.push([frame(700, 1)], 0.0)
    (e,) = shaper.due(0.0)
    assert e.size >= 900 or e.size >= used(e)
    assert e.size in range(used(e), 1601)


def test_delay_is_bounded() -> None:
    slow = BrowserProfile(PROFILE.first, PROFILE.sizes, Distribution((5.0, 10.0)))
    shaper = Shaper(Shaping.BROWSER, slow, max_delay_s=0.05, rng=random.Random(2))
    queued: dict[bytes, float] = {}
    frames = [frame(60, i) for i in range(200)]
    out = []
    for i, f in enumerate(frames):
        now = i * 0.002
        # The link's timer fires at each deadline between arrivals.
        while (d := shaper.deadline()) is not None and d <= now:
            out += [(d, e) for e in shaper.due(d)]
        queued[f] = now
        shaper.push([f], now)
        out += [(now, e) for e in shaper.due(now)]
    while (d := shaper.deadline()) is not None:
        now = max(now, d)
        out += [(now, e) for e in shaper.due(now)]
    waits = [t - queued[bytes(f)] for t, e in out for f in e.frames]
    assert len(waits) == 200
    assert max(waits) <= 0.05 + 1e-9
    # The profile's 5-10 s gaps would have made this take minutes; shaping gave way.
    assert out[-1][0] < 1.0


def test_queue_is_bounded() -> None:
    slow = BrowserProfile(PROFILE.first, PROFILE.sizes, Distribution((60.0,)))
    shaper = Shaper(Shaping.BROWSER, slow, max_delay_s=30.0, max_queue_bytes=10_000)
    for i in range(100):
        shaper.push([frame(1500, i)], 0.0)
        shaper.due(0.0)
        assert shaper.queued_bytes <= 10_000 + FRAME_LENGTH_SIZE + 1500


def test_browser_mode_spaces_records_by_profile_gaps() -> None:
    gaps = BrowserProfile(PROFILE.first, PROFILE.sizes, Distribution((0.02,)))
    shaper = Shaper(Shaping.BROWSER, gaps, max_delay_s=1.0, rng=random.Random(4))
    times = [t for t, _ in run(shaper, [frame(1400, i) for i in range(20)], step=0.0)]
    assert all(b - a >= 0.02 - 1e-9 for a, b in itertools.pairwise(times))


def test_profile_from_dict_rejects_bad_input() -> None:
    good = {"first": [[100, 200]], "sizes": [50, 60], "gaps": [0, 0.1]}
    assert BrowserProfile.from_dict(good).sizes.quantiles == (50.0, 60.0)
    for bad in (
        [],
        {"first": [], "sizes": [60, 50], "gaps": [0]},
        {"first": [], "sizes": [], "gaps": [0]},
        {"first": [], "sizes": [1], "gaps": [-1]},
        {"sizes": [1], "gaps": [0]},
        {"first": [5], "sizes": [1], "gaps": [0]},
    ):
        with pytest.raises(ValueError, match=r"profile|sizes|gaps|first"):
            BrowserProfile.from_dict(bad)
    with pytest.raises(ValueError):
        Shaper(Shaping.OFF, PROFILE)


def test_distribution_samples_within_quantiles() -> None:
    d = Distribution((10.0, 20.0, 100.0))
    rng = random.Random(0)
    samples = [d.sample(rng) for _ in range(1000)]
    assert min(samples) >= 10 and max(samples) <= 100
    assert d.smallest_at_least(15) == 20 and d.smallest_at_least(101) is None


def test_chatter_is_held_and_rides_with_unicast_in_order() -> None:
    chatter = ChatterFilter(hold_s=1.0)
    arp = BROADCAST + b"who-has 10.0.0.1"
    mdns = OFFLOAD + bytes.fromhex("01005e0000fb") + UNICAST[16:] + b"mdns announce"
    assert is_group_frame(arp) and is_group_frame(mdns) and not is_group_frame(UNICAST)
    # The offload header's flags byte is not the destination MAC.
    assert OFFLOAD_HEADER_LEN == ethernet.OFFLOAD_HEADER_LEN and UNICAST[0] & 1
    assert chatter.filter([arp], 0.0) == []
    assert chatter.filter([mdns, arp], 0.1) == []  # the second ARP is an exact copy
    assert chatter.collapsed == 1
    assert chatter.deadline() == pytest.approx(1.0)
    data = frame(100, 1)
    assert chatter.filter([data], 0.2) == [arp, mdns, data]
    assert chatter.deadline() is None


def test_chatter_goes_at_the_deadline_when_nothing_else_does() -> None:
    chatter = ChatterFilter(hold_s=0.5)
    arp = BROADCAST + b"who-has 10.0.0.9"
    assert chatter.filter([arp], 10.0) == []
    assert chatter.due(10.4) == []
    assert chatter.due(10.5) == [arp]
    assert chatter.deadline() is None


def test_chatter_held_is_bounded() -> None:
    chatter = ChatterFilter(hold_s=60.0, max_held=8)
    released = []
    for i in range(20):
        released += chatter.filter([BROADCAST + bytes([i])], float(i))
    released += chatter.release()
    assert released == [BROADCAST + bytes([i]) for i in range(20)]


def test_shipped_profile_loads_and_plans_follow_the_settings(tmp_path: Path) -> None:
    up, down = load_profile()
    assert up.first and down.first and up.sizes.quantiles and down.gaps.quantiles
    assert shaping_plan(Obfuscation()) is None
    assert shaping_plan(Obfuscation(enabled=False, shaping="browser")) is None
    plan = shaping_plan(Obfuscation(shaping="sizes"))
    assert plan is not None and plan.mode is Shaping.SIZES
    assert plan.chatter_filter(True) is None and plan.shaper(True) is not None
    chatter = shaping_plan(Obfuscation(lan_chatter="aggregate"))
    assert chatter is not None and chatter.shaper(True) is None
    assert chatter.chatter_filter(True) is not None and chatter.chatter_filter(False) is None
    bad = tmp_path / "profile.json"
    bad.write_text('{"up": {"first": [], "sizes": [3, 2], "gaps": [0]}, "down": {}}')
    with pytest.raises(ValueError, match=r"profile\.json"):
        load_profile(bad)
    with pytest.raises(ValueError, match="missing"):
        load_profile(tmp_path / "missing.json")


def test_yaml_off_reads_as_shaping_off(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("obfuscation:\n  shaping: off\n  lan_chatter: aggregate\n")
    config = load_config(path, env={})
    assert config.obfuscation.shaping == "off"
    path.write_text("obfuscation:\n  shaping: fast\n")
    with pytest.raises(ConfigError, match=r"obfuscation\.shaping"):
        load_config(path, env={})


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20_000), min_size=1, max_size=60),
    steps=st.lists(st.floats(0, 0.2), min_size=1, max_size=60),
    quantiles=st.lists(st.integers(0, 20_000), min_size=1, max_size=8),
    gaps=st.lists(st.floats(0, 2.0), min_size=1, max_size=4),
    mode=st.sampled_from([Shaping.SIZES, Shaping.BROWSER]),
)
def test_any_profile_and_timing_keeps_every_frame_in_order_within_the_bound(
    sizes: list[int], steps: list[float], quantiles: list[int], gaps: list[float], mode: Shaping
) -> None:
    profile = BrowserProfile(
        (Distribution((float(min(quantiles)),)),),
        Distribution(tuple(float(q) for q in sorted(quantiles))),
        Distribution(tuple(sorted(gaps))),
    )
    shaper = Shaper(mode, profile, overhead=29, max_delay_s=0.05, rng=random.Random(1))
    frames = [frame(max(n, 28), i) for i, n in enumerate(sizes)]  # the tag makes each unique
    sent_at: dict[int, float] = {}
    out: list[tuple[float, Emission]] = []
    now = 0.0
    for i, f in enumerate(frames):
        now += steps[i % len(steps)]
        while (d := shaper.deadline()) is not None and d <= now:
            out += [(d, e) for e in shaper.due(d)]
        sent_at[i] = now
        shaper.push([f], now)
        out += [(now, e) for e in shaper.due(now)]
    while (d := shaper.deadline()) is not None:
        out += [(max(d, now), e) for e in shaper.due(max(d, now))]
    delivered = [bytes(f) for _, e in out for f in e.frames]
    assert delivered == frames
    index = {f: i for i, f in enumerate(frames)}
    for t, e in out:
        assert e.size == 0 or e.size >= sum(FRAME_LENGTH_SIZE + len(f) for f in e.frames)
        assert e.size <= MAX_RECORD_PLAINTEXT
        for f in e.frames:
            assert t - sent_at[index[bytes(f)]] <= 0.05 + 1e-9
