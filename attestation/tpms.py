"""Pure codecs for the TPM 2.0 structures a quote is made of.

TPMS_ATTEST (quote only), TPMT_SIGNATURE (ECDSA only) and TPMT_PUBLIC (ECC only), all
big-endian as the TPM marshals them. Parsing rejects anything outside the profile we
use (P-256, ECDSA, SHA-256) instead of half-understanding it; every length is checked
before it is used. Each ``parse_*`` raises ``EvidenceError`` with a short reason and is the
exact inverse of the matching ``encode_*``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation import constants as c
from attestation.errors import EvidenceError


class Reader:
    """Bounds-checked big-endian reader over one buffer (TPM structures, evidence)."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise EvidenceError(f"truncated {what}")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack(">H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack(">I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack(">Q", self.take(8, what))[0])

    def tpm2b(self, what: str, limit: int = c.MAX_TPM2B_SIZE) -> bytes:
        size = self.u16(what)
        if size > limit:
            raise EvidenceError(f"{what} too large")
        return self.take(size, what)

    def end(self, what: str) -> None:
        if self._pos != len(self._data):
            raise EvidenceError(f"trailing bytes after {what}")


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


@dataclass(frozen=True, slots=True)
class ClockInfo:
    clock: int  # milliseconds the TPM has been powered, never goes backwards
    reset_count: int  # TPM2_Startup(CLEAR) count (reboots)
    restart_count: int  # resumes since the last reset
    safe: bool


@dataclass(frozen=True, slots=True)
class QuoteAttest:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE with one SHA-256 PCR selection."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcrs: tuple[int, ...]  # selected PCR indices, ascending (the order of pcrDigest)
    pcr_digest: bytes


def pcr_bitmap(pcrs: tuple[int, ...]) -> bytes:
    bitmap = bytearray(c.PCR_SELECT_SIZE)
    for index in pcrs:
        if not 0 <= index < c.PCR_COUNT:
            raise EvidenceError("PCR index out of range")
        bitmap[index // 8] |= 1 << (index % 8)
    return bytes(bitmap)


def pcrs_from_bitmap(bitmap: bytes) -> tuple[int, ...]:
    return tuple(i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1)


def pcr_digest(values: tuple[bytes, ...]) -> bytes:
    """SHA-256 over the selected PCR values concatenated in selection order."""
    return hashlib.sha256(b"".join(values)).digest()


def parse_attest(data: bytes) -> QuoteAttest:
    r = Reader(data)
    if r.u32("magic") != c.TPM_GENERATED_VALUE:
        raise EvidenceError("attest magic is not TPM_GENERATED_VALUE")
    if r.u16("type") != c.TPM_ST_ATTEST_QUOTE:
        raise EvidenceError("attest is not a quote")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock = ClockInfo(r.u64("clock"), r.u32("resetCount"), r.u32("restartCount"), False)
    safe = r.u8("safe")
    if safe > 1:
        raise EvidenceError("clockInfo.safe is not a boolean")
    clock = ClockInfo(clock.clock, clock.reset_count, clock.restart_count, safe == 1)
    firmware = r.u64("firmwareVersion")
    if r.u32("pcrSelect count") != 1:
        raise EvidenceError("quote must select exactly one PCR bank")
    if r.u16("pcrSelect hash") != c.TPM_ALG_SHA256:
        raise EvidenceError("quote must select the SHA-256 bank")
    size = r.u8("sizeofSelect")
    if size != c.PCR_SELECT_SIZE:
        raise EvidenceError("unexpected PCR bitmap size")
    pcrs = pcrs_from_bitmap(r.take(size, "pcrSelect bitmap"))
    digest = r.tpm2b("pcrDigest")
    if len(digest) != c.SHA256_SIZE:
        raise EvidenceError("pcrDigest is not a SHA-256 digest")
    r.end("TPMS_ATTEST")
    return QuoteAttest(signer, extra, clock, firmware, pcrs, digest)


def encode_attest(a: QuoteAttest) -> bytes:
    ci = a.clock_info
    return b"".join(
        (
            struct.pack(">IH", c.TPM_GENERATED_VALUE, c.TPM_ST_ATTEST_QUOTE),
            _tpm2b(a.qualified_signer),
            _tpm2b(a.extra_data),
            struct.pack(">QIIB", ci.clock, ci.reset_count, ci.restart_count, int(ci.safe)),
            struct.pack(">Q", a.firmware_version),
            struct.pack(">IHB", 1, c.TPM_ALG_SHA256, c.PCR_SELECT_SIZE),
            pcr_bitmap(a.pcrs),
            _tpm2b(a.pcr_digest),
        )
    )


@dataclass(frozen=True, slots=True)
class EcdsaSignature:
    r: int
    s: int


def parse_signature(data: bytes) -> EcdsaSignature:
    rd = Reader(data)
    if rd.u16("sigAlg") != c.TPM_ALG_ECDSA:
        raise EvidenceError("signature is not ECDSA")
    if rd.u16("signature hash") != c.TPM_ALG_SHA256:
        raise EvidenceError("signature hash is not SHA-256")
    r = rd.tpm2b("signatureR", c.P256_COORD_SIZE)
    s = rd.tpm2b("signatureS", c.P256_COORD_SIZE)
    rd.end("TPMT_SIGNATURE")
    return EcdsaSignature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


def encode_signature(sig: EcdsaSignature) -> bytes:
    size = c.P256_COORD_SIZE
    if not (0 <= sig.r < 1 << (8 * size) and 0 <= sig.s < 1 << (8 * size)):
        raise EvidenceError("signature component out of range")
    return struct.pack(">HH", c.TPM_ALG_ECDSA, c.TPM_ALG_SHA256) + b"".join(
        _tpm2b(v.to_bytes(size, "big")) for v in (sig.r, sig.s)
    )


@dataclass(frozen=True, slots=True)
class EccPublic:
    """TPMT_PUBLIC of an ECC NIST P-256 ECDSA-SHA256 key (an AK)."""

    name_alg: int
    attributes: int
    auth_policy: bytes
    x: bytes
    y: bytes

    @property
    def is_restricted_signing_key(self) -> bool:
        attrs = self.attributes
        required = c.AK_REQUIRED_ATTRIBUTES
        return attrs & required == required and not attrs & c.TPMA_DECRYPT

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key as a cryptography object; raises EvidenceError if not on the curve."""
        try:
            point = b"\x04" + self.x.rjust(32, b"\0") + self.y.rjust(32, b"\0")
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise EvidenceError("AK public point is not on P-256") from None


def parse_public(data: bytes) -> EccPublic:
    r = Reader(data)
    if r.u16("type") != c.TPM_ALG_ECC:
        raise EvidenceError("public key is not ECC")
    name_alg = r.u16("nameAlg")
    if name_alg != c.TPM_ALG_SHA256:
        raise EvidenceError("public key nameAlg is not SHA-256")
    attributes = r.u32("objectAttributes")
    policy = r.tpm2b("authPolicy", c.SHA256_SIZE)
    sym = r.u16("symmetric")
    if sym != c.TPM_ALG_NULL:  # a signing key has no symmetric algorithm
        raise EvidenceError("signing key must not have a symmetric algorithm")
    if r.u16("scheme") != c.TPM_ALG_ECDSA or r.u16("scheme hash") != c.TPM_ALG_SHA256:
        raise EvidenceError("key scheme is not ECDSA-SHA256")
    if r.u16("curveID") != c.TPM_ECC_NIST_P256:
        raise EvidenceError("key curve is not NIST P-256")
    if r.u16("kdf") != c.TPM_ALG_NULL:
        raise EvidenceError("key must not have a KDF")
    x = r.tpm2b("unique.x", c.P256_COORD_SIZE)
    y = r.tpm2b("unique.y", c.P256_COORD_SIZE)
    r.end("TPMT_PUBLIC")
    return EccPublic(name_alg, attributes, policy, x, y)


def encode_public(p: EccPublic) -> bytes:
    return b"".join(
        (
            struct.pack(">HHI", c.TPM_ALG_ECC, p.name_alg, p.attributes),
            _tpm2b(p.auth_policy),
            struct.pack(
                ">HHHHH",
                c.TPM_ALG_NULL,
                c.TPM_ALG_ECDSA,
                c.TPM_ALG_SHA256,
                c.TPM_ECC_NIST_P256,
                c.TPM_ALG_NULL,
            ),
            _tpm2b(p.x),
            _tpm2b(p.y),
        )
    )


def public_name(public: bytes) -> bytes:
    """The TPM name of an object: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC)."""
    return struct.pack(">H", c.TPM_ALG_SHA256) + hashlib.sha256(public).digest()


def verify_signature(public: EccPublic, attest: bytes, sig: EcdsaSignature) -> bool:
    """True iff ``sig`` is the key's ECDSA-SHA256 signature over ``attest``."""
    try:
        public.public_key().verify(
            encode_dss_signature(sig.r, sig.s), attest, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True
