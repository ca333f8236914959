"""The enrolment ceremony's message parsers on arbitrary input: each message parses to what
was sent or is refused with CeremonyRefused (step "request"), never another exception."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import ceremony
from attestation.enrol import Challenge
from attestation.errors import CeremonyRefused

TERMS = ceremony.Terms(b"\x01" * 20, 31337, b"\x02" * 20)
REQUEST = ceremony.Request(b"ek", b"cert", b"ak", b"identity", b"\x03" * 32, TERMS)
GOOD = {
    "request": json.loads(REQUEST.dump()),
    "answer": json.loads(ceremony.Answer(b"c", b"s").dump()),
    "challenge": json.loads(ceremony.challenge_dump(Challenge(b"b", b"s"), REQUEST)),
}
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


def _parse(kind: str, text: str | bytes) -> object:
    if kind == "request":
        return ceremony.Request.parse(text)
    if kind == "answer":
        return ceremony.Answer.parse(text)
    return ceremony.challenge_parse(text, REQUEST)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD)), st.binary(max_size=300) | st.text(max_size=300))
def test_garbage_is_refused_cleanly(kind, data):
    try:
        _parse(kind, data)
    except CeremonyRefused as exc:
        assert exc.step == ceremony.STEP_REQUEST


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD)), st.data())
def test_mutated_fields_are_refused_cleanly(kind, data):
    doc = dict(GOOD[kind])
    key = data.draw(st.sampled_from(sorted(doc)))
    doc[key] = data.draw(VALUES)
    try:
        _parse(kind, json.dumps(doc))
    except CeremonyRefused as exc:
        assert exc.step == ceremony.STEP_REQUEST
