import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import constants as c
from attestation import evidence as ev
from attestation.errors import EvidenceError

from .conftest import MANIFEST, NODE_ID, NOW


def _sample(attester, nonce):
    return attester.evidence(nonce, NODE_ID, NOW)


def test_round_trip_both_directions(attester, nonce):
    data = _sample(attester, nonce)
    e = ev.decode(data)
    assert ev.encode(e) == data
    assert e.nonce == nonce and e.node_id == NODE_ID and e.manifest == MANIFEST
    assert e.produced_at_ms == int(NOW * 1000)
    assert len(data) < c.MAX_EVIDENCE_SIZE


def test_rejects_magic_version_trailing_and_truncation(attester, nonce):
    data = _sample(attester, nonce)
    with pytest.raises(EvidenceError, match="not ShadowMesh"):
        ev.decode(b"XXXX" + data[4:])
    with pytest.raises(EvidenceError, match="version"):
        ev.decode(data[:4] + b"\x02" + data[5:])
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


def test_pcrs_must_ascend_and_manifest_names_be_unique(attester, nonce):
    e = ev.decode(_sample(attester, nonce))
    with pytest.raises(EvidenceError, match="ascending"):
        ev.encode(dataclasses.replace(e, pcrs=tuple(reversed(e.pcrs))))
    with pytest.raises(EvidenceError, match="duplicate"):
        ev.encode(dataclasses.replace(e, manifest=(*e.manifest, e.manifest[0])))
    bad = ev.ManifestEntry("bad\nname", bytes(32))
    with pytest.raises(EvidenceError, match="name"):
        ev.encode(dataclasses.replace(e, manifest=(bad,)))


def test_qualifying_data_is_the_shared_format():
    nonce = bytes(range(32))
    expected = hashlib.sha256(b"shadowmesh-attest-v1" + nonce + NODE_ID).digest()
    assert ev.qualifying_data(nonce, NODE_ID) == expected
    with pytest.raises(EvidenceError):
        ev.qualifying_data(nonce[:31], NODE_ID)


def test_manifest_replay_is_a_pcr_extend_chain():
    value = bytes(32)
    for entry in MANIFEST:
        value = hashlib.sha256(value + ev.entry_event(entry)).digest()
    assert ev.replay_manifest(MANIFEST) == value
    assert ev.replay_manifest(MANIFEST[::-1]) != value  # order matters
    assert ev.replay_manifest(()) == bytes(32)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz:-_0123456789", min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    nonce=st.binary(min_size=32, max_size=32),
    produced=st.integers(0, 2**64 - 1),
    attest=st.binary(max_size=300),
    sig=st.binary(max_size=100),
    pub=st.binary(max_size=100),
    pcrs=st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32), max_size=24),
    manifest=st.dictionaries(names, st.binary(min_size=32, max_size=32), max_size=20),
)
def test_property_round_trip(*, nonce, produced, attest, sig, pub, pcrs, manifest):
    e = ev.Evidence(
        nonce=nonce,
        node_id=NODE_ID,
        produced_at_ms=produced,
        attest=attest,
        signature=sig,
        ak_public=pub,
        pcrs=tuple(sorted(pcrs.items())),
        manifest=tuple(ev.ManifestEntry(n, d) for n, d in manifest.items()),
    )
    data = ev.encode(e)
    assert ev.decode(data) == e
    assert ev.encode(ev.decode(data)) == data
