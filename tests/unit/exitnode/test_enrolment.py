"""The enrolment ceremony (attestation.ceremony with exitnode.enrolment's hybrid identity):
its messages and the checks that need no TPM: parsing, terms, the binding the
exit's identity signs, and finish() refusing a wrong secret or signature by step name. The
TPM steps (EK chain, activation) run against swtpm in tests/integration/contracts."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from attestation import ceremony
from attestation.enrol import Challenge
from attestation.errors import CeremonyRefused
from exitnode.enrolment import HybridIdentity, identity_signer
from l2bridge.identity.keys import HybridSigningKey

KEY = HybridSigningKey.generate()
TERMS = ceremony.Terms(b"\x01" * 20, 31337, b"\x02" * 20)
REQUEST = ceremony.Request(b"ek", b"cert", b"ak", KEY.public.encode(), KEY.node_id, TERMS)
CHALLENGE = Challenge(b"blob", b"secret")
SECRET = b"\x09" * 32


def test_request_round_trips_and_malformed_ones_are_refused():
    assert ceremony.Request.parse(REQUEST.dump()) == REQUEST
    bad_hex = REQUEST.dump().replace('"node_id": "', '"node_id": "zz')
    for text in ("[]", "{", '{"ek_public": "00"}', bad_hex, "x" * (ceremony.MAX_MESSAGE_BYTES + 1)):
        with pytest.raises(CeremonyRefused) as info:
            ceremony.Request.parse(text)
        assert info.value.step == ceremony.STEP_REQUEST
    with pytest.raises(ValueError):
        ceremony.Terms(b"\x01" * 19, 1, b"\x02" * 20)
    with pytest.raises(ValueError):
        ceremony.Terms(b"\x01" * 20, 0, b"\x02" * 20)


def test_challenge_answers_one_request_only():
    text = ceremony.challenge_dump(CHALLENGE, REQUEST)
    assert ceremony.challenge_parse(text, REQUEST) == CHALLENGE
    other = replace(REQUEST, ak_public=b"another ak")
    with pytest.raises(CeremonyRefused, match="another request"):
        ceremony.challenge_parse(text, other)


def test_binding_covers_terms_node_ak_and_challenge():
    base = ceremony.binding_message(REQUEST, CHALLENGE)
    changed = [
        replace(REQUEST, terms=replace(TERMS, operator=b"\x03" * 20)),
        replace(REQUEST, terms=replace(TERMS, chain_id=1)),
        replace(REQUEST, terms=replace(TERMS, registry=b"\x03" * 20)),
        replace(REQUEST, node_id=hashlib.sha256(b"other").digest()),
        replace(REQUEST, ak_public=b"other ak"),
    ]
    for request in changed:
        assert ceremony.binding_message(request, CHALLENGE) != base
    assert ceremony.binding_message(REQUEST, Challenge(b"blob", b"secreu")) != base
    assert base.startswith(ceremony.BINDING_DOMAIN)


def test_terms_are_checked_first():
    for offered in (replace(TERMS, operator=b"\x05" * 20), replace(TERMS, chain_id=5),
                    replace(TERMS, registry=b"\x05" * 20)):  # fmt: skip
        with pytest.raises(CeremonyRefused) as info:
            ceremony.start(REQUEST, terms=offered, anchors=[], intermediates=[],
                           now=None, identity=HybridIdentity())  # type: ignore[arg-type]  # fmt: skip
        assert info.value.step == ceremony.STEP_TERMS


def test_finish_needs_the_secret_and_the_identity_signature():
    pending = ceremony.Pending(REQUEST, CHALLENGE, SECRET)
    assert ceremony.Pending.parse(pending.dump()) == pending
    sign = identity_signer(KEY)
    good = ceremony.Answer(SECRET, sign(ceremony.binding_message(REQUEST, CHALLENGE)))
    assert ceremony.Answer.parse(good.dump()) == good
    record = ceremony.finish(pending, good, identity=HybridIdentity())
    assert (record.node_id, record.terms) == (KEY.node_id, TERMS)
    assert record.identity_sha256 == hashlib.sha256(KEY.public.encode()).digest()
    wrong_secret = replace(good, credential=b"\x08" * 32)
    with pytest.raises(CeremonyRefused) as info:
        ceremony.finish(pending, wrong_secret, identity=HybridIdentity())
    assert info.value.step == ceremony.STEP_ACTIVATION
    other_terms = replace(REQUEST, terms=replace(TERMS, operator=b"\x07" * 20))
    for signature in (
        sign(ceremony.binding_message(other_terms, CHALLENGE)),  # signed other terms
        identity_signer(HybridSigningKey.generate())(ceremony.binding_message(REQUEST, CHALLENGE)),
        b"",
        b"\x00" * 10,
    ):
        with pytest.raises(CeremonyRefused) as info:
            ceremony.finish(pending, replace(good, identity_signature=signature),
                            identity=HybridIdentity())  # fmt: skip
        assert info.value.step == ceremony.STEP_IDENTITY_SIGNATURE


def test_hybrid_identity_needs_both_halves():
    identity = HybridIdentity()
    assert identity.node_id(KEY.public.encode()) == KEY.node_id
    with pytest.raises(ValueError):
        identity.node_id(b"\x01" + b"\x00" * 10)
    message = b"terms"
    signature = KEY.sign(b"shadowmesh enrolment", message)
    assert identity.verify(KEY.public.encode(), message, signature.encode())
    classical_only = replace(signature, mldsa=b"")
    assert not identity.verify(KEY.public.encode(), message, classical_only.encode())
    assert not identity.verify(KEY.public.encode(), message, signature.encode() + b"\x00")
    other_label = KEY.sign(b"device certificate", message)  # a signature made for elsewhere
    assert not identity.verify(KEY.public.encode(), message, other_label.encode())
