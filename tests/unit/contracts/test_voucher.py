"""Voucher helpers without a chain: digest layout, signing under the contract's rules,
recovery, the voucher file, and the checks an exit runs before registering."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from contracts.constants import SECP256K1_HALF_ORDER, SECP256K1_ORDER
from contracts.errors import VoucherError
from contracts.quote import AkPublic
from contracts.voucher import Voucher, recover_voucher, sign_voucher, vouch_for, voucher_digest

ENROLLER = Account.from_key("0x" + "11" * 32)
OPERATOR = Account.from_key("0x" + "12" * 32).address
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CHAIN = 31337
NODE = bytes(range(32))
AK = AkPublic(b"\x01" * 32, b"\x02" * 32)


def test_digest_is_the_eip712_digest_of_enrolment():
    """Spelled out from EIP-712 here, independently of eth-account, which signs it."""
    domain_type = (
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    domain = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [keccak(domain_type), keccak(b"ShadowMesh ExitNodeRegistry"), keccak(b"2"), CHAIN,
             REGISTRY],
        )
    )  # fmt: skip
    type_hash = keccak(b"Enrolment(address operator,bytes32 nodeId,bytes32 akX,bytes32 akY)")
    struct_hash = keccak(
        abi_encode(
            ["bytes32", "address", "bytes32", "bytes32", "bytes32"],
            [type_hash, OPERATOR, NODE, AK.x, AK.y],
        )
    )
    expected = keccak(b"\x19\x01" + domain + struct_hash)
    assert voucher_digest(REGISTRY, CHAIN, NODE, AK, operator=OPERATOR) == expected
    # Lower-case addresses are the same registry and operator.
    assert voucher_digest(REGISTRY.lower(), CHAIN, NODE, AK, operator=OPERATOR.lower()) == expected


@pytest.mark.parametrize(
    ("registry", "chain", "operator", "node", "ak"),
    [
        ("0x1234", CHAIN, OPERATOR, NODE, AK),
        (REGISTRY, 0, OPERATOR, NODE, AK),
        (REGISTRY, True, OPERATOR, NODE, AK),
        (REGISTRY, 2**256, OPERATOR, NODE, AK),
        (REGISTRY, CHAIN, "0x1234", NODE, AK),
        (REGISTRY, CHAIN, "", NODE, AK),
        (REGISTRY, CHAIN, OPERATOR, NODE[:31], AK),
        (REGISTRY, CHAIN, OPERATOR, NODE, AkPublic(b"\x01" * 31, AK.y)),
    ],
)
def test_digest_refuses_bad_inputs(registry, chain, operator, node, ak):
    with pytest.raises(VoucherError):
        voucher_digest(registry, chain, node, ak, operator=operator)


def test_sign_and_recover_round_trip_with_contract_rules():
    for i in range(40):  # many signatures: always low s and v in {27, 28}
        node = i.to_bytes(32, "big")
        voucher = sign_voucher(ENROLLER, REGISTRY, CHAIN, node, AK, operator=OPERATOR)
        assert len(voucher) == 65 and voucher[64] in (27, 28)
        assert int.from_bytes(voucher[32:64], "big") <= SECP256K1_HALF_ORDER
        assert (
            recover_voucher(voucher, REGISTRY, CHAIN, node, AK, operator=OPERATOR)
            == ENROLLER.address
        )


def test_any_other_value_recovers_someone_else():
    voucher = sign_voucher(ENROLLER, REGISTRY, CHAIN, NODE, AK, operator=OPERATOR)
    others = [
        (("0x" + "ab" * 20, CHAIN, NODE, AK), OPERATOR),
        ((REGISTRY, CHAIN + 1, NODE, AK), OPERATOR),
        ((REGISTRY, CHAIN, NODE, AK), ENROLLER.address),  # copied by another sender
        ((REGISTRY, CHAIN, os.urandom(32), AK), OPERATOR),
        ((REGISTRY, CHAIN, NODE, AkPublic(AK.y, AK.x)), OPERATOR),
    ]
    for args, who in others:
        assert recover_voucher(voucher, *args, operator=who) != ENROLLER.address


def test_malformed_signatures_are_refused():
    voucher = sign_voucher(ENROLLER, REGISTRY, CHAIN, NODE, AK, operator=OPERATOR)
    s = int.from_bytes(voucher[32:64], "big")
    twin = voucher[:32] + (SECP256K1_ORDER - s).to_bytes(32, "big") + bytes([55 - voucher[64]])
    cases = {
        "65 bytes": [b"", voucher[:64], voucher + b"\x00"],
        "v must be": [voucher[:64] + b"\x00", voucher[:64] + b"\x01", voucher[:64] + b"\x1d"],
        "upper half": [twin],
    }
    for reason, bad in cases.items():
        for signature in bad:
            with pytest.raises(VoucherError, match=reason):
                recover_voucher(signature, REGISTRY, CHAIN, NODE, AK, operator=OPERATOR)
    with pytest.raises(VoucherError, match="does not recover"):
        recover_voucher(bytes(64) + b"\x1b", REGISTRY, CHAIN, NODE, AK, operator=OPERATOR)  # r = 0


def test_voucher_file_round_trip_and_tampering():
    voucher = Voucher.make(ENROLLER, REGISTRY.lower(), CHAIN, NODE, AK, operator=OPERATOR)
    assert voucher.contract == REGISTRY and voucher.enroller == ENROLLER.address
    text = voucher.dump()
    assert Voucher.parse(text) == voucher
    assert Voucher.parse(text.encode()) == voucher
    doc = json.loads(text)
    for key, value in (
        ("enroller", Account.from_key("0x" + "22" * 32).address),  # names someone else
        ("node_id", "0x" + "00" * 32),  # the signature no longer matches it
        ("chain_id", 1),
        ("operator", ENROLLER.address),
    ):
        with pytest.raises(VoucherError, match="not the named enroller"):
            Voucher.parse(json.dumps({**doc, key: value}))
    bad_docs = [
        "not json",
        "[]",
        json.dumps({k: v for k, v in doc.items() if k != "signature"}),
        json.dumps({**doc, "chain_id": "31337"}),
        json.dumps({**doc, "chain_id": True}),
        json.dumps({**doc, "registry": "0x1234"}),
        json.dumps({**doc, "operator": "0x1234"}),
        json.dumps({**doc, "signature": "0xzz"}),
        json.dumps({**doc, "ak_x": 5}),
    ]
    for bad in bad_docs:
        with pytest.raises(VoucherError):
            Voucher.parse(bad)
    older = json.dumps({k: v for k, v in doc.items() if k != "operator"})
    with pytest.raises(VoucherError, match=r"names no operator.*--operator"):
        Voucher.parse(older)
    with pytest.raises(VoucherError, match="too large"):
        Voucher.parse(" " * 5000 + text)


def test_check_for_names_what_differs():
    voucher = Voucher.make(ENROLLER, REGISTRY, CHAIN, NODE, AK, operator=OPERATOR)
    voucher.check_for(REGISTRY.lower(), CHAIN, NODE, AK, operator=OPERATOR)
    differs = [
        (("0x" + "ab" * 20, CHAIN, NODE, AK), OPERATOR, "for registry"),
        ((REGISTRY, 1, NODE, AK), OPERATOR, "for chain 31337"),
        ((REGISTRY, CHAIN, NODE, AK), ENROLLER.address, f"for operator {OPERATOR}"),
        ((REGISTRY, CHAIN, bytes(32), AK), OPERATOR, "another node id"),
        ((REGISTRY, CHAIN, NODE, AkPublic(AK.y, AK.x)), OPERATOR, "another AK"),
    ]
    for args, who, reason in differs:
        with pytest.raises(VoucherError, match=reason):
            voucher.check_for(*args, operator=who)


@dataclass
class FakeRegistry:
    address: str
    chain: int

    def chain_id(self) -> int:
        return self.chain


def test_vouch_for_takes_address_and_chain_from_the_registry_and_needs_the_operator():
    registry = FakeRegistry(REGISTRY, CHAIN)
    voucher = vouch_for(ENROLLER, registry, NODE, AK, operator=OPERATOR)  # type: ignore[arg-type]
    assert voucher == sign_voucher(ENROLLER, REGISTRY, CHAIN, NODE, AK, operator=OPERATOR)
    with pytest.raises(TypeError):
        vouch_for(ENROLLER, registry, NODE, AK)  # type: ignore[arg-type,call-arg]
