"""Quote helpers: qualifying data, signature and key encodings, TPMS_ATTEST layout."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from eth_abi.abi import decode as abi_decode

from attestation import tpms
from contracts.constants import PCR_SELECT_BITMAP, QUOTED_PCRS, SOURCE_PATH
from contracts.errors import QuoteFormatError
from contracts.quote import (
    ContractQuote,
    ak_public,
    build_attest,
    misbehavior_proof,
    pcr_digest,
    qualifying_data,
    sign_attest,
    signature_rs,
)
from exitnode.lifecycle import REGISTRY_PCRS

KEY = ec.derive_private_key(12345, ec.SECP256R1())


def tpmt_signature(r: bytes, s: bytes) -> bytes:
    return struct.pack(">HHH", 0x0018, 0x000B, len(r)) + r + struct.pack(">H", len(s)) + s


def test_qualifying_data_is_the_shared_formula():
    nonce, node = bytes(range(32)), bytes(range(32, 64))
    expected = hashlib.sha256(b"shadowmesh-attest-v1" + nonce + node).digest()
    assert qualifying_data(nonce, node) == expected
    with pytest.raises(QuoteFormatError):
        qualifying_data(nonce[:31], node)


def test_signature_from_der_and_tpmt_agree():
    der = KEY.sign(b"attest", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    rb, sb = r.to_bytes(32, "big"), s.to_bytes(32, "big")
    assert signature_rs(der) == (rb, sb)
    # A TPM may drop leading zero bytes; they come back as padding.
    assert signature_rs(tpmt_signature(rb.lstrip(b"\0"), sb)) == (rb, sb)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00\x18",
        struct.pack(">HH", 0x0014, 0x000B) + b"\x00\x01\x01\x00\x01\x01",  # RSASSA
        struct.pack(">HH", 0x0018, 0x0004) + b"\x00\x01\x01\x00\x01\x01",  # SHA-1
        tpmt_signature(b"\x01" * 33, b"\x01"),
        tpmt_signature(b"\x01", b"\x01") + b"\x00",
        tpmt_signature(b"\x01", b"\x01")[:-1],
        b"\x30\x03\x02\x01",
    ],
)
def test_bad_signatures_are_refused(bad):
    with pytest.raises(QuoteFormatError):
        signature_rs(bad)


def test_ak_public_from_every_encoding():
    pub = KEY.public_key()
    expected = ak_public(pub)
    numbers = pub.public_numbers()
    assert expected.x == numbers.x.to_bytes(32, "big") and expected.y == numbers.y.to_bytes(
        32, "big"
    )
    for encoding, fmt in (
        (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
    ):
        assert ak_public(pub.public_bytes(encoding, fmt)) == expected
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(QuoteFormatError):
        ak_public(p384)
    with pytest.raises(QuoteFormatError):
        ak_public(b"not a key")


def test_build_attest_layout():
    extra, digest = b"\x11" * 32, b"\x22" * 32
    blob = build_attest(extra, digest, clock=7, reset_count=3, firmware_version=9)
    assert blob[:6] == bytes.fromhex("ff5443478018")
    signer_len = struct.unpack(">H", blob[6:8])[0]
    o = 8 + signer_len
    assert blob[o : o + 2] == b"\x00\x20" and blob[o + 2 : o + 34] == extra
    clock, resets, restarts, safe = struct.unpack(">QIIB", blob[o + 34 : o + 51])
    assert (clock, resets, restarts, safe) == (7, 3, 0, 1)
    assert struct.unpack(">Q", blob[o + 51 : o + 59])[0] == 9
    # One selection: SHA-256 bank, 3-byte bitmap of PCRs 0-7 and 23 (the registry's).
    assert blob[o + 59 :] == bytes.fromhex("00000001000b03ff0080") + b"\x00\x20" + digest


def test_registry_selection_is_what_the_exit_quotes():
    """The contract's fixed PCR_SELECTION, the client's copy and the selection of the exit's
    registry quotes (``ExitLifecycle.quote_for``) are one and the same, so a real exit's
    quote passes on chain."""
    assert PCR_SELECT_BITMAP == tpms.pcr_bitmap(REGISTRY_PCRS) == bytes.fromhex("ff0080")
    assert QUOTED_PCRS == REGISTRY_PCRS
    parsed = tpms.parse_attest(build_attest(b"\x11" * 32, b"\x22" * 32))
    assert parsed.pcrs == REGISTRY_PCRS
    source = SOURCE_PATH.read_text()
    assert "bytes3 public constant PCR_SELECTION = 0xFF0080;" in source


def test_sign_attest_verifies_and_proof_encodes():
    attest = build_attest(b"\x01" * 32, pcr_digest([b"\x00" * 32]))
    quote = sign_attest(KEY, attest)
    r, s = int.from_bytes(quote.r, "big"), int.from_bytes(quote.s, "big")
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    KEY.public_key().verify(encode_dss_signature(r, s), attest, ec.ECDSA(hashes.SHA256()))
    nonce = b"\x05" * 32
    decoded = abi_decode(
        ["bytes", "bytes32", "bytes32", "bytes32"], misbehavior_proof(quote, nonce)
    )
    assert decoded == (attest, quote.r, quote.s, nonce)
    assert ContractQuote.from_parts(attest, tpmt_signature(quote.r, quote.s)) == quote
    with pytest.raises(QuoteFormatError):
        misbehavior_proof(quote, b"short")
