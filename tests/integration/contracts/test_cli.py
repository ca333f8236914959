"""``shadowmesh registry ...`` against Anvil, operator key from the environment; the voucher
``register`` submits is the enrolment ceremony's output (``shadowmesh enrol``, tested with a
real TPM in test_enrol_cli)."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contracts.quote import build_attest, sign_attest
from contracts.voucher import Voucher
from l2bridge.commands.main import main

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
        policy = tmp_path / "runtime-policy.json"
        policy.write_text('{"meta": {"version": 1}, "digests": {}}')
        released = run(capsys, "release", "1", "--runtime-policy", str(policy))
        assert released["events"][0]["name"] == "ReleaseApproved"
        added = run(capsys, "enroller", "add", kit.ENROLLER.address)
        assert added["appointed"] is True and added["events"][0]["name"] == "EnrollerSet"

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
        voucher, elsewhere = tmp_path / "voucher.json", tmp_path / "theirs.json"
        chain_id = kit.w3.eth.chain_id
        for path, who in ((voucher, accounts[4].address), (elsewhere, accounts[3].address)):
            # What the ceremony's last step writes (shadowmesh enrol: test_enrol_cli).
            made = Voucher.make(
                kit.ENROLLER, cfg["address"], chain_id, node.node_id, node.ak, operator=who
            )
            path.write_text(made.dump())
        with pytest.raises(SystemExit):  # gone: vouching is the ceremony's last step
            main(["registry", "vouch"])
        capsys.readouterr()

        register = ["register", "--endpoint", "wss://cli/ws", "--ak-pub", str(ak),
                    "--attest", str(attest), "--signature", str(sig),
                    "--nonce-block", str(challenge["block_number"]), "--stake", "2"]  # fmt: skip
        other_id = kit.ExitNode.new().node_id.hex()
        assert main(["registry", *register, "--node-id", other_id, "--voucher", str(voucher)]) == 1
        assert "voucher is for another node id" in capsys.readouterr().err
        assert main(["registry", *register, "--node-id", node_id, "--voucher", str(elsewhere)]) == 1
        assert f"voucher is for operator {accounts[3].address}" in capsys.readouterr().err
        missing = str(tmp_path / "none.json")
        assert main(["registry", *register, "--node-id", node_id, "--voucher", missing]) == 1
        assert "cannot read voucher" in capsys.readouterr().err
        with pytest.raises(SystemExit):  # not an ISO 3166 code: refused before any transaction
            main(["registry", *register, "--node-id", node_id, "--voucher", str(voucher),
                  "--region", "Berlin"])  # fmt: skip
        assert "not a region" in capsys.readouterr().err
        reg = run(capsys, *register, "--node-id", node_id, "--voucher", str(voucher),
                  "--region", "DE-BE")  # fmt: skip
        assert [e["name"] for e in reg["events"]][:2] == ["NodeEnrolled", "NodeRegistered"]
        assert reg["events"][0]["args"]["enroller"] == kit.ENROLLER.address
        removed = run(capsys, "enroller", "remove", kit.ENROLLER.address)
        assert removed["appointed"] is False
        assert main(["registry", "enroller", "remove", kit.ENROLLER.address]) == 1
        assert "registry: not an enroller" in capsys.readouterr().err
        listed = run(capsys, "list")
        assert listed == {"count": 1, "healthy": ["0x" + node_id], "registered": 1}
        shown = run(capsys, "show", "--node-id", node_id)
        assert shown["region"] == "DE-BE"
        assert (shown["status"], shown["stake_wei"], shown["endpoint"]) == (
            "active",
            2 * 10**18,
            "wss://cli/ws",
        )

        assert main(["registry", "stale", "--node-id", node_id]) == 1
        assert "registry: attestation window open" in capsys.readouterr().err
        assert main(["registry", "report", "--node-id", node_id]) == 1
        assert "needs --attest" in capsys.readouterr().err
        released = run(capsys, "release", "2", "--runtime-policy", str(ak))
        assert released["runtime_policy"] == "0x" + hashlib.sha256(ak.read_bytes()).hexdigest()
        assert main(["registry", "release", "3"]) == 1
        assert "needs --runtime-policy" in capsys.readouterr().err
        assert run(capsys, "release", "2", "--revoke")["runtime_policy"] is None
        handed = run(capsys, "owner", "--transfer-to", accounts[3].address)
        assert handed["owner"] == accounts[4].address
        assert handed["pending_owner"] == accounts[3].address
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
