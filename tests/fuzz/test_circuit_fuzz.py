"""Circuit parsers on arbitrary bytes: only documented outcomes, never a crash."""

from __future__ import annotations

import contextlib
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bridge.constants import ONION_HEADER_SIZE, RELAY_SIZE_CLASSES
from l2bridge.errors import MalformedMessage, PeerError
from l2bridge.protocol.cells import (
    CELL_MAGIC,
    CellKind,
    Extend,
    HandshakeAssembler,
    Reassembler,
    encode_cell,
    parse_cell,
)
from l2bridge.protocol.circuit import ClientCircuit
from l2bridge.protocol.hopshake import Create, Created
from tests.unit.l2bridge.circuitnet import NOW, Net

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_parse_cell(data):
    try:
        cell = parse_cell(CELL_MAGIC + data)
    except MalformedMessage:
        return
    assert cell.kind in CellKind


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 50), st.sampled_from(RELAY_SIZE_CLASSES[:2]), st.binary(max_size=64)
        ),
        max_size=20,
    )
)
def test_reassembler(parts):
    drops: Counter[str] = Counter()
    r = Reassembler(drops, limit=3000)
    for seq, size, head in parts:
        payload = (head + bytes(size))[:size]
        message = r.add(seq, payload)
        if message is not None:
            assert len(message.data) <= 3000


@FUZZ
@given(st.binary(max_size=3000))
def test_hop_messages(data):
    for parse in (Create.decode, Created.decode, Extend.decode):
        with contextlib.suppress(PeerError):
            parse(data)


@FUZZ
@given(st.lists(st.binary(min_size=3, max_size=2048), max_size=5))
def test_handshake_assembler(chunks):
    a = HandshakeAssembler()
    for chunk in chunks:
        body = memoryview((chunk + bytes(2048))[:2048])
        try:
            a.add(body)
        except MalformedMessage:
            return


_NET = Net.build(2)


@FUZZ
@given(
    st.sampled_from(list(CellKind)),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=600),
    st.sampled_from(RELAY_SIZE_CLASSES[:2]),
)
def test_client_and_hop_take_garbage_cells(kind, circuit, head, size):
    body = (head + bytes(ONION_HEADER_SIZE + size))[: ONION_HEADER_SIZE + size]
    got = _NET.client.receive(encode_cell(kind, circuit, body), NOW)
    assert not got.frames
    out = _NET.hops[0].from_previous(body, NOW)
    assert out.forward is None and not out.frames and out.extend is None
    fresh = ClientCircuit(1)
    assert not fresh.receive(encode_cell(kind, circuit, body), NOW).frames
