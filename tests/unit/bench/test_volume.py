"""The handshake-volume rule and floor (bench/traffic/volume.py) on hand-made sessions."""

from __future__ import annotations

import pytest

from bench.traffic import volume


def _session(up: list[tuple[float, int]], down: list[tuple[float, int]]) -> list[volume.Packet]:
    pkts = [(t, 1, n) for t, n in up] + [(t, -1, n) for t, n in down]
    return sorted(pkts)


def test_early_bytes_counts_each_direction_within_the_window_only() -> None:
    pkts = _session([(10.0, 500), (10.4, 1448), (11.2, 9000)], [(10.1, 800), (11.0, 300)])
    assert volume.early_bytes(pkts) == (1948, 1100)  # 11.0 is inside a 1 s window, 11.2 not
    assert volume.early_bytes(pkts, window_s=2.0) == (10948, 1100)
    assert volume.early_bytes([]) == (0, 0)


def test_the_rule_is_the_least_each_direction_any_tunnel_sent() -> None:
    rule = volume.VolumeRule.fit([(17_700, 10_700), (18_000, 10_612), (17_678, 12_000)])
    assert (rule.up, rule.down) == (17_678, 10_612)
    assert rule.score(17_678, 10_612) == 1.0
    assert rule.score(40_000, 90_000) == 1.0  # padding more never helps a tunnel
    # A chat-like session: little up, little down; scored by the nearer miss.
    assert rule.score(3_000, 2_200) == pytest.approx(3_000 / 17_678)
    # An upload: lots up but almost nothing down.
    assert rule.score(2_000_000, 1_300) == pytest.approx(1_300 / 10_612)
    with pytest.raises(ValueError):
        volume.VolumeRule.fit([])


def test_no_browser_session_carrying_the_handshake_leaves_a_floor_of_one() -> None:
    tunnels = [(17_678, 10_612), (18_000, 11_000)]
    browsers = [(3_000, 2_200), (3_200, 20_000), (2_000_000, 1_300), (2_900, 11_600)]
    fl = volume.floor(browsers, tunnels)
    assert fl.carriers == 0
    assert fl.auc == 1.0
    assert fl.as_json()["floor_auc"] == 1.0


def test_browser_sessions_that_carry_as_much_lower_the_floor() -> None:
    tunnels = [(17_678, 10_612)]
    browsers = [(3_000, 2_200), (20_000, 12_000), (2_000_000, 1_300), (50_000, 50_000)]
    fl = volume.floor(browsers, tunnels)
    assert fl.carriers == 2
    assert fl.auc == pytest.approx(1 - 0.5 / 2)
    doc = fl.as_json()
    assert doc["tunnel_min_up_bytes"] == 17_678
    assert doc["browser_sessions_carrying_it"] == 2
    assert doc["browser_sessions"] == 4
