"""Attestation against a real software TPM (swtpm), one TPM for the whole module.

The harness's ``Kernel`` (lab.imaharness, without fanotify) plays firmware and IMA: it
writes the boot event log and the IMA list and extends PCRs 0-10 on the swtpm; the exit's
``Attester`` reads both and quotes. Attacks with the fanotify harness are in test_tamper.py.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation import constants as c
from attestation import enrol, ima, release, verifier
from attestation import evidence as ev
from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused, EnrolmentError, MeasurementError
from attestation.eventlog import BootPolicy
from attestation.policy import GoldenPolicy
from attestation.provider import EvidenceProvider
from attestation.quote import Attester
from attestation.tpm import Tpm
from hardware.tpm import Swtpm
from lab.imaharness import EVENT_LOG, IMA_LIST, LAB_CMDLINE, Kernel

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


def _power_cycle(swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm:
        tpm.shutdown()
    swtpm.restart()


class Machine:
    """One boot: the kernel's logs in a directory, files the 'exit' loads."""

    def __init__(self, swtpm, root: Path, cmdline: str = LAB_CMDLINE) -> None:
        _power_cycle(swtpm)
        self.root = root
        self.files = root / "release"
        self.files.mkdir(parents=True, exist_ok=True)
        for name in ("server.pyc", "codec.pyc", "exit.yaml"):
            (self.files / name).write_text(f"approved {name}")
        self.tpm = Tpm(swtpm.tcti)
        self.kernel = Kernel(self.tpm, root)
        self.kernel.boot(cmdline)
        for name in ("server.pyc", "codec.pyc", "exit.yaml"):
            self.load(name)

    def load(self, name: str) -> None:
        fd = os.open(self.files / name, os.O_RDONLY)
        try:
            self.kernel.measure_fd(fd)
        finally:
            os.close(fd)

    def attester(self, ak) -> Attester:
        return Attester(self.tpm_tcti, ak, ima_list=self.root / IMA_LIST,
                        event_log=self.root / EVENT_LOG)  # fmt: skip

    def golden(self) -> GoldenPolicy:
        boot = BootPolicy(tuple(zip(range(10), self.tpm.read_pcrs(range(10)), strict=True)),
                          c.DEFAULT_CMDLINE_REQUIRES)  # fmt: skip
        return GoldenPolicy(boot, release.build([self.files]), max_age_s=300)

    def close(self) -> None:
        self.tpm.close()


@pytest.fixture
def machine(swtpm, tmp_path):
    m = Machine(swtpm, tmp_path)
    m.tpm_tcti = swtpm.tcti
    yield m
    m.close()


@pytest.fixture
def attester(machine, enrolled):
    with machine.attester(enrolled[0]) as a:
        yield a


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


def test_happy_path(machine, attester, enrolled):
    golden = machine.golden()
    nonce = os.urandom(32)
    data = attester.evidence(nonce, NODE_ID, time.time())
    verdict = _verify(data, enrolled, golden, nonce)
    assert verdict.ok, verdict.reasons
    e = ev.decode(data)
    assert e.ak_public == enrolled[0].tpmt_public
    assert ima.parse_list(e.ima_list)[0].path == "boot_aggregate"
    assert verdict.state.ima.count == 4


def test_the_kernel_measures_a_file_once_until_it_changes(machine, attester):
    before = attester.check_list()
    machine.load("codec.pyc")
    assert attester.check_list() == before
    (machine.files / "codec.pyc").write_text("changed")
    machine.load("codec.pyc")
    assert attester.check_list() == before + 1


def test_changed_file_is_named(machine, attester, enrolled):
    golden = machine.golden()
    (machine.files / "codec.pyc").write_text("logs every frame")
    machine.load("codec.pyc")
    nonce = os.urandom(32)
    verdict = _verify(attester.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    assert len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith(f"runtime: {machine.files}/codec.pyc has digest")


def test_pcr10_extended_outside_the_kernel(machine, attester, enrolled):
    """Someone extends PCR 10 directly: the list no longer replays; the exit cannot even
    produce evidence, and evidence cut from an old list fails at the verifier."""
    golden = machine.golden()
    nonce = os.urandom(32)
    old = ev.decode(attester.evidence(nonce, NODE_ID, time.time()))
    with Tpm(attester.tcti) as tpm:
        tpm.extend_pcr(c.IMA_PCR, hashlib.sha256(b"rootkit").digest())
        with pytest.raises(Exception, match=r"PCR_Reset\(10\)"):
            tpm.reset_pcr(c.IMA_PCR)
    with pytest.raises(MeasurementError, match="does not replay"):
        attester.evidence(nonce, NODE_ID, time.time())
    attest, signature = attester.quote_raw(ev.qualifying_data(nonce, NODE_ID), c.QUOTE_PCRS)
    values = dict(attester.read_pcrs())
    forged = ev.encode(
        ev.Evidence(nonce, NODE_ID, attest, signature, old.ak_public,
                    tuple(sorted(values.items())), old.event_log, 0, old.ima_list)
    )  # fmt: skip
    verdict = _verify(forged, enrolled, golden, nonce)
    assert verdict.reasons == ("ima: PCR 10 does not match the IMA list",)


def test_boot_pcr_extended_after_boot_names_the_pcr(machine, attester, enrolled):
    golden = machine.golden()
    with Tpm(attester.tcti) as tpm:
        tpm.extend_pcr(7, hashlib.sha256(b"secure boot disabled").digest())
    nonce = os.urandom(32)
    verdict = _verify(attester.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    assert "boot: PCR 7 does not match the event log" in verdict.reasons
    assert "boot: PCR 7 differs from the boot policy" in verdict.reasons
    assert "ima: boot_aggregate does not match the quoted PCRs 0-9" in verdict.reasons


def test_evidence_since_sends_the_new_entries_of_this_boot_only(machine, attester, enrolled):
    """A real TPM's quote decides: same reset count as the client's ``since``, only the
    entries after it and no boot event log (the client replays the copy it kept); a
    ``since`` naming another reset count gets the whole list and the log."""
    golden = machine.golden()
    nonce = os.urandom(32)
    first = _verify(attester.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    assert first.ok, first.reasons
    since = ev.Since(first.state.reset_count, first.state.ima.count)
    (machine.files / "codec.pyc").write_text("a new release, approved")
    machine.load("codec.pyc")
    golden = machine.golden()
    nonce = os.urandom(32)
    data = attester.evidence(nonce, NODE_ID, time.time(), since=since)
    e = ev.decode(data)
    assert e.ima_first == since.ima_count and len(ima.parse_list(e.ima_list)) == 1
    assert e.event_log == b""
    again = _verify(data, enrolled, golden, nonce, first.state)
    assert again.ok, again.reasons
    assert again.state.ima.count == since.ima_count + 1
    # Without the kept copy (a verifier that never saw this boot) the same evidence fails.
    nonce = os.urandom(32)
    bare = attester.evidence(nonce, NODE_ID, time.time(), since=since)
    assert not _verify(bare, enrolled, golden, nonce).ok
    other_boot = ev.Since(since.reset_count + 1, since.ima_count)
    nonce = os.urandom(32)
    whole = ev.decode(attester.evidence(nonce, NODE_ID, time.time(), since=other_boot))
    assert whole.ima_first == 0 and len(ima.parse_list(whole.ima_list)) == since.ima_count + 1
    assert whole.event_log == (machine.root / EVENT_LOG).read_bytes()


def test_wrong_nonce(machine, attester, enrolled):
    data = attester.evidence(os.urandom(32), NODE_ID, time.time())
    verdict = _verify(data, enrolled, machine.golden(), os.urandom(32))
    assert [f.check for f in verdict.failures] == [verifier.NONCE, verifier.NONCE]


def test_replayed_old_evidence(machine, attester, enrolled):
    golden = machine.golden()
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


def test_signature_by_another_ak(swtpm, machine, enrolled):
    with Tpm(swtpm.tcti) as tpm:
        other = enrol.create_ak(tpm)
    with machine.attester(other) as impostor:
        nonce = os.urandom(32)
        data = impostor.evidence(nonce, NODE_ID, time.time())
    verdict = _verify(data, enrolled, machine.golden(), nonce)
    assert verdict.reasons == ("signature: quote was not signed by the enrolled AK",)


def test_provider_and_checker_in_a_handshake(machine, attester, enrolled):
    provider = EvidenceProvider(attester, NODE_ID)
    checker = EvidenceChecker(machine.golden(), {NODE_ID: enrolled[1].ak_public})
    nonce = os.urandom(32)
    checker(provider(nonce, NODE_ID), nonce, NODE_ID)
    (machine.files / "sniffer").write_text("#!/bin/sh\n")
    machine.load("sniffer")
    nonce = os.urandom(32)
    with pytest.raises(AttestationRefused) as info:
        checker(provider(nonce, NODE_ID), nonce, NODE_ID)
    assert info.value.reasons == (f"runtime: {machine.files}/sniffer is not in the runtime policy",)


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


def test_reset_count_going_backwards(swtpm, enrolled, tmp_path):
    """Evidence from before a reboot, shown after it, is refused."""
    first = Machine(swtpm, tmp_path)
    first.tpm_tcti = swtpm.tcti
    golden = first.golden()
    with first.attester(enrolled[0]) as a:
        before_nonce = os.urandom(32)
        before = a.evidence(before_nonce, NODE_ID, time.time())
    first.close()
    second = Machine(swtpm, tmp_path)
    second.tpm_tcti = swtpm.tcti
    with second.attester(enrolled[0]) as a:
        nonce = os.urandom(32)
        after = _verify(a.evidence(nonce, NODE_ID, time.time()), enrolled, golden, nonce)
    second.close()
    assert after.ok, after.reasons  # same approved boot and release on the next boot
    rolled_back = _verify(before, enrolled, golden, before_nonce, after.state)
    assert rolled_back.reasons[0].startswith("counters: reset count went backwards")
