"""Enrolment vouchers: an enroller's on-chain-checkable word that an AK lives in a real TPM.

A quote signed by a P-256 key proves nothing about where the key lives, so the registry
takes new nodes only with a voucher from an owner-appointed enroller: a verifier that ran
the enrolment ceremony (``attestation.enrol``: EK certificate chain to a trusted maker root,
MakeCredential / ActivateCredential bound to this AK, the exit's hybrid identity signature
over (operator, AK, nodeId, chain, registry)) and then signed the EIP-712 typed data

    domain  {name: "ShadowMesh ExitNodeRegistry", version: "2", chainId, verifyingContract}
    Enrolment(address operator, bytes32 nodeId, bytes32 akX, bytes32 akY)

with its Ethereum key (eth-account's typed-data signing; nothing hashed by hand). The
registry recovers the signer with ``ecrecover`` (65 bytes ``r || s || v``, ``v`` in {27, 28},
low ``s``), taking ``operator`` to be the account sending ``register``, and requires the
signer to be an appointed enroller. The domain stops a voucher from being replayed on another
deployment or chain; nodeId and the AK stop it from admitting another node or key; the
operator stops anyone who sees a pending registration (all of it public calldata) from
copying it into their own transaction and taking the node over. A wallet shows the enroller
exactly these fields before it signs.

The voucher file (``Voucher.dump``) is JSON naming what it vouches for, so an exit can tell
"this voucher is for another AK or operator" apart from "the contract refused it".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.messages import SignableMessage, _hash_eip191_message, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_utils.address import is_address, to_checksum_address
from eth_utils.exceptions import ValidationError as EthKeysValidationError

from contracts.constants import (
    EIP712_NAME,
    EIP712_VERSION,
    MAX_VOUCHER_FILE_BYTES,
    NODE_ID_BYTES,
    P256_COORD_BYTES,
    SECP256K1_HALF_ORDER,
    VOUCHER_BYTES,
    VOUCHER_V_VALUES,
)
from contracts.errors import VoucherError
from contracts.quote import AkPublic

if TYPE_CHECKING:
    from contracts.client import RegistryClient


def _checked(
    contract: str, chain_id: int, operator: str, node_id: bytes, ak: AkPublic
) -> tuple[str, str]:
    """Checksummed (registry, operator) once every value has the contract's shape."""
    if not is_address(contract):
        raise VoucherError("registry address is not an Ethereum address")
    if not is_address(operator):
        raise VoucherError("operator is not an Ethereum address")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id < 2**256:
        raise VoucherError("chain id must be a positive integer")
    if len(node_id) != NODE_ID_BYTES:
        raise VoucherError("node id must be 32 bytes")
    if len(ak.x) != P256_COORD_BYTES or len(ak.y) != P256_COORD_BYTES:
        raise VoucherError("AK coordinates must be 32 bytes each")
    return str(to_checksum_address(contract)), str(to_checksum_address(operator))


ENROLMENT_TYPES = {
    "Enrolment": [
        {"name": "operator", "type": "address"},
        {"name": "nodeId", "type": "bytes32"},
        {"name": "akX", "type": "bytes32"},
        {"name": "akY", "type": "bytes32"},
    ]
}


def typed_enrolment(
    contract: str, chain_id: int, node_id: bytes, ak: AkPublic, *, operator: str
) -> dict[str, Any]:
    """The EIP-712 typed data an enroller signs (eth-account's ``full_message`` form)."""
    address, operator = _checked(contract, chain_id, operator, node_id, ak)
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **ENROLMENT_TYPES,
        },
        "primaryType": "Enrolment",
        "domain": {
            "name": EIP712_NAME,
            "version": EIP712_VERSION,
            "chainId": chain_id,
            "verifyingContract": address,
        },
        "message": {"operator": operator, "nodeId": node_id, "akX": ak.x, "akY": ak.y},
    }


def _signable(
    contract: str, chain_id: int, node_id: bytes, ak: AkPublic, *, operator: str
) -> SignableMessage:
    typed = typed_enrolment(contract, chain_id, node_id, ak, operator=operator)
    return encode_typed_data(full_message=typed)


def voucher_digest(
    contract: str, chain_id: int, node_id: bytes, ak: AkPublic, *, operator: str
) -> bytes:
    """The EIP-712 digest of Enrolment(operator, nodeId, akX, akY) for ``contract`` on
    ``chain_id``: what ExitNodeRegistry.enrolmentDigest computes and ecrecover checks.
    ``operator`` is the account that will send ``register``."""
    signable = _signable(contract, chain_id, node_id, ak, operator=operator)
    return bytes(_hash_eip191_message(signable))


def sign_voucher(
    account: LocalAccount,
    contract: str,
    chain_id: int,
    node_id: bytes,
    ak: AkPublic,
    *,
    operator: str,
) -> bytes:
    """The 65-byte voucher (r || s || v) signed by the enroller's ``account``, valid only
    in a ``register`` sent by ``operator``."""
    typed = typed_enrolment(contract, chain_id, node_id, ak, operator=operator)
    signature = bytes(account.sign_typed_data(full_message=typed).signature)
    _check_shape(signature)  # eth_keys already gives low s and v in {27, 28}; never send less
    return signature


def _check_shape(signature: bytes) -> None:
    if len(signature) != VOUCHER_BYTES:
        raise VoucherError(f"a voucher is {VOUCHER_BYTES} bytes, got {len(signature)}")
    if signature[64] not in VOUCHER_V_VALUES:
        raise VoucherError("voucher v must be 27 or 28")
    if int.from_bytes(signature[32:64], "big") > SECP256K1_HALF_ORDER:
        raise VoucherError("voucher s is in the upper half of the curve order")


def recover_voucher(
    signature: bytes,
    contract: str,
    chain_id: int,
    node_id: bytes,
    ak: AkPublic,
    *,
    operator: str,
) -> str:
    """The checksummed address that signed ``signature`` for these values, under the
    contract's rules. A voucher made for other values recovers some unrelated address, as
    on chain. Raises VoucherError for a malformed or unrecoverable signature."""
    _check_shape(signature)
    signable = _signable(contract, chain_id, node_id, ak, operator=operator)
    try:
        signer = Account.recover_message(signable, signature=signature)
    except (BadSignature, EthKeysValidationError, ValueError, TypeError) as exc:
        raise VoucherError(f"voucher does not recover to any key: {type(exc).__name__}") from None
    return str(signer)


@dataclass(frozen=True, slots=True)
class Voucher:
    """A voucher and what it vouches for, as stored in a voucher file."""

    contract: str
    chain_id: int
    operator: str
    node_id: bytes
    ak: AkPublic
    enroller: str
    signature: bytes

    @classmethod
    def make(
        cls,
        account: LocalAccount,
        contract: str,
        chain_id: int,
        node_id: bytes,
        ak: AkPublic,
        *,
        operator: str,
    ) -> Voucher:
        signature = sign_voucher(account, contract, chain_id, node_id, ak, operator=operator)
        address, operator = _checked(contract, chain_id, operator, node_id, ak)
        enroller = str(account.address)
        return cls(address, chain_id, operator, bytes(node_id), ak, enroller, signature)

    def dump(self) -> str:
        doc = {
            "registry": self.contract,
            "chain_id": self.chain_id,
            "operator": self.operator,
            "node_id": "0x" + self.node_id.hex(),
            "ak_x": "0x" + self.ak.x.hex(),
            "ak_y": "0x" + self.ak.y.hex(),
            "enroller": self.enroller,
            "signature": "0x" + self.signature.hex(),
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str | bytes) -> Voucher:
        """A voucher file; its signature must recover to the enroller it names.
        Raises VoucherError."""
        if len(text) > MAX_VOUCHER_FILE_BYTES:
            raise VoucherError("voucher file is too large")
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            if "operator" not in doc:
                raise VoucherError(
                    "voucher file names no operator (made before vouchers were bound to the "
                    "operator account): have the enroller vouch again with --operator"
                )
            voucher = cls(
                contract=_address(doc["registry"]),
                chain_id=_int(doc["chain_id"]),
                operator=_address(doc["operator"]),
                node_id=_hex(doc["node_id"]),
                ak=AkPublic(_hex(doc["ak_x"]), _hex(doc["ak_y"])),
                enroller=_address(doc["enroller"]),
                signature=_hex(doc["signature"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise VoucherError(f"malformed voucher file: {type(exc).__name__}: {exc}") from None
        signer = recover_voucher(
            voucher.signature,
            voucher.contract,
            voucher.chain_id,
            voucher.node_id,
            voucher.ak,
            operator=voucher.operator,
        )
        if signer != voucher.enroller:
            raise VoucherError("voucher signature is not the named enroller's")
        return voucher

    def check_for(
        self, contract: str, chain_id: int, node_id: bytes, ak: AkPublic, *, operator: str
    ) -> None:
        """Raise VoucherError naming what differs unless this voucher is for exactly these."""
        address, operator = _checked(contract, chain_id, operator, node_id, ak)
        if address != self.contract:
            raise VoucherError(f"voucher is for registry {self.contract}, not {contract}")
        if chain_id != self.chain_id:
            raise VoucherError(f"voucher is for chain {self.chain_id}, not {chain_id}")
        if operator != self.operator:
            raise VoucherError(
                f"voucher is for operator {self.operator}, not this key's {operator}"
            )
        if node_id != self.node_id:
            raise VoucherError("voucher is for another node id")
        if ak != self.ak:
            raise VoucherError("voucher is for another AK")


def vouch_for(
    enroller: LocalAccount,
    registry: RegistryClient,
    node_id: bytes,
    ak: AkPublic,
    *,
    operator: str,
) -> bytes:
    """The 65-byte voucher ``enroller`` gives (node_id, ak) on ``registry``'s deployment,
    for a ``register`` sent by the account ``operator``: one call for code (demo, tests,
    benches) that registers nodes. Raises ChainError when the chain id cannot be read."""
    chain_id = registry.chain_id()
    return sign_voucher(enroller, registry.address, chain_id, node_id, ak, operator=operator)


def _hex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a hex string")
    return bytes.fromhex(value.removeprefix("0x"))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError("expected an Ethereum address")
    return str(to_checksum_address(value))
