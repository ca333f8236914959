"""The exit's front door on arbitrary bytes: never raises, never buffers past
its limit, and whatever it answers is one of the decoy's answers."""

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.transport.constants import MAX_REQUEST_HEAD
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.gate import Admit, Answer, Gate, Pending
from l2bridge.transport.headers import Complete, Incomplete, Invalid, scan_request_head
from l2bridge.transport.token import AccessKey, TokenVerifier, decode_token

NOW = 1_800_000_000.0
NODE = b"\x03" * 32
KEY = AccessKey(b"\x09" * 32)

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
    site = DecoySite.builtin()
    gate = Gate(site, ws_path="/ws", verifier=TokenVerifier(KEY, NODE))
    for chunk in chunks:
        decision = gate.feed(chunk, NOW)
        assert not isinstance(decision, Admit)
        if isinstance(decision, Answer):
            assert decision.response.startswith(b"HTTP/1.1 ")
            break
        assert isinstance(decision, Pending)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_token_decoder_total(text):
    data = decode_token(text)
    assert data is None or len(data) == 32
    assert not TokenVerifier(KEY, NODE).check(text, NOW) or data is not None
