"""Exit ranking from registry records, refusals and their lifting (sans-I/O)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from l2bridge.client.selection import (
    Refusals,
    SelectionPolicy,
    candidate_from,
    check_same_node,
    rank,
)

NOW = 1_000_000.0
POLICY = SelectionPolicy(min_reputation=500, max_attestation_age=3600)


@dataclass(frozen=True)
class Ak:
    x: bytes = b"\x01" * 32
    y: bytes = b"\x02" * 32


@dataclass(frozen=True)
class Record:
    node_id: bytes
    endpoint: str = "ws://127.0.0.1:1/ws"
    ak: Ak = Ak()
    reputation: int = 500
    last_attestation: int = int(NOW) - 10
    status: str = "active"
    healthy: bool = True


def nid(n: int) -> bytes:
    return bytes([n]) * 32


def ids(ranking) -> list[bytes]:
    return [c.node_id for c in ranking.order]


def test_reputation_band_then_freshness_then_node_id():
    records = [
        Record(nid(1), reputation=520, last_attestation=int(NOW) - 3000),  # same band, older
        Record(nid(2), reputation=540),
        Record(nid(3), reputation=700),
        Record(nid(4), reputation=510),
    ]
    assert ids(rank(records, POLICY, Refusals(), NOW)) == [nid(3), nid(2), nid(4), nid(1)]


def test_filters_say_why():
    records = [
        Record(nid(1), reputation=499),
        Record(nid(2), last_attestation=int(NOW) - 3601),
        Record(nid(3), status="stale", healthy=False),
        Record(nid(4), endpoint="http://x/"),
        Record(nid(5), last_attestation=int(NOW) + 60),
        Record(nid(6)),
        Record(nid(6)),  # duplicates from pagination are ignored
    ]
    ranking = rank(records, POLICY, Refusals(), NOW)
    assert ids(ranking) == [nid(6)]
    reasons = {e.node_id: e.reason for e in ranking.excluded}
    assert "below 500" in reasons[nid(1)]
    assert "3601 s old" in reasons[nid(2)]
    assert "stale" in reasons[nid(3)]
    assert "ws://" in reasons[nid(4)]
    assert "future" in reasons[nid(5)]


def test_refused_until_it_attests_on_chain_again():
    first = Record(nid(1), reputation=900)
    refusals = Refusals()
    refusals.refuse(candidate_from(first), "PCR 23 changed", NOW)
    ranking = rank([first, Record(nid(2))], POLICY, refusals, NOW)
    assert ids(ranking) == [nid(2)]
    assert "PCR 23 changed" in ranking.excluded[0].reason
    # same on-chain attestation: still refused, even after a long time
    assert ids(rank([first], POLICY, refusals, NOW + 100)) == []
    # an attestation newer than the one we dialled from but made before we refused
    # (the exit attests every few seconds) does not lift it
    racing = replace(first, last_attestation=NOW - 0.5)
    assert racing.last_attestation > first.last_attestation
    assert ids(rank([racing], POLICY, refusals, NOW + 100)) == []
    # an on-chain attestation made after the refusal lifts it
    newer = replace(first, last_attestation=NOW + 30)
    assert ids(rank([newer, Record(nid(2))], POLICY, refusals, NOW + 100)) == [nid(1), nid(2)]
    assert refusals.refusal(nid(1)) is None


def test_unreachable_goes_last_for_a_while():
    records = [Record(nid(1), reputation=900), Record(nid(2))]
    refusals = Refusals(cooldown=5)
    refusals.unreachable(nid(1), NOW)
    assert ids(rank(records, POLICY, refusals, NOW + 1)) == [nid(2), nid(1)]
    assert ids(rank(records, POLICY, refusals, NOW + 6)) == [nid(1), nid(2)]
    refusals.unreachable(nid(1), NOW + 6)
    refusals.reachable(nid(1))
    assert ids(rank(records, POLICY, refusals, NOW + 7)) == [nid(1), nid(2)]


def test_same_node_check():
    assert check_same_node(nid(1), nid(1), nid(1))
    assert not check_same_node(nid(1), nid(2), nid(1))
    assert not check_same_node(nid(1), nid(1), nid(2))
    assert not check_same_node(b"", b"", b"")


@pytest.mark.parametrize("kwargs", [{"min_reputation": 1001}, {"max_attestation_age": 0},
                                    {"reputation_band": 0}])  # fmt: skip
def test_policy_validation(kwargs):
    with pytest.raises(ValueError):
        SelectionPolicy(**kwargs)


def test_only_exits_with_a_credential_are_ranked_when_the_client_says_which():
    records = [Record(nid(1), reputation=700), Record(nid(2)), Record(nid(3))]
    ranking = rank(records, POLICY, Refusals(), NOW, credentialed=frozenset({nid(2), nid(3)}))
    assert ids(ranking) == [nid(2), nid(3)]
    assert [(e.node_id, "no credential" in e.reason) for e in ranking.excluded] == [(nid(1), True)]
    assert ids(rank(records, POLICY, Refusals(), NOW)) == [nid(1), nid(2), nid(3)]
