"""Corrupting evidence anywhere gives a clear verdict or error, never a crash."""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import constants as c
from attestation import eventlog, policy, runtime_policy, tpms, verifier
from attestation import evidence as ev
from attestation.errors import EventLogError, EvidenceError, PolicyError
from attestation.fake import FakeAttester
from attestation.policy import GoldenPolicy

NODE_ID = hashlib.sha256(b"fuzzed exit").digest()
NONCE = bytes(range(32))
NOW = 1_800_000_000.0
ATTESTER = FakeAttester()
ATTESTER.load("/usr/bin/python3", b"python")
GOLDEN = GoldenPolicy(
    eventlog.BootPolicy(tuple((i, ATTESTER.pcrs[i]) for i in range(10)), ("ima_policy=tcb",)),
    runtime_policy.RuntimePolicy(
        {"/usr/bin/python3": frozenset({hashlib.sha256(b"python").digest()})}, ()
    ),
)
VALID = ATTESTER.evidence(NONCE, NODE_ID, NOW)


def _verify(
    data: bytes,
    nonce: bytes = NONCE,
    previous: verifier.NodeState | None = None,
    now: float = NOW + 1,
) -> verifier.Verdict:
    return verifier.verify(
        data,
        nonce=nonce,
        node_id=NODE_ID,
        trusted_ak=ATTESTER.ak_public,
        policy=GOLDEN,
        previous=previous,
        now=now,
    )


def test_the_valid_sample_passes():
    assert _verify(VALID).ok


def test_every_byte_flipped_is_refused():
    for pos in range(len(VALID)):
        data = VALID[:pos] + bytes([VALID[pos] ^ 0xFF]) + VALID[pos + 1 :]
        verdict = _verify(data)
        assert not verdict.ok, pos
        assert all(f.detail for f in verdict.failures)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(VALID) - 1), flip=st.integers(1, 255))
def test_random_corruption(pos, flip):
    data = VALID[:pos] + bytes([VALID[pos] ^ flip]) + VALID[pos + 1 :]
    if _verify(data).ok:
        # Only a bit deflate ignores (the compressed logs' final padding) may change and
        # still verify: the decoded evidence must then be exactly the valid sample's.
        assert ev.decode(data) == ev.decode(VALID), pos


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(VALID) - 1), junk=st.binary(max_size=64))
def test_truncation_and_insertion(cut, junk):
    assert not _verify(VALID[:cut]).ok
    if junk:
        assert not _verify(VALID[:cut] + junk + VALID[cut:]).ok


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048))
def test_random_bytes(data):
    assert not _verify(data).ok
    for parse in (ev.decode, tpms.parse_attest, tpms.parse_public, tpms.parse_signature):
        with contextlib.suppress(EvidenceError):
            parse(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048))
def test_evidence_prefix_then_random(data):
    with contextlib.suppress(EvidenceError):
        ev.decode(c.EVIDENCE_MAGIC + bytes([c.EVIDENCE_VERSION]) + data)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_policy_parser(text):
    with contextlib.suppress(PolicyError):
        policy.parse(text)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1024))
def test_event_log_parser(data):
    header = bytes(8 + 20)  # pcr 0, type 0 (not EV_NO_ACTION), zero SHA-1 digest
    for log in (data, header + data):
        try:
            events = eventlog.parse(log)
            eventlog.replay(events)
        except EventLogError:
            pass


# Evidence that leaves the boot log out (the verifier kept it): flipping any byte of it
# must still be refused, with the kept log standing in.
_FIRST = _verify(VALID)
assert _FIRST.state is not None
_SHORT_NONCE = bytes(range(1, 33))
SHORT = ATTESTER.evidence(
    _SHORT_NONCE, NODE_ID, NOW, since=ev.Since(_FIRST.state.reset_count, _FIRST.state.ima.count)
)


def _verify_short(
    data: bytes, previous: verifier.NodeState | None = _FIRST.state
) -> verifier.Verdict:
    return _verify(data, _SHORT_NONCE, previous, NOW + 2)


def test_evidence_without_its_boot_log_passes_only_with_the_kept_copy():
    assert ev.decode(SHORT).event_log == b""
    assert _verify_short(SHORT).ok
    alone = _verify_short(SHORT, previous=None)  # no kept copy (nor the list's start)
    assert "boot: event log left out, and none kept from an earlier quote of this boot" in (
        alone.reasons
    )


def test_every_byte_flipped_of_evidence_without_its_boot_log_is_refused():
    for pos in range(len(SHORT)):
        data = SHORT[:pos] + bytes([SHORT[pos] ^ 0xFF]) + SHORT[pos + 1 :]
        verdict = _verify_short(data)
        assert not verdict.ok, pos
