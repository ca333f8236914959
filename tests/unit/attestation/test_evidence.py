import dataclasses
import hashlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import constants as c
from attestation import evidence as ev
from attestation.errors import EvidenceError

from .conftest import NODE_ID, NOW


def _sample(attester, nonce):
    return attester.evidence(nonce, NODE_ID, NOW)


def test_round_trip_both_directions(attester, nonce):
    data = _sample(attester, nonce)
    e = ev.decode(data)
    assert ev.encode(e) == data
    assert e.nonce == nonce and e.node_id == NODE_ID
    assert e.event_log == attester.event_log and e.ima_list == attester.ima_list
    assert e.ima_first == 0
    assert len(data) < c.MAX_EVIDENCE_SIZE


def test_rejects_magic_version_trailing_and_truncation(attester, nonce):
    data = _sample(attester, nonce)
    with pytest.raises(EvidenceError, match="not ShadowMesh"):
        ev.decode(b"XXXX" + data[4:])
    with pytest.raises(EvidenceError, match="version"):
        ev.decode(data[:4] + b"\x01" + data[5:])
    with pytest.raises(EvidenceError, match="trailing"):
        ev.decode(data + b"\x00")
    for cut in range(0, len(data), 7):
        with pytest.raises(EvidenceError):
            ev.decode(data[:cut])


def test_rejects_oversize_before_reading(attester, nonce):
    with pytest.raises(EvidenceError, match="too large"):
        ev.decode(b"\x00" * (c.MAX_EVIDENCE_SIZE + 1))
    e = ev.decode(_sample(attester, nonce))
    with pytest.raises(EvidenceError, match="too large"):
        ev.encode(dataclasses.replace(e, attest=b"\x00" * (c.MAX_ATTEST_SIZE + 1)))


def test_decompression_is_bounded(attester, nonce):
    """A few kilobytes of zlib that would expand past the limit are refused, not expanded."""
    e = ev.decode(_sample(attester, nonce))
    data = ev.encode(e)
    bomb = zlib.compress(bytes(c.MAX_EVENT_LOG_SIZE + 1), 9)
    assert len(bomb) < c.MAX_EVIDENCE_SIZE // 2
    start = data.index(zlib.compress(e.event_log, 6)) - 4
    rest = data[start + 4 + len(zlib.compress(e.event_log, 6)) :]
    forged = data[:start] + struct.pack(">I", len(bomb)) + bomb + rest
    with pytest.raises(EvidenceError, match="event log too large"):
        ev.decode(forged)
    with pytest.raises(EvidenceError, match="zlib"):
        ev.decode(data[:start] + struct.pack(">I", 3) + b"abc" + rest)


def test_pcrs_must_ascend(attester, nonce):
    e = ev.decode(_sample(attester, nonce))
    with pytest.raises(EvidenceError, match="ascending"):
        ev.encode(dataclasses.replace(e, pcrs=tuple(reversed(e.pcrs))))


def test_qualifying_data_is_the_handshake_domain():
    nonce = bytes(range(32))
    expected = hashlib.sha256(b"shadowmesh/handshake/v1" + nonce + NODE_ID).digest()
    assert ev.qualifying_data(nonce, NODE_ID) == expected
    with pytest.raises(EvidenceError):
        ev.qualifying_data(nonce[:31], NODE_ID)


@settings(max_examples=60, deadline=None)
@given(
    nonce=st.binary(min_size=32, max_size=32),
    attest=st.binary(max_size=300),
    sig=st.binary(max_size=100),
    pub=st.binary(max_size=100),
    pcrs=st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32), max_size=24),
    log=st.binary(max_size=300),
    first=st.integers(0, c.MAX_IMA_ENTRIES - 1),
    ima_list=st.binary(max_size=300),
)
def test_property_round_trip(*, nonce, attest, sig, pub, pcrs, log, first, ima_list):
    e = ev.Evidence(nonce, NODE_ID, attest, sig, pub, tuple(sorted(pcrs.items())), log, first,
                    ima_list)  # fmt: skip
    data = ev.encode(e)
    assert ev.decode(data) == e
    assert ev.encode(ev.decode(data)) == data
