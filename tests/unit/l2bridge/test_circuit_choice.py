"""Choosing a circuit's hops: distinct nodes, distinct operators, distinct known regions."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from l2bridge.client.circuit import choose_hops, load_regions
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
