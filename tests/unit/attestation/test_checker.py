import pytest

from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused
from attestation.fake import FakeAttester

from .conftest import MANIFEST, NODE_ID, NOW


def test_accepts_good_evidence_and_remembers_counters(attester, golden, nonce):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    old = attester.evidence(nonce, NODE_ID, NOW)
    checker(old, nonce, NODE_ID)
    newer_nonce = bytes(range(32))
    checker(attester.evidence(newer_nonce, NODE_ID, NOW), newer_nonce, NODE_ID)
    with pytest.raises(AttestationRefused) as info:
        checker(old, nonce, NODE_ID)  # replay: the TPM clock went backwards
    assert info.value.reasons[0].startswith("counters: TPM clock went backwards")


def test_refuses_with_every_reason(attester, golden, nonce):
    attester.pcrs[2] = bytes(32)
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    with pytest.raises(AttestationRefused) as info:
        checker(attester.evidence(nonce, NODE_ID, NOW), bytes(32), NODE_ID)
    assert "pcr-policy: PCR 2 differs from golden policy" in info.value.reasons
    assert "nonce: evidence answers another nonce" in info.value.reasons
    assert "PCR 2" in str(info.value)


def test_unknown_node_and_other_ak(attester, golden, nonce):
    checker = EvidenceChecker(golden, lambda node: None, clock=lambda: NOW)
    with pytest.raises(AttestationRefused, match="no enrolled AK"):
        checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    other = FakeAttester(MANIFEST)
    checker = EvidenceChecker(golden, {NODE_ID: other.ak_public}, clock=lambda: NOW)
    with pytest.raises(AttestationRefused, match="enrolled AK"):
        checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
