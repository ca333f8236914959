"""The lean WebSocket frame paths (l2bridge.transport.direct) against websockets itself.

Any byte stream, cut into reads anywhere, with or without an EOF after it: a connection
reading with the lean parser delivers the same messages, writes the same bytes (pongs,
closes), ends in the same state and records the same error as one where the library
reads everything. Frames: binary data around the size limit and the length encodings
(non-minimal ones too), pings, pongs, closes, text, fragments, reserved bits, unknown
opcodes, the wrong masking for the side, random bytes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from l2bridge.transport.client import BrowserLikeConnection
from l2bridge.transport.direct import DirectMessages, serialize_binary

LIMIT = 600  # the protocol's max_size in these tests


class _Server(DirectMessages, ServerConnection):
    pass


class _Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


def connection(server: bool, lean: bool) -> tuple[Any, _Wire, list[bytes | None]]:
    """An open direct-message connection of either side on an in-memory transport."""
    if server:
        ws: Any = _Server(ServerProtocol(max_size=LIMIT, state=OPEN), None, ping_interval=None)  # type: ignore[arg-type]
    else:
        protocol = ClientProtocol(parse_uri("wss://exit.example/ws"), max_size=LIMIT, state=OPEN)
        ws = BrowserLikeConnection(protocol, ping_interval=None)
    ws.response = ws.request = object()  # past the opening handshake
    ws.direct_messages = True
    ws.lean_frames = lean
    wire = _Wire()
    Connection.connection_made(ws, wire)
    got: list[bytes | None] = []
    ws.deliver_to(lambda m: got.append(None if m is None else bytes(m)))
    return ws, wire, got


def frame(first: int, payload: bytes, masked: bool, form: int = 0) -> bytes:
    """Raw frame bytes; ``form`` 1/2 forces the 16-/64-bit length encoding."""
    n = len(payload)
    bit = 0x80 if masked else 0
    if form == 2 or n >= 65536:
        head = struct.pack("!BBQ", first, bit | 127, n)
    elif form == 1 or n >= 126:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = bytes((first, bit | n))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


FIRST_BYTES = [0x82, 0x82, 0x82, 0x82, 0x89, 0x8A, 0x88, 0x81, 0x02, 0x00, 0x80, 0xC2, 0xA2,
               0x92, 0x83, 0x8B, 0x02 | 0x80]  # fmt: skip
SIZES = [0, 1, 2, 10, 125, 126, 127, 200, LIMIT - 1, LIMIT, LIMIT + 1]


@st.composite
def items(draw: st.DrawFn, server: bool) -> bytes:
    if draw(st.integers(0, 12)) == 0:
        return draw(st.binary(max_size=20))  # garbage
    first = draw(st.sampled_from(FIRST_BYTES))
    if first == 0x88:  # close: a valid code and reason, or anything
        payload = draw(
            st.one_of(
                st.builds(
                    lambda c, r: struct.pack("!H", c) + r,
                    st.sampled_from([1000, 1001, 3000, 999, 1004, 4403]),
                    st.binary(max_size=10),
                ),
                st.binary(max_size=130),
            )
        )
    elif first == 0x81:
        payload = draw(st.sampled_from([b"hi", "é".encode(), b"\xff\xfe"]))
    else:
        payload = bytes(draw(st.sampled_from(SIZES)))
    masked = server != (draw(st.integers(0, 15)) == 0)  # sometimes the wrong masking
    return frame(first, payload, masked, draw(st.sampled_from([0, 0, 0, 1, 2])))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, list[bytes], bool]:
    server = draw(st.booleans())
    data = b"".join(draw(st.lists(items(server), min_size=1, max_size=12)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    chunks, prev = [], 0
    for cut in [*cuts, len(data)]:
        if cut > prev:
            chunks.append(data[prev:cut])
            prev = cut
    return server, chunks, draw(st.booleans())


def run(server: bool, chunks: list[bytes], eof: bool, lean: bool) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        keys = iter(range(10**6))
        real = secrets.token_bytes
        secrets.token_bytes = lambda n=None: next(keys).to_bytes(4, "big")  # type: ignore[assignment,misc]
        try:
            ws, wire, got = connection(server, lean)
            after_each = []  # nothing may be delivered later than the library delivers it
            for chunk in chunks:
                ws.data_received(chunk)
                after_each.append((len(got), len(wire.out)))
            if eof:
                ws.eof_received()
            ws.connection_lost(None)
        finally:
            secrets.token_bytes = real  # type: ignore[assignment]
        p = ws.protocol
        return {
            "after_each_read": after_each,
            "messages": got,
            "wire": bytes(wire.out),
            "state": p.state,
            "close_rcvd": str(p.close_rcvd),
            "close_sent": str(p.close_sent),
            "error": (type(p.parser_exc).__name__, str(p.parser_exc)),
        }

    return asyncio.run(go())


@settings(max_examples=400, deadline=None)
@given(streams())
def test_lean_parser_behaves_as_the_library(stream: tuple[bool, list[bytes], bool]) -> None:
    server, chunks, eof = stream
    assert run(server, chunks, eof, lean=True) == run(server, chunks, eof, lean=False)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.booleans())
def test_serialize_binary_is_the_librarys_frame(payload: bytes, mask: bool) -> None:
    real = secrets.token_bytes
    try:
        secrets.token_bytes = lambda n=None: b"\x01\x02\x03\x04"  # type: ignore[assignment,misc]
        ours = serialize_binary(bytearray(payload), mask)
        theirs = Frame(Opcode.BINARY, payload).serialize(mask=mask)
    finally:
        secrets.token_bytes = real  # type: ignore[assignment]
    assert ours == theirs


def _reader(data: bytearray) -> Any:
    def read_exact(k: int) -> Any:
        out = data[:k]
        del data[:k]
        return out
        yield  # a generator, as the library's reader

    return read_exact


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 70000])
def test_serialize_binary_length_forms_parse_back(n: int) -> None:
    payload = os.urandom(n)
    for mask in (False, True):
        wire = serialize_binary(memoryview(payload), mask)
        parser = Frame.parse(_reader(bytearray(wire)), mask=mask)
        try:
            next(parser)
        except StopIteration as done:
            parsed = done.value
        assert parsed.opcode is Opcode.BINARY and parsed.fin and bytes(parsed.data) == payload


def test_lean_parser_reads_data_frames_and_the_library_the_rest() -> None:
    """Data around a ping: the data is read by the lean parser (also across reads), the
    ping by the library (which answers it), and the lean parser takes over again."""

    async def go() -> None:
        ws, wire, got = connection(server=True, lean=True)
        one, two = os.urandom(300), os.urandom(40)
        stream = frame(0x82, one, True) + frame(0x89, b"hi", True) + frame(0x82, two, True)
        ws.data_received(stream[:7])  # a partial frame waits in the lean parser
        assert ws._lean and not got
        ws.data_received(stream[7:])
        assert got == [one, two]
        assert wire.out == Frame(Opcode.PONG, b"hi").serialize(mask=False)
        ws.data_received(frame(0x82, b"x", True))
        assert ws._lean and got[-1] == b"x"

    asyncio.run(go())


def test_partial_frame_at_eof_is_the_librarys_error() -> None:
    async def go() -> None:
        ws, _wire, got = connection(server=True, lean=True)
        ws.data_received(frame(0x82, b"abc", True))
        ws.data_received(frame(0x82, bytes(100), True)[:20])
        ws.eof_received()
        assert got == [b"abc"]
        assert isinstance(ws.protocol.parser_exc, EOFError)
        assert "stream ends after" in str(ws.protocol.parser_exc)

    asyncio.run(go())


def test_oversized_frame_is_refused_on_its_header() -> None:
    """Only the header of a too-large frame has arrived: refused (1009) at once, as the
    library refuses it, and nothing is buffered for it."""

    async def go() -> None:
        ws, wire, got = connection(server=True, lean=True)
        ws.data_received(frame(0x82, bytes(LIMIT + 1), True)[:8])
        assert not got and not ws._lean_held
        assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 1009
        assert wire.out  # the close frame went out

    asyncio.run(go())


def test_write_binary_falls_back_to_the_library_once_closing() -> None:
    async def go() -> None:
        ws, wire, _got = connection(server=False, lean=True)
        ws.write_binary(b"record")
        assert wire.out[0] == 0x82 and wire.out[1] == 0x80 | 6
        ws.protocol.send_close(1000)
        with pytest.raises(Exception, match="closing"):
            ws.write_binary(b"late")

    asyncio.run(go())
