import pytest

from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused
from attestation.fake import FakeAttester

from .conftest import NODE_ID, NOW


def test_accepts_good_evidence_and_remembers_counters(attester, golden, nonce):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    old = attester.evidence(nonce, NODE_ID, NOW)
    checker(old, nonce, NODE_ID)
    newer_nonce = bytes(range(32))
    checker(attester.evidence(newer_nonce, NODE_ID, NOW), newer_nonce, NODE_ID)
    with pytest.raises(AttestationRefused) as info:
        checker(old, nonce, NODE_ID)  # replay: the TPM clock went backwards
    assert "counters: TPM clock went backwards" in info.value.reasons[0]


def test_refuses_a_changed_file_naming_it_every_time(attester, golden, nonce):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    attester.load("/opt/shadowmesh/l2bridge/__pycache__/codec.cpython-311.pyc", b"logs traffic")
    for _ in range(2):  # the refused entry stays in the list: refused again, not forgotten
        fresh = bytes(32)
        with pytest.raises(AttestationRefused) as info:
            checker(attester.evidence(fresh, NODE_ID, NOW), fresh, NODE_ID)
        assert info.value.reasons[0].startswith(
            "runtime: /opt/shadowmesh/l2bridge/__pycache__/codec.cpython-311.pyc has digest"
        )


def test_refuses_with_every_reason(attester, golden, nonce):
    attester.load("/tmp/evil", b"x")
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    with pytest.raises(AttestationRefused) as info:
        checker(attester.evidence(nonce, NODE_ID, NOW), bytes(32), NODE_ID)
    assert "runtime: /tmp/evil is not in the runtime policy" in info.value.reasons
    assert "nonce: evidence answers another nonce" in info.value.reasons


def test_unknown_node_and_other_ak(attester, golden, nonce):
    checker = EvidenceChecker(golden, lambda node: None, clock=lambda: NOW)
    with pytest.raises(AttestationRefused, match="no enrolled AK"):
        checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    other = FakeAttester()
    checker = EvidenceChecker(golden, {NODE_ID: other.ak_public}, clock=lambda: NOW)
    with pytest.raises(AttestationRefused, match="enrolled AK"):
        checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
