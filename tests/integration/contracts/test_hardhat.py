"""The main path against a Hardhat 3 node (EDR, osaka): deploy, register, attest, list,
stale, report, withdraw."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from contracts.client import RegistryClient, connect
from contracts.errors import RegistryReverted
from contracts.quote import ak_public, build_attest, pcr_digest, sign_attest
from contracts.voucher import vouch_for
from hardware.chain import Anvil, ChainStartError, HardhatNode

pytestmark = pytest.mark.integration

ETHER = 10**18
GOOD = pcr_digest([b"\x01" * 32])


def test_main_path_on_hardhat(accounts):
    with HardhatNode() as chain:
        w3 = connect(chain.rpc_url)
        owner = RegistryClient.deploy(
            w3, accounts[0], attestation_interval_s=3600, unbonding_delay_s=7200
        )
        owner.approve_digest(GOOD)
        owner.approve_release(1, pcr_digest([b"runtime policy"]))
        owner.set_enroller(accounts[3].address)
        operator = owner.with_account(accounts[1])
        reporter = owner.with_account(accounts[2])
        key = ec.generate_private_key(ec.SECP256R1())
        node_id = os.urandom(32)
        clock = iter(range(1000, 10**6, 1000))

        def quote_for(qualifying: bytes, digest: bytes = GOOD):  # type: ignore[no-untyped-def]
            return sign_attest(key, build_attest(qualifying, digest, clock=next(clock)))

        ak = ak_public(key.public_key())
        challenge = operator.challenge(node_id)
        operator.register(node_id, "wss://hh/ws", ak, quote_for(challenge.qualifying_data),
                          challenge.block_number, stake_wei=20 * ETHER,
                          voucher=vouch_for(accounts[3], owner, node_id, ak,
                                            operator=accounts[1].address))  # fmt: skip
        operator.attest_with(node_id, quote_for)
        assert list(reporter.healthy_nodes()) == [node_id]
        with pytest.raises(RegistryReverted, match=r"^attestation window open$"):
            reporter.mark_stale(node_id)
        chain.rpc("evm_increaseTime", [3601])
        chain.rpc("evm_mine")
        reporter.mark_stale(node_id)
        reporter.report_missed_window(node_id)
        challenge = reporter.challenge(node_id)
        proof = quote_for(challenge.qualifying_data, pcr_digest([b"\x02" * 32]))
        reporter.report_out_of_policy(node_id, proof, challenge.block_number)
        info = reporter.node(node_id)
        assert (info.stake_wei, info.status) == (9 * ETHER, "unbonding")
        assert list(reporter.healthy_nodes()) == []
        chain.rpc("evm_increaseTime", [7201])
        chain.rpc("evm_mine")
        assert operator.withdraw(node_id).event_names() == ["Withdrawn"]
    assert not chain.running


def test_missing_node_modules_is_a_clear_error(tmp_path):
    for kind in (HardhatNode, Anvil):
        node = kind(node_modules=tmp_path / "missing")
        with pytest.raises(ChainStartError, match=r"install\.sh"):
            node.start()
        assert not node.running
