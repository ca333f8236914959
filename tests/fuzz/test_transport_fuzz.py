"""The exit's front door on arbitrary bytes: never raises, never buffers past
its limit, never admits without a token, and the decoy answers whatever it refuses."""

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.constants import MAX_REQUEST_HEAD
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.decoy import DecoyConnection, DecoySite, DecoyTimeouts
from l2bridge.transport.gate import Admit, Gate, Pending, Refuse
from l2bridge.transport.headers import (
    Complete,
    HeadParser,
    Incomplete,
    Invalid,
    scan_request_head,
)
from l2bridge.transport.token import MasterKey, decode_token

NOW = 1_800_000_000.0
NODE = b"\x03" * 32
KEY = MasterKey(b"\x09" * 32)
TABLE = CredentialTable()
TABLE.issue(KEY, bytes(32), b"\x01" * 32, "d", 0)

http_ish = st.lists(
    st.sampled_from(
        [
            b"GET ",
            b"HEAD ",
            b"/",
            b"/ws",
            b" HTTP/1.1",
            b" HTTP/1.0",
            b"\r\n",
            b"\n",
            b"Host: x",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16),
            b"Sec-WebSocket-Protocol: ",
            b"A" * 43,
            b":",
            b" ",
            b"\x00",
            b"\x16\x03\x01",
            b"\xff",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=9000), http_ish))
def test_scanner_total(data):
    result = scan_request_head(data)
    assert isinstance(result, Incomplete | Invalid | Complete)
    if isinstance(result, Incomplete):
        assert len(data) <= MAX_REQUEST_HEAD
    if isinstance(result, Complete):
        assert result.consumed <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=600), http_ish), min_size=1, max_size=20))
def test_gate_chunks_never_admit_without_token(chunks):
    gate = Gate(ws_path="/ws", verifier=TokenVerifier(KEY, NODE, TABLE))
    received = b""
    for chunk in chunks:
        received += chunk
        decision = gate.feed(chunk, NOW)
        assert not isinstance(decision, Admit)
        if isinstance(decision, Refuse):
            assert decision.data == received  # every byte goes on to the decoy
            break
        assert isinstance(decision, Pending)
        assert len(received) <= MAX_REQUEST_HEAD


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=600), http_ish), min_size=1, max_size=20))
def test_split_points_do_not_change_the_parse(chunks):
    whole = b"".join(chunks)
    parser = HeadParser()
    for chunk in chunks:
        result = parser.feed(chunk)
    assert result == scan_request_head(whole)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=600), http_ish), min_size=1, max_size=20))
def test_decoy_answers_anything_with_http(chunks):
    conn = DecoyConnection(DecoySite.builtin(), DecoyTimeouts(), NOW)
    out = b""
    for chunk in chunks:
        conn.receive(chunk, NOW)
        while data := conn.data_to_send(1 << 16, NOW):
            out += data
    conn.receive_eof(NOW)
    while data := conn.data_to_send(1 << 16, NOW):
        out += data
    assert conn.closing is not None
    assert out == b"" or out.startswith(b"HTTP/1.1 ") or b"<html>" in out


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_token_decoder_total(text):
    parts = decode_token(text)
    assert parts is None or len(parts.nonce + parts.sealed + parts.mac) == 48
    assert TokenVerifier(KEY, NODE, TABLE).check(text, NOW) is None
