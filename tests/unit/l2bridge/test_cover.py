"""Padding to size buckets and padding-only (cover) records in the session; cover plans."""

from __future__ import annotations

import random

import pytest

from l2bridge.node.config import config_from_mapping, problems
from l2bridge.node.cover import CoverPlan, obfuscation_settings
from l2bridge.protocol.pair import SessionPair
from l2bridge.protocol.session import SessionConfig

NOW = 1_700_000_000.0
OVERHEAD = 13 + 16  # record header + AEAD tag


@pytest.fixture(scope="module")
def pair() -> SessionPair:
    return SessionPair.connect(NOW, config=SessionConfig(pad_to=256))


@pytest.mark.parametrize("size", [1, 60, 251, 252, 253, 1500, 9000])
def test_data_records_fill_whole_buckets(pair: SessionPair, size: int) -> None:
    record = pair.client.seal([b"x" * size], NOW)
    assert (len(record) - OVERHEAD) % 256 == 0
    assert [bytes(f) for f in pair.exit.receive(record, NOW).frames] == [b"x" * size]


@pytest.mark.parametrize("size", [0, 1, 200, 1400])
def test_cover_records_are_counted_and_dropped(pair: SessionPair, size: int) -> None:
    before = pair.exit.stats.cover_received, pair.exit.stats.frames_received
    record = pair.client.seal_cover(size, NOW)
    assert (len(record) - OVERHEAD) % 256 == 0 and len(record) - OVERHEAD >= size
    got = pair.exit.receive(record, NOW)
    assert got.frames == [] and got.events == () and got.replies == ()
    assert (pair.exit.stats.cover_received, pair.exit.stats.frames_received) == (
        before[0] + 1,
        before[1],
    )
    # an ordinary record after it still arrives: the counters moved on in order
    assert [bytes(f) for f in pair.exit.receive(pair.client.seal([b"y"], NOW), NOW).frames] == [
        b"y"
    ]


def test_cover_size_is_bounded(pair: SessionPair) -> None:
    with pytest.raises(ValueError, match="cover size"):
        pair.client.seal_cover(-1, NOW)
    with pytest.raises(ValueError, match="cover size"):
        pair.client.seal_cover(10**7, NOW)


def test_plans_per_level_stay_within_budget() -> None:
    assert CoverPlan.for_level("off") is None
    on, aggressive = CoverPlan.for_level("on"), CoverPlan.for_level("aggressive")
    assert on is not None and aggressive is not None
    assert on.rate == 1.0 and aggressive.rate == 10.0
    rng = random.Random(7)
    for plan in (on, aggressive):
        delays = [plan.next_delay(rng) for _ in range(2000)]
        assert min(delays) > 0
        assert 0.8 / plan.rate < sum(delays) / len(delays) < 1.2 / plan.rate
        sizes = {plan.size(rng) for _ in range(200)}
        assert len(sizes) > 50 and min(sizes) >= plan.min_size and max(sizes) <= plan.max_size
        # what the plan sends on average fits its byte budget
        assert plan.rate * (plan.max_size + OVERHEAD + 256) <= plan.budget


def test_config_turns_padding_and_cover_on_only_with_obfuscation() -> None:
    on = config_from_mapping({"obfuscation": {"cover_traffic": True, "padding": 512}}, env={})
    pad_to, plan = obfuscation_settings(on.obfuscation)
    assert pad_to == 512 and plan == CoverPlan.for_level("on")
    assert not [p for p in problems(on) if p.field == "obfuscation.cover_traffic"]
    off = config_from_mapping(
        {"obfuscation": {"enabled": False, "cover_traffic": "aggressive"}}, env={}
    )
    assert obfuscation_settings(off.obfuscation) == (0, None)
    assert (
        "needs obfuscation.enabled"
        in {p.field: p.message for p in problems(off)}["obfuscation.cover_traffic"]
    )
    default = config_from_mapping({}, env={})
    assert obfuscation_settings(default.obfuscation) == (256, None)
