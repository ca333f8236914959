"""``shadowmesh registry ...`` against Anvil, operator key from the environment; the
enroller's ``vouch`` turns an enrolment record into the voucher ``register`` submits."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import constants as ac
from attestation import tpms
from attestation.enrol import Enrolment
from contracts.quote import build_attest, sign_attest
from l2bridge.commands.main import main

pytestmark = pytest.mark.integration


def run(capsys, *args: str) -> dict:  # type: ignore[no-untyped-def]
    assert main(["registry", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def enrolment_record(key: ec.EllipticCurvePrivateKey) -> str:
    """What a verifier keeps after enrolling ``key`` as a (software stand-in) AK."""
    numbers = key.public_key().public_numbers()
    public = tpms.EccPublic(
        ac.TPM_ALG_SHA256,
        ac.AK_REQUIRED_ATTRIBUTES | ac.TPMA_USER_WITH_AUTH,
        b"",
        numbers.x.to_bytes(32, "big"),
        numbers.y.to_bytes(32, "big"),
    )
    return Enrolment(tpms.encode_public(public), bytes(32)).dump()


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
        record, voucher = tmp_path / "enrolment.json", tmp_path / "voucher.json"
        record.write_text(enrolment_record(node.key))
        operator_key = accounts[4].key.hex()
        monkeypatch.setenv("SHADOWMESH_REGISTRY_KEY", kit.ENROLLER.key.hex())
        vouch = ["vouch", "--node-id", node_id, "--enrolment", str(record),
                 "--operator", accounts[4].address, "--out"]  # fmt: skip
        vouched = run(capsys, *vouch, str(voucher))
        assert vouched["enroller"] == kit.ENROLLER.address and vouched["enroller_appointed"]
        assert vouched["operator"] == accounts[4].address
        elsewhere = tmp_path / "theirs.json"
        run(capsys, *vouch[:-3], "--operator", accounts[3].address, "--out", str(elsewhere))
        with pytest.raises(SystemExit):  # the operator is not optional
            main(["registry", *vouch[:5], "--out", str(elsewhere)])
        capsys.readouterr()
        chain_id = str(kit.w3.eth.chain_id)
        offline = tmp_path / "offline.json"
        signed_offline = run(capsys, *vouch, str(offline), "--chain-id", chain_id)
        assert signed_offline["enroller_appointed"] is None
        assert offline.read_text() == voucher.read_text()  # RFC 6979: same key, same voucher
        (tmp_path / "junk.json").write_text('{"ak_public": "00"}')
        assert main(["registry", "vouch", "--node-id", node_id, "--out", str(offline),
                     "--operator", accounts[4].address,
                     "--enrolment", str(tmp_path / "junk.json")]) == 1  # fmt: skip
        assert "malformed enrolment record" in capsys.readouterr().err
        monkeypatch.setenv("SHADOWMESH_REGISTRY_KEY", operator_key)

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
        reg = run(capsys, *register, "--node-id", node_id, "--voucher", str(voucher))
        assert [e["name"] for e in reg["events"]][:2] == ["NodeEnrolled", "NodeRegistered"]
        assert reg["events"][0]["args"]["enroller"] == kit.ENROLLER.address
        removed = run(capsys, "enroller", "remove", kit.ENROLLER.address)
        assert removed["appointed"] is False
        assert main(["registry", "enroller", "remove", kit.ENROLLER.address]) == 1
        assert "registry: not an enroller" in capsys.readouterr().err
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
