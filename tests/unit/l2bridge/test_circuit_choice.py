"""Choosing a circuit's hops: distinct nodes, distinct operators, distinct known regions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from l2bridge.client.circuit import choose_hops, load_regions, registry_regions
from l2bridge.client.selection import Candidate


def cand(i: int) -> Candidate:
    return Candidate(bytes([i]) * 32, f"ws://h{i}/ws", 900, 0.0, b"", b"")


ORDER = [cand(i) for i in range(1, 8)]


def test_two_hops_of_one_operator_are_never_chosen_together():
    operators = {c.node_id: f"0xop{i}" for i, c in enumerate(ORDER)}
    operators[ORDER[1].node_id] = "0xOP0"  # same account as the first, other case
    path = choose_hops(ORDER, operators, {}, 3)
    assert path is not None
    assert [h.candidate for h in path] == [ORDER[0], ORDER[2], ORDER[3]]
    # Whatever the ranking order, no two chosen hops share an operator.
    for perm in itertools.permutations(ORDER[:5]):
        chosen = choose_hops(list(perm), operators, {}, 3)
        assert chosen is not None
        ops = [h.operator for h in chosen]
        assert len(set(ops)) == len(ops)


def test_known_regions_are_distinct_unknown_regions_do_not_block():
    regions = {ORDER[0].node_id: "eu", ORDER[1].node_id: "eu", ORDER[2].node_id: "us"}
    path = choose_hops(ORDER, {}, regions, 3)
    assert path is not None
    assert [h.candidate for h in path] == [ORDER[0], ORDER[2], ORDER[3]]
    assert [h.region for h in path] == ["eu", "us", None]


def test_too_few_distinct_nodes_gives_none():
    operators = {c.node_id: "0xsame" for c in ORDER}
    assert choose_hops(ORDER, operators, {}, 2) is None
    assert choose_hops(ORDER[:2], {}, {}, 3) is None
    assert choose_hops(ORDER + ORDER, {}, {}, 7) is not None  # duplicates are skipped
    assert len({h.candidate.node_id for h in choose_hops(ORDER + ORDER, {}, {}, 7)}) == 7


def test_skip_leaves_nodes_out():
    path = choose_hops(ORDER, {}, {}, 3, skip=[ORDER[0].node_id])
    assert path is not None and ORDER[0] not in [h.candidate for h in path]


def test_regions_file(tmp_path: Path):
    f = tmp_path / "regions.yaml"
    f.write_text(f"'{'ab' * 32}': eu-west\n0x{'cd' * 32}: us-east\n")
    assert load_regions(f) == {b"\xab" * 32: "eu-west", b"\xcd" * 32: "us-east"}
    f.write_text("nothex: eu\n")
    with pytest.raises(ValueError):
        load_regions(f)
    f.write_text("- a list\n")
    with pytest.raises(ValueError):
        load_regions(f)
    assert load_regions(None) == {}


def test_hop_one_is_an_exit_the_client_holds_a_credential_for():
    held = frozenset({ORDER[3].node_id, ORDER[5].node_id})
    path = choose_hops(ORDER, {}, {}, 3, first_of=held)
    assert path is not None
    # The best credentialed exit leads; the other hops keep the ranking order.
    assert [h.candidate for h in path] == [ORDER[3], ORDER[0], ORDER[1]]
    assert choose_hops(ORDER, {}, {}, 3, first_of=frozenset()) is None


def test_jurisdictional_diversity_keeps_countries_apart():
    """DE-BE and DE-BY are two regions but one jurisdiction: with ``jurisdictions`` the
    second German hop is passed over; free names from a regions file are their own country."""
    regions = {ORDER[0].node_id: "DE-BE", ORDER[1].node_id: "DE-BY", ORDER[2].node_id: "FR",
               ORDER[3].node_id: "eu-west", ORDER[4].node_id: "eu-east"}  # fmt: skip
    places = choose_hops(ORDER, {}, regions, 4)
    assert places is not None
    assert [h.region for h in places] == ["DE-BE", "DE-BY", "FR", "eu-west"]
    countries = choose_hops(ORDER, {}, regions, 4, jurisdictions=True)
    assert countries is not None
    assert [h.region for h in countries] == ["DE-BE", "FR", "eu-west", "eu-east"]
    assert choose_hops(ORDER[:3], {}, regions, 3, jurisdictions=True) is None


@dataclass(frozen=True)
class Record:
    node_id: bytes
    region: object


def test_registry_regions_are_read_and_a_regions_file_overrides_them():
    """Regions the exits declared on chain drive the choice; a malformed one counts as
    unknown (never trusted, never blocking); the client's own file wins per node."""
    records = [Record(ORDER[0].node_id, "US-CA"), Record(ORDER[1].node_id, "US-CA"),
               Record(ORDER[2].node_id, "us-ca"), Record(ORDER[3].node_id, None),
               Record(ORDER[4].node_id, b"DE")]  # fmt: skip
    chain = registry_regions(records)
    assert chain == {ORDER[0].node_id: "US-CA", ORDER[1].node_id: "US-CA"}
    path = choose_hops(ORDER, {}, chain, 3)
    assert path is not None  # the second US-CA node is passed over
    assert [h.candidate for h in path] == [ORDER[0], ORDER[2], ORDER[3]]
    # The operator of node 1 claims US-CA; the client knows it runs in Japan.
    merged = chain | {ORDER[1].node_id: "JP"}
    path = choose_hops(ORDER, {}, merged, 3)
    assert path is not None
    assert [(h.candidate, h.region) for h in path] == [
        (ORDER[0], "US-CA"), (ORDER[1], "JP"), (ORDER[2], None)
    ]  # fmt: skip
