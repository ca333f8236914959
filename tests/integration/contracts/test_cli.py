"""``shadowmesh registry ...`` against Anvil, operator key from the environment."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contracts.quote import build_attest, sign_attest
from l2bridge.command import main

pytestmark = pytest.mark.integration


def run(capsys, *args: str) -> dict:  # type: ignore[no-untyped-def]
    assert main(["registry", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_registry_commands(accounts, kit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHADOWMESH_RPC_URL", kit.w3.provider.endpoint_uri)
    monkeypatch.setenv("SHADOWMESH_REGISTRY_KEY", accounts[4].key.hex())
    snapshot = kit.rpc("evm_snapshot")
    try:
        cfg = run(capsys, "deploy", "--minimum-stake", "1.5", "--interval", "600")
        assert cfg["minimum_stake_wei"] == 15 * 10**17 and cfg["owner"] == accounts[4].address
        monkeypatch.setenv("SHADOWMESH_REGISTRY", cfg["address"])
        approved = run(capsys, "approve", kit.GOOD.hex())
        assert approved["events"][0]["name"] == "DigestApproved"

        node = kit.ExitNode.new()
        node_id = node.node_id.hex()
        challenge = run(capsys, "challenge", "--node-id", node_id)
        quote = sign_attest(
            node.key, build_attest(bytes.fromhex(challenge["qualifying_data"][2:]), kit.GOOD)
        )
        attest, sig, ak = tmp_path / "attest.bin", tmp_path / "sig.der", tmp_path / "ak.pem"
        attest.write_bytes(quote.attest)
        sig.write_bytes(node.key.sign(quote.attest, ec.ECDSA(hashes.SHA256())))  # DER
        ak.write_bytes(
            node.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        reg = run(capsys, "register", "--node-id", node_id, "--endpoint", "wss://cli/ws",
                  "--ak-pub", str(ak), "--attest", str(attest), "--signature", str(sig),
                  "--nonce-block", str(challenge["block_number"]), "--stake", "2")  # fmt: skip
        assert reg["events"][0]["name"] == "NodeRegistered"
        listed = run(capsys, "list")
        assert listed == {"count": 1, "healthy": ["0x" + node_id], "registered": 1}
        shown = run(capsys, "show", "--node-id", node_id)
        assert (shown["status"], shown["stake_wei"], shown["endpoint"]) == (
            "active",
            2 * 10**18,
            "wss://cli/ws",
        )

        assert main(["registry", "stale", "--node-id", node_id]) == 1
        assert "registry: attestation window open" in capsys.readouterr().err
        assert main(["registry", "report", "--node-id", node_id]) == 1
        assert "needs --attest" in capsys.readouterr().err
        kit.advance(601)
        assert run(capsys, "report", "--node-id", node_id, "--missed-window")["events"]
        assert run(capsys, "show", "--node-id", node_id)["status"] == "stale"
        assert run(capsys, "withdraw", "--node-id", node_id, "--request")["events"]
        assert main(["registry", "withdraw", "--node-id", node_id]) == 1
        assert "unbonding delay not over" in capsys.readouterr().err
        monkeypatch.delenv("SHADOWMESH_REGISTRY_KEY")
        assert main(["registry", "stale", "--node-id", node_id]) == 1
        assert "no operator key" in capsys.readouterr().err
    finally:
        kit.rpc("evm_revert", snapshot)
