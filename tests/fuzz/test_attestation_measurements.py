"""IMA list, event log and runtime policy parsers: any bytes give a value or the
package's documented error, never a crash; writing what was parsed gives the same bytes."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import eventlog as el
from attestation import ima
from attestation import runtime_policy as rp
from attestation.errors import EventLogError, EvidenceError, PolicyError

PATHS = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=60)  # fmt: skip
ENTRIES = st.lists(st.tuples(PATHS, st.binary(min_size=32, max_size=32), st.booleans()),
                   max_size=8)  # fmt: skip


def _list(entries) -> bytes:
    return b"".join(ima.encode_entry(p, d, violation=v) for p, d, v in entries)


@settings(max_examples=300, deadline=None)
@given(ENTRIES)
def test_ima_round_trip(entries):
    raw = _list(entries)
    parsed = ima.parse_list(raw)
    assert _list((e.path, e.file_digest, e.violation) for e in parsed) == raw
    assert ima.replay(raw, 0, ima.INITIAL_STATE).state.count == len(entries)


@settings(max_examples=500, deadline=None)
@given(ENTRIES, st.data())
def test_ima_corrupted_lists_never_crash(entries, data):
    raw = bytearray(_list(entries) or ima.encode_entry("/x", bytes(32)))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(EvidenceError):
        ima.replay(bytes(raw[:cut]), 0, ima.INITIAL_STATE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_ima_random_bytes(raw):
    with contextlib.suppress(EvidenceError):
        ima.parse_list(raw)


EVENTS = st.lists(
    st.builds(el.measured, st.integers(0, 23), st.integers(0, 2**32 - 1), st.binary(max_size=40)),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.data())
def test_event_log_round_trip_and_corruption(events, data):
    log = el.encode(events)
    assert el.encode(el.parse(log)[1:]) == log
    raw = bytearray(log)
    raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(EventLogError):
        el.replay(el.parse(bytes(raw[: data.draw(st.integers(0, len(raw)))])))
    el.check_boot(bytes(raw), {}, el.BootPolicy((), ("ima_policy=tcb",)))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_runtime_policy_any_json(value):
    shell = {"meta": {"version": 1}, "release": 0, "excludes": [], "keyrings": {}, "ima": {},
             "ima-buf": {}, "verification-keys": ""}  # fmt: skip
    for doc in (value, {**shell, "digests": value}):
        with contextlib.suppress(PolicyError):
            rp.parse(json.dumps(doc))
