import dataclasses

import pytest

from attestation import constants as c
from attestation import evidence as ev
from attestation import tpms
from attestation import verifier as v
from attestation.fake import FakeAttester

from .conftest import MANIFEST, NODE_ID, NOW


def _verify(data, attester, golden, nonce, *, previous=None, now=NOW + 1, node_id=NODE_ID):
    return v.verify(
        data,
        nonce=nonce,
        node_id=node_id,
        trusted_ak=attester.ak_public,
        policy=golden,
        previous=previous,
        now=now,
    )


def _checks(verdict):
    return [f.check for f in verdict.failures]


def test_happy_path_returns_state(attester, golden, nonce):
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.ok, verdict.reasons
    assert verdict.state == v.CounterState(attester.clock, 1, 0)


def test_wrong_nonce(attester, golden, nonce):
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, bytes(32))
    assert _checks(verdict) == [v.NONCE, v.NONCE]
    assert verdict.state is None


def test_nonce_field_swapped_but_quote_not(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    other = bytes(32)
    data = ev.encode(dataclasses.replace(e, nonce=other))
    verdict = _verify(data, attester, golden, other)
    assert verdict.reasons == ("nonce: quote qualifying data does not cover nonce and nodeId",)


def test_other_node_id(attester, golden, nonce):
    other = bytes(32)
    verdict = _verify(
        attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce, node_id=other
    )
    assert v.NONCE in _checks(verdict)
    assert "manifest: measured nodeId is not the expected nodeId" in verdict.reasons


def test_signature_by_another_ak(attester, golden, nonce):
    impostor = FakeAttester(MANIFEST, dict(attester.pcrs))
    verdict = _verify(impostor.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == ("signature: quote was not signed by the enrolled AK",)


def test_forged_signature_with_right_ak(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    impostor = FakeAttester(MANIFEST)
    data = ev.encode(dataclasses.replace(e, signature=impostor.sign(e.attest)))
    verdict = _verify(data, attester, golden, nonce)
    assert verdict.reasons == ("signature: quote signature does not verify",)


def test_unrestricted_ak_is_refused_even_when_trusted(golden, nonce):
    loose = FakeAttester(MANIFEST, attributes=c.TPMA_SIGN_ENCRYPT | c.TPMA_FIXED_TPM)
    golden = dataclasses.replace(golden, pcrs=())
    verdict = _verify(loose.evidence(nonce, NODE_ID, NOW), loose, golden, nonce)
    assert verdict.reasons == ("signature: AK is not a restricted signing key",)


def test_pcr_values_not_matching_quote(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    pcrs = tuple((i, bytes(32) if i == 3 else val) for i, val in e.pcrs)
    verdict = _verify(ev.encode(dataclasses.replace(e, pcrs=pcrs)), attester, golden, nonce)
    assert "pcr-digest: reported PCR values do not match the quoted digest" in verdict.reasons
    assert "pcr-policy: PCR 3 differs from golden policy" in verdict.reasons


def test_reported_pcrs_not_the_quoted_selection(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    data = ev.encode(dataclasses.replace(e, pcrs=e.pcrs[1:]))
    verdict = _verify(data, attester, golden, nonce)
    assert "pcr-digest: reported PCRs are not the quoted selection" in verdict.reasons
    assert "pcr-policy: PCR 0 is not quoted" in verdict.reasons


def test_pcr_against_golden_names_the_pcr(attester, golden, nonce):
    attester.pcrs[5] = bytes(32)
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == ("pcr-policy: PCR 5 differs from golden policy",)


def test_measurement_pcr_extended_after_measuring(attester, golden, nonce):
    attester.pcrs[c.MEASUREMENT_PCR] = b"\x01" * 32
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == ("manifest: PCR 23 does not match the replayed manifest",)


def test_software_differs_from_golden(golden, nonce):
    changed = (ev.ManifestEntry("software:attestation", b"\x07" * 32), *MANIFEST[1:])
    extra = (*changed[:-1], ev.ManifestEntry("software:evil", b"\x08" * 32), changed[-1])
    fake = FakeAttester(extra, {i: dict(golden.pcrs)[i] for i in range(8)})
    verdict = _verify(fake.evidence(nonce, NODE_ID, NOW), fake, golden, nonce)
    assert verdict.reasons == (
        "manifest: software:attestation differs from golden policy",
        "manifest: software:evil is not in the golden policy",
    )


def test_missing_measurement(golden, nonce):
    fake = FakeAttester(MANIFEST[1:], {i: dict(golden.pcrs)[i] for i in range(8)})
    verdict = _verify(fake.evidence(nonce, NODE_ID, NOW), fake, golden, nonce)
    assert verdict.reasons == ("manifest: software:attestation was not measured",)


@pytest.mark.parametrize(
    ("previous", "reason"),
    [
        (v.CounterState(10, 2, 0), "counters: reset count went backwards (2 -> 1)"),
        (v.CounterState(10, 1, 5), "counters: restart count went backwards (5 -> 0)"),
        (v.CounterState(10**9, 1, 0), "counters: TPM clock went backwards"),
    ],
)
def test_counters_never_go_backwards(attester, golden, nonce, previous, reason):
    verdict = _verify(
        attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce, previous=previous
    )
    assert len(verdict.failures) == 1 and str(verdict.failures[0]).startswith(reason)


def test_reboot_resets_clock_legitimately(attester, golden, nonce):
    attester.reset_count = 3
    previous = v.CounterState(10**9, 2, 7)
    verdict = _verify(
        attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce, previous=previous
    )
    assert verdict.ok, verdict.reasons


def test_replayed_old_evidence(attester, golden, nonce):
    old = attester.evidence(nonce, NODE_ID, NOW)
    state = _verify(old, attester, golden, nonce).state
    fresh_nonce = bytes(range(32))
    newer = _verify(
        attester.evidence(fresh_nonce, NODE_ID, NOW), attester, golden, fresh_nonce, previous=state
    )
    assert newer.ok
    replay = _verify(old, attester, golden, nonce, previous=newer.state)
    assert _checks(replay) == [v.COUNTERS]
    replay_new_nonce = _verify(old, attester, golden, bytes(32), previous=newer.state)
    assert v.NONCE in _checks(replay_new_nonce)


def test_age(attester, golden, nonce):
    data = attester.evidence(nonce, NODE_ID, NOW)
    assert _verify(data, attester, golden, nonce, now=NOW + 299).ok
    stale = _verify(data, attester, golden, nonce, now=NOW + 301)
    assert stale.reasons == ("age: evidence is 301 s old (limit 300 s)",)
    future = _verify(data, attester, golden, nonce, now=NOW - c.MAX_FUTURE_SKEW_S - 1)
    assert future.reasons == ("age: evidence is dated in the future",)


def test_every_failure_is_listed_in_keylime_order(attester, golden, nonce):
    attester.pcrs[5] = bytes(32)
    attester.reset_count = 0
    impostor_nonce = bytes(32)
    data = attester.evidence(nonce, NODE_ID, NOW)
    e = ev.decode(data)
    data = ev.encode(dataclasses.replace(e, signature=FakeAttester(MANIFEST).sign(e.attest)))
    verdict = _verify(
        data, attester, golden, impostor_nonce, previous=v.CounterState(1, 1, 0), now=NOW + 1000
    )
    assert _checks(verdict) == [v.SIGNATURE, v.NONCE, v.NONCE, v.COUNTERS, v.PCR_POLICY, v.AGE]


def test_malformed_evidence_is_a_format_failure(attester, golden, nonce):
    verdict = _verify(b"garbage", attester, golden, nonce)
    assert _checks(verdict) == [v.FORMAT]
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    bad = ev.encode(dataclasses.replace(e, attest=e.attest[:-1]))
    assert _checks(_verify(bad, attester, golden, nonce)) == [v.FORMAT]


def test_unparsable_ak_or_signature_is_a_signature_failure(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    bad = ev.encode(dataclasses.replace(e, signature=b"\x00\x14" + e.signature[2:]))
    assert _verify(bad, attester, golden, nonce).reasons == ("signature: signature is not ECDSA",)
    assert tpms.parse_public(attester.ak_public).is_restricted_signing_key
