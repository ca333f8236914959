"""Client pieces that need no chain: artifacts, keys, revert reasons."""

from __future__ import annotations

import json

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from web3.exceptions import ContractLogicError

from contracts.client import load_account, load_artifact, revert_reason
from contracts.constants import ARTIFACT_PATH, SOURCE_PATH
from contracts.errors import ArtifactError, KeyLoadError, RegistryReverted

DEV_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def test_committed_artifact_matches_source_hash():
    artifact = load_artifact()
    names = {item.get("name") for item in artifact.abi}
    assert {"register", "updateAttestation", "markStale", "reportMisbehavior", "withdraw"} <= names
    assert {"setEnroller", "isEnroller", "enrolmentDigest", "NodeEnrolled", "EnrollerSet"} <= names
    assert {"approveRelease", "releases", "acceptOwnership", "pendingOwner"} <= names
    assert "voucherDigest" not in names  # the EIP-191 form is gone
    register = next(i for i in artifact.abi if i.get("name") == "register")
    assert register["inputs"][-2:] == [
        {"internalType": "bytes", "name": "enrolmentVoucher", "type": "bytes"},
        {"internalType": "bytes8", "name": "region", "type": "bytes8"},
    ]  # fmt: skip
    assert {"updateRegion", "RegionUpdated"} <= names
    digest = next(i for i in artifact.abi if i.get("name") == "enrolmentDigest")
    assert [(i["name"], i["type"]) for i in digest["inputs"]] == [
        ("operator", "address"), ("nodeId", "bytes32"), ("akX", "bytes32"), ("akY", "bytes32")
    ]  # fmt: skip
    selection = next(i for i in artifact.abi if i.get("name") == "PCR_SELECTION")
    assert selection["outputs"][0]["type"] == "bytes3"
    assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 1000


def test_stale_or_broken_artifact_is_refused(tmp_path):
    source = tmp_path / "ExitNodeRegistry.sol"
    source.write_text(SOURCE_PATH.read_text() + "\n// edited\n")
    with pytest.raises(ArtifactError, match="stale"):
        load_artifact(ARTIFACT_PATH, source=source)
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(ArtifactError):
        load_artifact(broken, source=None)
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "missing.json", source=None)


def test_account_from_environment():
    account = load_account(env={"SHADOWMESH_REGISTRY_KEY": DEV_KEY})
    assert account.address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    with pytest.raises(KeyLoadError, match="no operator key"):
        load_account(env={})
    with pytest.raises(KeyLoadError) as info:
        load_account(env={"SHADOWMESH_REGISTRY_KEY": "0x1234"})
    assert "1234" not in str(info.value)  # the key never appears in messages


def test_account_from_keystore(tmp_path):
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(DEV_KEY, "pw", kdf="pbkdf2", iterations=2)))
    assert load_account(keystore, env={"SHADOWMESH_KEYSTORE_PASSWORD": "pw"}).address.startswith(
        "0x7099"
    )
    assert load_account(keystore, password="pw", env={}).address.startswith("0x7099")
    with pytest.raises(KeyLoadError, match="password missing"):
        load_account(keystore, env={})
    with pytest.raises(KeyLoadError):
        load_account(keystore, password="wrong", env={})
    with pytest.raises(KeyLoadError):
        load_account(tmp_path / "missing.json", password="pw", env={})


def test_revert_reason_from_data_and_message():
    data = "0x08c379a0" + abi_encode(["string"], ["not operator"]).hex()
    assert revert_reason(ContractLogicError("execution reverted: x", data=data)) == "not operator"
    assert revert_reason(ContractLogicError("execution reverted: stake below minimum")) == (
        "stake below minimum"
    )
    assert revert_reason(ContractLogicError("execution reverted", data="0x")) == ""
    assert str(RegistryReverted("")) == "reverted without a reason"
    assert RegistryReverted("nonce mismatch").reason == "nonce mismatch"
