"""Attestation against a real software TPM (swtpm), one TPM for the whole module."""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation import constants as c
from attestation import enrol, measure, verifier
from attestation import evidence as ev
from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused, EnrolmentError
from attestation.policy import GoldenPolicy
from attestation.provider import EvidenceProvider
from attestation.quote import Attester
from attestation.tpm import Tpm
from hardware.tpm import Swtpm

pytestmark = pytest.mark.integration

NODE_ID = hashlib.sha256(b"integration exit").digest()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def swtpm():
    with Swtpm() as tpm:
        yield tpm


@pytest.fixture(scope="module")
def trust(swtpm):
    return enrol.load_certificates([swtpm.root_ca]), enrol.load_certificates(
        [swtpm.intermediate_ca]
    )


@pytest.fixture(scope="module")
def enrolled(swtpm, trust):
    return enrol.enrol(swtpm.tcti, *trust, _now())


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    config = tmp_path_factory.mktemp("cfg") / "exit.yaml"
    config.write_text("security:\n  attestation_required: true\n")
    return measure.build_manifest(measure.installed_software(), config, NODE_ID)


@pytest.fixture
def attester(swtpm, enrolled, manifest):
    ak, _ = enrolled
    with Attester(swtpm.tcti, ak, manifest) as a:
        a.measure()
        yield a


def _golden(attester: Attester) -> GoldenPolicy:
    return GoldenPolicy(
        pcrs=tuple((i, v) for i, v in attester.read_pcrs() if i != c.MEASUREMENT_PCR),
        manifest=tuple(sorted((m.name, m.digest) for m in attester.manifest[:-1])),
        max_age_s=300,
    )


def _verify(data, enrolled, golden, nonce, previous=None):
    return verifier.verify(
        data,
        nonce=nonce,
        node_id=NODE_ID,
        trusted_ak=enrolled[1].ak_public,
        policy=golden,
        previous=previous,
        now=time.time(),
    )


def test_happy_path(attester, enrolled):
    golden = _golden(attester)
    nonce = os.urandom(32)
    data = attester.evidence(nonce, NODE_ID, time.time())
    assert len(data) < c.MAX_EVIDENCE_SIZE
    verdict = _verify(data, enrolled, golden, nonce)
    assert verdict.ok, verdict.reasons
    e = ev.decode(data)
    assert e.ak_public == enrolled[0].tpmt_public
    assert dict(e.pcrs)[c.MEASUREMENT_PCR] == ev.replay_manifest(attester.manifest)


def test_pcr_extended_after_golden_names_the_pcr(attester, enrolled):
    golden = _golden(attester)
    with Tpm(attester.tcti) as tpm:
        tpm.extend_pcr(c.MEASUREMENT_PCR, hashlib.sha256(b"rootkit").digest())
    nonce = os.urandom(32)
    verdict = _verify(attester.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    assert verdict.reasons == ("manifest: PCR 23 does not match the replayed manifest",)


def test_boot_pcr_extended_after_golden_names_the_pcr(attester, enrolled):
    golden = _golden(attester)
    with Tpm(attester.tcti) as tpm:
        tpm.extend_pcr(7, hashlib.sha256(b"secure boot disabled").digest())
    nonce = os.urandom(32)
    verdict = _verify(attester.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    assert verdict.reasons == ("pcr-policy: PCR 7 differs from golden policy",)


def test_wrong_nonce(attester, enrolled):
    golden = _golden(attester)
    data = attester.evidence(os.urandom(32), NODE_ID, time.time())
    verdict = _verify(data, enrolled, golden, os.urandom(32))
    assert [f.check for f in verdict.failures] == [verifier.NONCE, verifier.NONCE]


def test_replayed_old_evidence(attester, enrolled):
    golden = _golden(attester)
    old_nonce = os.urandom(32)
    old = attester.evidence(old_nonce, NODE_ID, time.time())
    first = _verify(old, enrolled, golden, old_nonce)
    time.sleep(0.01)  # let the TPM clock (milliseconds) move on
    nonce = os.urandom(32)
    fresh = _verify(
        attester.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce, first.state
    )
    assert fresh.ok, fresh.reasons
    replay = _verify(old, enrolled, golden, os.urandom(32), fresh.state)
    assert {f.check for f in replay.failures} == {verifier.NONCE, verifier.COUNTERS}


def test_signature_by_another_ak(swtpm, attester, enrolled, manifest):
    golden = _golden(attester)
    with Tpm(swtpm.tcti) as tpm:
        other = enrol.create_ak(tpm)
    with Attester(swtpm.tcti, other, manifest) as impostor:
        nonce = os.urandom(32)
        data = impostor.evidence(nonce, NODE_ID, time.time())
    verdict = _verify(data, enrolled, golden, nonce)
    assert verdict.reasons == ("signature: quote was not signed by the enrolled AK",)


def test_credential_activation_fails_for_an_ak_it_was_not_made_for(swtpm, trust):
    with Tpm(swtpm.tcti) as tpm:
        ak = enrol.create_ak(tpm)
        other = enrol.create_ak(tpm)
        req = enrol.request(tpm, ak)
        enrol.check_ek_certificate(req, *trust, _now())
        # The challenge is bound to the other AK's name; ours cannot open it.
        challenge, _ = enrol.make_challenge(
            enrol.EnrolmentRequest(req.ek_public, req.ek_certificate, other.tpmt_public)
        )
        with pytest.raises(EnrolmentError, match="credential activation failed"):
            enrol.answer(tpm, ak, challenge)
        # And the right AK answering someone else's secret is refused too.
        challenge, expected = enrol.make_challenge(req)
        answered = enrol.answer(tpm, ak, challenge)
        assert enrol.finish(req, expected, answered).ak_public == ak.tpmt_public
        with pytest.raises(EnrolmentError, match="wrong secret"):
            enrol.finish(req, os.urandom(32), answered)


def _self_signed_ca() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the TPM maker")])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_ek_certificate_must_chain_to_the_configured_ca(swtpm, trust):
    with Tpm(swtpm.tcti) as tpm:
        req = enrol.request(tpm, enrol.create_ak(tpm))
    with pytest.raises(EnrolmentError, match="does not chain"):
        enrol.check_ek_certificate(req, [_self_signed_ca()], trust[1], _now())
    with pytest.raises(EnrolmentError, match="does not chain"):  # intermediate missing
        enrol.check_ek_certificate(req, trust[0], [], _now())
    with pytest.raises(EnrolmentError, match="does not chain"):  # not yet valid then
        enrol.check_ek_certificate(req, *trust, _now() - datetime.timedelta(days=2))
    with Tpm(swtpm.tcti) as tpm:  # an EK public the certificate does not certify
        _, other_ek, _ = tpm.endorsement_key()
    wrong = enrol.EnrolmentRequest(other_ek[:-8] + bytes(8), req.ek_certificate, req.ak_public)
    with pytest.raises(EnrolmentError, match="does not certify"):
        enrol.check_ek_certificate(wrong, *trust, _now())


def _log_event(pcr: int, data: bytes) -> bytes:
    digest = hashlib.sha256(data).digest()
    return (
        struct.pack("<III", pcr, 0x0D, 1)
        + struct.pack("<H", 0x000B)
        + digest
        + struct.pack("<I", len(data))
        + data
    )


def test_event_log_replays_against_the_tpm(attester):
    spec = c.SPEC_ID_SIGNATURE + struct.pack("<IBBBBIHHB", 0, 0, 2, 0, 2, 1, 0x000B, 32, 0)
    header = struct.pack("<II", 0, c.EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    log = header + _log_event(16, b"kernel") + _log_event(16, b"initrd")
    with Tpm(attester.tcti) as tpm:
        tpm.reset_pcr(16)  # the debug PCR: resettable, not quoted
        for data in (b"kernel", b"initrd"):
            tpm.extend_pcr(16, hashlib.sha256(data).digest())
    events = measure.parse_event_log(log)
    assert attester.event_log_mismatches(events) == []
    with Tpm(attester.tcti) as tpm:
        tpm.extend_pcr(16, hashlib.sha256(b"unlogged").digest())
    assert attester.event_log_mismatches(events) == [16]


def test_stale_evidence(attester, enrolled):
    golden = _golden(attester)
    nonce = os.urandom(32)
    data = attester.evidence(nonce, NODE_ID, time.time() - 3600)
    verdict = _verify(data, enrolled, golden, nonce)
    assert [f.check for f in verdict.failures] == [verifier.AGE]


def test_provider_and_checker_in_a_handshake(attester, enrolled):
    golden = _golden(attester)
    provider = EvidenceProvider(attester, NODE_ID)
    checker = EvidenceChecker(golden, {NODE_ID: enrolled[1].ak_public})
    nonce = os.urandom(32)
    checker(provider(nonce, NODE_ID), nonce, NODE_ID)
    with Tpm(attester.tcti) as tpm:
        tpm.extend_pcr(c.MEASUREMENT_PCR, bytes(32))
    nonce = os.urandom(32)
    with pytest.raises(AttestationRefused) as info:
        checker(provider(nonce, NODE_ID), nonce, NODE_ID)
    assert info.value.reasons == ("manifest: PCR 23 does not match the replayed manifest",)


def test_reset_count_going_backwards(swtpm, enrolled, manifest):
    """Last: power-cycles the module's TPM."""
    ak, _ = enrolled
    swtpm.restart()  # boot PCRs back to their power-on values
    with Attester(swtpm.tcti, ak, manifest) as a:
        a.measure()
        golden = _golden(a)
        before_nonce = os.urandom(32)
        before = a.evidence(before_nonce, NODE_ID, time.time())
    swtpm.restart()
    with Attester(swtpm.tcti, ak, manifest) as a:
        a.measure()
        nonce = os.urandom(32)
        after = _verify(a.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    assert after.ok, after.reasons
    rolled_back = _verify(before, enrolled, golden, before_nonce, after.state)
    assert len(rolled_back.failures) == 1
    assert rolled_back.reasons[0].startswith("counters: reset count went backwards")
