import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import tpms
from attestation.cli import boot_digest
from attestation.errors import AttestationError, EvidenceError

# Captured from swtpm 0.7.1: a quote over sha256:0-7,23 by a P-256 AK.
ATTEST = bytes.fromhex(
    "ff54434780180022000bdbdac06389e3a18156da1f357d530cfc5d4b56e89d956fabf2364f06ef718e0c00"
    "2022222222222222222222222222222222222222222222222222222222222222220000000000000597"
    "6f06f30e9efc74eb006484d9ff1152244e00000001000b03ff00800020a8a4837f94fcb3f53d627766"
    "9e9cb07f0f379ba1baaf399aa3400b9b0e8f3d23"
)
SIGNATURE = bytes.fromhex(
    "0018000b002029b8c8f6616173890595b6acfffc7dba67cc8555cbb175b51deebbae3e11c8bd0020ec"
    "789018311bfff3fd6ab011c8f2406ebf5e83896c05fda96b29baf18097d76f"
)
PUBLIC = bytes.fromhex(
    "0023000b00050072000000100018000b000300100020a83971467fcf5c5cf89ce594fa75248e25b1be"
    "300a2a2145fa88e54a7a343bc30020ac46eb9b39d597844bdc341a4f66c245968223e40d97b4c924e9"
    "5aa6153933c7"
)


def test_real_quote_parses_and_verifies():
    attest = tpms.parse_attest(ATTEST)
    assert attest.pcrs == (0, 1, 2, 3, 4, 5, 6, 7, 23)
    assert attest.extra_data == b"\x22" * 32
    assert attest.clock_info.clock == 0x597
    public = tpms.parse_public(PUBLIC)
    assert public.is_restricted_signing_key
    signature = tpms.parse_signature(SIGNATURE)
    assert tpms.verify_signature(public, ATTEST, signature)
    assert not tpms.verify_signature(public, ATTEST[:-1] + b"\x00", signature)


def test_round_trips_are_exact():
    assert tpms.encode_attest(tpms.parse_attest(ATTEST)) == ATTEST
    assert tpms.encode_signature(tpms.parse_signature(SIGNATURE)) == SIGNATURE
    assert tpms.encode_public(tpms.parse_public(PUBLIC)) == PUBLIC


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, b"\x00", "magic"),
        (5, b"\x17", "not a quote"),  # TPM_ST_ATTEST_CERTIFY
    ],
)
def test_attest_rejects_other_structures(offset, value, reason):
    bad = ATTEST[:offset] + value + ATTEST[offset + 1 :]
    with pytest.raises(EvidenceError, match=reason):
        tpms.parse_attest(bad)


def test_attest_rejects_trailing_and_truncated():
    with pytest.raises(EvidenceError, match="trailing"):
        tpms.parse_attest(ATTEST + b"\x00")
    for cut in range(len(ATTEST)):
        with pytest.raises(EvidenceError):
            tpms.parse_attest(ATTEST[:cut])


def test_attest_rejects_sha1_bank():
    sha256_sel = bytes.fromhex("00000001000b03ff0080")
    at = ATTEST.index(sha256_sel)
    bad = ATTEST[:at] + bytes.fromhex("000000010004") + ATTEST[at + 6 :]
    with pytest.raises(EvidenceError, match="SHA-256 bank"):
        tpms.parse_attest(bad)


def test_public_rejects_unrestricted_and_decrypt_keys():
    public = tpms.parse_public(PUBLIC)
    for attrs in (0x00040072, 0x00070072):  # sign without restricted; sign+decrypt
        other = tpms.EccPublic(public.name_alg, attrs, b"", public.x, public.y)
        assert not tpms.parse_public(tpms.encode_public(other)).is_restricted_signing_key


def test_public_point_must_be_on_curve():
    public = tpms.parse_public(PUBLIC)
    off_curve = tpms.EccPublic(public.name_alg, public.attributes, b"", public.x, b"\x01" * 32)
    with pytest.raises(EvidenceError, match="P-256"):
        off_curve.public_key()


def test_public_rejects_rsa_and_other_curves():
    with pytest.raises(EvidenceError, match="not ECC"):
        tpms.parse_public(b"\x00\x01" + PUBLIC[2:])
    curve_at = PUBLIC.index(bytes.fromhex("0003001000"))
    with pytest.raises(EvidenceError, match="P-256"):
        tpms.parse_public(PUBLIC[:curve_at] + b"\x00\x04" + PUBLIC[curve_at + 2 :])


def test_signature_profile_is_ecdsa_sha256_only():
    with pytest.raises(EvidenceError, match="not ECDSA"):
        tpms.parse_signature(b"\x00\x14" + SIGNATURE[2:])  # RSASSA
    with pytest.raises(EvidenceError, match="SHA-256"):
        tpms.parse_signature(SIGNATURE[:2] + b"\x00\x04" + SIGNATURE[4:])
    with pytest.raises(EvidenceError, match="too large"):
        tpms.parse_signature(SIGNATURE[:4] + b"\x00\x21" + b"\x01" * 33 + b"\x00\x00")


def test_name_is_sha256_of_public_area():
    name = tpms.public_name(PUBLIC)
    assert name[:2] == b"\x00\x0b" and len(name) == 34


def test_pcr_bitmap_round_trip():
    assert tpms.pcr_bitmap((0, 7, 23)) == bytes([0x81, 0x00, 0x80])
    assert tpms.pcrs_from_bitmap(bytes([0x81, 0x00, 0x80])) == (0, 7, 23)
    with pytest.raises(EvidenceError):
        tpms.pcr_bitmap((24,))


def test_software_signature_verifies_like_a_tpm_one():
    key = ec.generate_private_key(ec.SECP256R1())
    n = key.public_key().public_numbers()
    public = tpms.EccPublic(
        0x000B, 0x00050072, b"", n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")
    )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(ATTEST, ec.ECDSA(hashes.SHA256())))
    sig = tpms.parse_signature(tpms.encode_signature(tpms.EcdsaSignature(r, s)))
    assert tpms.verify_signature(public, ATTEST, sig)
    assert not tpms.verify_signature(tpms.parse_public(PUBLIC), ATTEST, sig)


def test_boot_digest_is_the_quote_digest_over_pcrs_0_to_9_and_needs_all_ten() -> None:
    pcrs = tuple((i, bytes([i]) * 32) for i in range(11))  # as evidence holds them: 0-10
    expected = hashlib.sha256(b"".join(bytes([i]) * 32 for i in range(10))).digest()
    assert boot_digest(pcrs) == expected
    assert boot_digest(tuple(reversed(pcrs))) == expected  # selection order, not list order
    with pytest.raises(AttestationError, match=r"lacks boot PCR\(s\) \[4\]"):
        boot_digest(tuple(p for p in pcrs if p[0] != 4))
