"""An evidence checker is never configured without a nonce, and a pinned client that must
check its exit's attestation refuses to start when nothing can check it."""

from __future__ import annotations

import os
from typing import Any

import pytest

from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node.config import config_from_mapping, ensure_startable, problems
from l2bridge.protocol.handshake import ClientHandshake

KEY = HybridSigningKey.generate()
PIN = os.urandom(32).hex()


def test_checker_without_nonce_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs an attestation nonce"):
        ClientHandshake(KEY, evidence_checker=lambda *a: None)
    with pytest.raises(ValueError, match="needs an evidence_checker"):
        ClientHandshake(KEY, attestation_nonce=os.urandom(32))
    hs = ClientHandshake(KEY, attestation_nonce=os.urandom(32), evidence_checker=lambda *a: None)
    assert hs.hello()


def pinned(**sections: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "security": {"attestation_required": True},
        "endpoints": {"connect": "wss://exit.example:443/ws", "exit_node_id": PIN},
    }
    doc.update(sections)
    return doc


def refusals(doc: dict[str, Any]) -> dict[str, str]:
    return {p.field: p.message for p in problems(config_from_mapping(doc, env={})) if p.refuse}


def test_pinned_attestation_needs_policy_and_ak_source() -> None:
    got = refusals(pinned())
    assert "tpm.golden_policy" in got
    assert "tpm.exit_enrolment" in got["security.attestation_required"]
    with pytest.raises(Exception, match="refusing to start"):
        ensure_startable(config_from_mapping(pinned(), env={}))


def test_enrolment_record_or_registry_satisfies_it() -> None:
    tpm = {"golden_policy": "golden.json", "exit_enrolment": "exit.json"}
    assert refusals(pinned(tpm=tpm)) == {}
    chain = {"rpc_url": "http://127.0.0.1:8545", "contract_address": "0x" + "11" * 20}
    assert refusals(pinned(tpm={"golden_policy": "golden.json"}, chain=chain)) == {}


def test_exits_and_unpinned_clients_are_not_affected() -> None:
    exit_doc = {"security": {"attestation_required": True}, "endpoints": {"listen": "0.0.0.0:1"}}
    assert refusals(exit_doc) == {}
    registry = pinned()
    registry["endpoints"].pop("exit_node_id")
    assert refusals(registry) == {}
