"""Pure helpers between TPM quotes and the registry contract.

A registry quote is raw TPMS_ATTEST bytes plus an ECDSA P-256 signature (r, s) over SHA-256 of
those bytes; its extraData is in the registry's own domain,
``keccak256(b"shadowmesh/registry/v1" || chainId (u256) || registry address || blockhash ||
nodeId)`` (``registry_qualifying_data``), so a quote made in a handshake (another domain) or
for another chain or registry never passes on chain or as a slashing proof. The AK public key
goes on chain as two 32-byte big-endian coordinates.

``build_attest`` and ``sign_attest`` make synthetic quotes in exactly that format with a
software P-256 key; tests and ``bench/gas.py`` use them where no TPM is involved.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from eth_abi.abi import encode as abi_encode
from eth_utils.address import is_address, to_canonical_address
from eth_utils.crypto import keccak

from contracts.constants import (
    NODE_ID_BYTES,
    NONCE_BYTES,
    P256_COORD_BYTES,
    PCR_SELECT_BITMAP,
    REGISTRY_DOMAIN,
    TPM_ALG_ECDSA,
    TPM_ALG_SHA256,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
)
from contracts.errors import QuoteFormatError

_DER_SEQUENCE = 0x30
_DEFAULT_PCR_SELECT = ((TPM_ALG_SHA256, PCR_SELECT_BITMAP),)  # the registry's selection


@dataclass(frozen=True, slots=True)
class ContractQuote:
    """A quote as the contract takes it: TPMS_ATTEST bytes and the signature's r and s."""

    attest: bytes
    r: bytes
    s: bytes

    @classmethod
    def from_parts(cls, attest: bytes, signature: bytes) -> ContractQuote:
        """From TPMS_ATTEST and a signature (TPMT_SIGNATURE or DER). Raises QuoteFormatError."""
        r, s = signature_rs(signature)
        return cls(attest=bytes(attest), r=r, s=s)


@dataclass(frozen=True, slots=True)
class AkPublic:
    """An attestation key's P-256 public point, big-endian coordinates."""

    x: bytes
    y: bytes


def registry_qualifying_data(chain_id: int, registry: str, nonce: bytes, node_id: bytes) -> bytes:
    """The extraData a registry quote answering ``nonce`` (a block hash of chain
    ``chain_id``) for ``node_id`` on the registry at ``registry`` must carry, as
    ExitNodeRegistry._qualifyingData computes it. Raises QuoteFormatError."""
    if len(nonce) != NONCE_BYTES or len(node_id) != NODE_ID_BYTES:
        raise QuoteFormatError("nonce and node id must be 32 bytes each")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id < 2**256:
        raise QuoteFormatError("chain id must be a positive integer")
    if not is_address(registry):
        raise QuoteFormatError("registry is not an Ethereum address")
    packed = (
        REGISTRY_DOMAIN
        + chain_id.to_bytes(32, "big")
        + to_canonical_address(registry)
        + nonce
        + node_id
    )
    return bytes(keccak(packed))


def ak_public(key: ec.EllipticCurvePublicKey | bytes) -> AkPublic:
    """The AK's coordinates from a key object, PEM or DER SubjectPublicKeyInfo, or an
    uncompressed SEC1 point. Raises QuoteFormatError for anything that is not P-256."""
    loaded = _load_public(key) if isinstance(key, bytes) else key
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise QuoteFormatError("the AK must be an ECC NIST P-256 key")
    numbers = loaded.public_numbers()
    return AkPublic(
        x=numbers.x.to_bytes(P256_COORD_BYTES, "big"), y=numbers.y.to_bytes(P256_COORD_BYTES, "big")
    )


def _load_public(data: bytes) -> object:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_public_key(data)
        if data[:1] == b"\x04" and len(data) == 1 + 2 * P256_COORD_BYTES:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
        return serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise QuoteFormatError("unreadable AK public key") from exc


def signature_rs(signature: bytes) -> tuple[bytes, bytes]:
    """(r, s) as 32-byte big-endian values from a TPMT_SIGNATURE (ECDSA, SHA-256) or a DER
    ECDSA signature. Raises QuoteFormatError on anything else."""
    if signature[:1] == bytes([_DER_SEQUENCE]):
        try:
            r_int, s_int = decode_dss_signature(signature)
        except ValueError as exc:
            raise QuoteFormatError("malformed DER signature") from exc
        return _coord(r_int), _coord(s_int)
    return _tpmt_signature_rs(signature)


def _tpmt_signature_rs(sig: bytes) -> tuple[bytes, bytes]:
    if len(sig) < 4:
        raise QuoteFormatError("signature too short")
    alg, hash_alg = struct.unpack_from(">HH", sig, 0)
    if alg != TPM_ALG_ECDSA or hash_alg != TPM_ALG_SHA256:
        raise QuoteFormatError("signature is not ECDSA with SHA-256")
    offset = 4
    parts: list[bytes] = []
    for _ in range(2):
        if offset + 2 > len(sig):
            raise QuoteFormatError("truncated signature")
        (size,) = struct.unpack_from(">H", sig, offset)
        offset += 2
        if size > P256_COORD_BYTES or offset + size > len(sig):
            raise QuoteFormatError("bad signature component size")
        parts.append(sig[offset : offset + size].rjust(P256_COORD_BYTES, b"\x00"))
        offset += size
    if offset != len(sig):
        raise QuoteFormatError("trailing bytes after signature")
    return parts[0], parts[1]


def _coord(value: int) -> bytes:
    if not 0 < value < 2 ** (8 * P256_COORD_BYTES):
        raise QuoteFormatError("signature component out of range")
    return value.to_bytes(P256_COORD_BYTES, "big")


def misbehavior_proof(quote: ContractQuote, nonce_block: int) -> bytes:
    """The ``proof`` argument of reportMisbehavior for an out-of-policy registry quote that
    answered block ``nonce_block`` (which must be among the chain's last 256 blocks)."""
    if isinstance(nonce_block, bool) or not isinstance(nonce_block, int) or nonce_block < 0:
        raise QuoteFormatError("nonce block must be a block number")
    types = ["bytes", "bytes32", "bytes32", "uint256"]
    return abi_encode(types, [quote.attest, quote.r, quote.s, nonce_block])


def pcr_digest(values: Sequence[bytes]) -> bytes:
    """TPMS_QUOTE_INFO.pcrDigest: SHA-256 over the selected PCR values in selection order."""
    return hashlib.sha256(b"".join(values)).digest()


def build_attest(
    extra_data: bytes,
    digest: bytes,
    *,
    clock: int = 1_000,
    reset_count: int = 0,
    restart_count: int = 0,
    safe: bool = True,
    firmware_version: int = 0x20191023,
    qualified_signer: bytes = b"\x00\x0b" + bytes(32),
    pcr_select: Sequence[tuple[int, bytes]] = _DEFAULT_PCR_SELECT,
    attest_type: int = TPM_ST_ATTEST_QUOTE,
    magic: int = TPM_GENERATED_VALUE,
) -> bytes:
    """Encode a TPMS_ATTEST for a quote (big-endian, as a TPM does)."""
    out = bytearray(struct.pack(">IH", magic, attest_type))
    out += struct.pack(">H", len(qualified_signer)) + qualified_signer
    out += struct.pack(">H", len(extra_data)) + extra_data
    out += struct.pack(">QIIB", clock, reset_count, restart_count, int(safe))
    out += struct.pack(">Q", firmware_version)
    out += struct.pack(">I", len(pcr_select))
    for hash_alg, bitmap in pcr_select:
        out += struct.pack(">HB", hash_alg, len(bitmap)) + bitmap
    out += struct.pack(">H", len(digest)) + digest
    return bytes(out)


def sign_attest(key: ec.EllipticCurvePrivateKey, attest: bytes) -> ContractQuote:
    """Sign TPMS_ATTEST bytes the way a TPM's ECDSA AK does (SHA-256 over the bytes)."""
    der = key.sign(attest, ec.ECDSA(hashes.SHA256()))
    return ContractQuote.from_parts(attest, der)
