"""Gas used by the registry's operations on Anvil (osaka), one JSON line at the end.

    python bench/gas.py

Synthetic quotes in the registry's TPMS_ATTEST format (PCRs 0-9, registry-domain qualifying
data), signed with a software P-256 key, so the on-chain work (parsing, P256VERIFY, storage)
is exactly what a TPM's quote costs. Every registration carries an appointed enroller's
EIP-712 voucher (65-byte signature, ecrecover) and names an approved release, as the
contract requires; ``register_gas`` includes checking both. ``update_attestation_gas`` is an
update 60 s after the last (what every real update looks like: lastAttestation changes);
``update_attestation_same_second_gas`` one mined in the registration's second, where that
storage write costs less (the figure earlier versions reported as the update).
``register_with_region_gas``: a registration that also declares a region (one more storage
slot); ``update_region_gas``: the operator changes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account

from contracts.client import RegistryClient, connect
from contracts.quote import (
    ak_public,
    build_attest,
    pcr_digest,
    sign_attest,
)
from contracts.voucher import vouch_for
from hardware.chain import Anvil

MNEMONIC = "test test test test test test test test test test test junk"
ETHER = 10**18
GOOD = pcr_digest([b"\x01" * 32])
BAD = pcr_digest([b"\x02" * 32])
POLICY = pcr_digest([b"runtime policy"])


def main() -> None:
    Account.enable_unaudited_hdwallet_features()
    owner, operator, reporter, enroller = (
        Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(4)
    )
    figures: dict[str, object] = {"chain": "anvil 1.7.1 --hardfork osaka"}
    with Anvil() as chain:
        w3 = connect(chain.rpc_url)
        deployed = RegistryClient.deploy(w3, owner)
        receipt = w3.eth.get_transaction_receipt(
            w3.eth.get_block(w3.eth.block_number)["transactions"][0]
        )
        figures["deploy_gas"] = int(receipt["gasUsed"])
        figures["approve_digest_gas"] = deployed.approve_digest(GOOD).gas_used
        figures["approve_release_gas"] = deployed.approve_release(1, POLICY).gas_used
        figures["set_enroller_gas"] = deployed.set_enroller(enroller.address).gas_used
        op, rep = deployed.with_account(operator), deployed.with_account(reporter)
        key = ec.generate_private_key(ec.SECP256R1())
        node_id = os.urandom(32)
        clock = iter(range(1000, 10**9, 1000))

        def quote(qualifying: bytes, digest: bytes = GOOD):  # type: ignore[no-untyped-def]
            return sign_attest(key, build_attest(qualifying, digest, clock=next(clock)))

        ak = ak_public(key.public_key())
        ch = op.challenge(node_id)
        figures["register_gas"] = op.register(
            node_id, "wss://exit.example:443/ws", ak, quote(ch.qualifying_data), ch.block_number,
            stake_wei=40 * ETHER,
            voucher=vouch_for(enroller, op, node_id, ak, operator=operator.address),
        ).gas_used  # fmt: skip
        figures["update_attestation_same_second_gas"] = op.attest_with(node_id, quote).gas_used
        # A real update comes an interval later: lastAttestation changes (a storage write
        # of a new value). 60 s on, and never across a window boundary (no reputation bonus).
        now = int(w3.eth.get_block("latest")["timestamp"])
        if now % 3600 > 3600 - 120:
            chain.rpc("evm_increaseTime", [3600 - now % 3600 + 5])
            chain.rpc("evm_mine")
            figures["update_attestation_same_second_gas"] = op.attest_with(node_id, quote).gas_used
        chain.rpc("evm_increaseTime", [60])
        chain.rpc("evm_mine")
        figures["update_attestation_gas"] = op.attest_with(node_id, quote).gas_used
        chain.rpc("evm_increaseTime", [3601])
        chain.rpc("evm_mine")
        figures["mark_stale_gas"] = rep.mark_stale(node_id).gas_used
        figures["slash_missed_window_gas"] = rep.report_missed_window(node_id).gas_used
        figures["update_attestation_after_stale_gas"] = op.attest_with(node_id, quote).gas_used
        ch = rep.challenge(node_id)
        figures["slash_out_of_policy_gas"] = rep.report_out_of_policy(
            node_id, quote(ch.qualifying_data, BAD), ch.block_number
        ).gas_used
        page = op.contract.functions.listHealthy(0, 100, 0)
        figures["list_healthy_page_call_gas"] = int(page.estimate_gas())
        figures["request_withdrawal_gas"] = op.request_withdrawal(node_id).gas_used
        chain.rpc("evm_increaseTime", [7 * 24 * 3600])
        chain.rpc("evm_mine")
        figures["withdraw_gas"] = op.withdraw(node_id).gas_used
        # A node that declares its region (chain.region) at registration, then moves.
        key = ec.generate_private_key(ec.SECP256R1())
        node_id, ak = os.urandom(32), ak_public(key.public_key())
        ch = op.challenge(node_id)
        figures["register_with_region_gas"] = op.register(
            node_id, "wss://exit.example:443/ws", ak, quote(ch.qualifying_data), ch.block_number,
            stake_wei=40 * ETHER, region="DE-BE",
            voucher=vouch_for(enroller, op, node_id, ak, operator=operator.address),
        ).gas_used  # fmt: skip
        figures["update_region_gas"] = op.update_region(node_id, "US-CA").gas_used
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
