"""Direct message delivery for the tunnel's websockets connections.

websockets' asyncio connection parses frames in ``data_received`` (its sans-I/O
protocol does the framing) and then queues each message for a ``recv()`` in
another task. For the tunnel that hand-off is the latency: every record costs an
extra loop iteration and a task switch on each hop. This mixin keeps the
library's parsing, pings, close handshake and flow control, and only changes
where data messages go:

Only connections made with ``direct_messages = True`` (``open_transport(direct=True)``,
``serve_exit(direct=True)``) do this; for the others ``recv()`` works as usual.

- until a sink is set, messages wait in a small local queue, read with
  ``next_message()`` (the tunnel handshake); past ``EARLY_MESSAGES`` reading
  pauses, so a peer cannot grow it;
- ``deliver_to(sink)`` hands the waiting messages and then every new one to
  ``sink`` synchronously, from inside ``data_received``.

Writes go the other way synchronously too: ``write_binary`` frames one message
and writes it to the transport. The transport's write-buffer limits decide
``write_paused``.

The common frame each way is one unfragmented binary frame, and the library's
general machinery (a Frame object, a BytesIO, a generator-based parser reading
the header in four steps, an event list) was a large part of each record's cost.
So, on an open connection, with no extension and no debug logging:

- ``write_binary`` serialises the binary frame itself (``serialize_binary``: the
  same bytes the library writes, masked by a client with a fresh key from the same
  CSPRNG, through the library's own C ``apply_mask``); anything else is the library's;
- ``data_received`` parses the frames at the front of each read itself while the
  library's parser is idle at a frame boundary (``lean_frames``): a final binary
  frame with no reserved bit, masked exactly when the peer must mask, and within
  the library's size limit is delivered as the library would deliver it; at the
  first frame that is anything else (ping, pong, close, text, a fragment, a bad
  header, a frame too large), that frame and everything after it in the read go to
  the library, which refuses or handles them as it always does, and the lean
  parser takes over again only once the library is idle at a boundary. A partial
  frame waits here (bounded by the size limit, checked on the header); at EOF or
  connection loss it is handed to the library first, so its errors are its own.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections import deque
from collections.abc import Callable
from types import CodeType
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, SERVER, Protocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the library's pure-Python fallback
    from websockets.utils import apply_mask

from l2bridge.transport.constants import EARLY_MESSAGES
from l2bridge.transport.errors import TransportClosed

# A message the sink gets: the binary payload, or None for anything the tunnel
# never sends (text, fragments), which ends the tunnel.
Message = bytes | bytearray | memoryview
Sink = Callable[[Message | None], None]

_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


# The first header byte of the one frame the lean paths handle: FIN, no reserved bit,
# opcode BINARY.
FIN_BINARY = 0x82
_MASK_BIT = 0x80
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
# Where the library's parser waits between frames (websockets.protocol.Protocol.parse
# at ``yield from self.reader.at_eof()``); any other place means it is inside a frame.
_PARSE_CODE: CodeType = Protocol.parse.__code__
_AT_EOF_CODE: CodeType = StreamReader.at_eof.__code__


def serialize_binary(data: bytes | bytearray | memoryview, mask: bool) -> bytes:
    """One final binary frame carrying ``data``: byte for byte what websockets'
    ``Frame(Opcode.BINARY, data).serialize(mask=mask)`` writes, with a fresh masking key
    from ``secrets.token_bytes`` (as the library) when ``mask`` (the client side)."""
    n = len(data)
    bit = _MASK_BIT if mask else 0
    if n < 126:
        head = bytes((FIN_BINARY, bit | n))
    elif n < 65536:
        head = _HEAD_16.pack(FIN_BINARY, bit | 126, n)
    else:
        head = _HEAD_64.pack(FIN_BINARY, bit | 127, n)
    if mask:
        key = secrets.token_bytes(4)
        return b"".join((head, key, apply_mask(data, key)))
    return b"".join((head, data))


def _idle_at_boundary(protocol: Any) -> bool:
    """Whether the library's parser holds nothing and waits for the next frame's first
    byte on an open connection whose frames the lean parser may read (no extension, no
    fragmented message in progress, a size limit, no debug logging)."""
    if (
        protocol.state is not OPEN
        or protocol.current_size is not None
        or protocol.extensions
        or protocol.debug
        or protocol.max_message_size is None
        or protocol.max_fragment_size is not None
    ):
        return False
    reader = protocol.reader
    if reader.buffer or reader.eof:
        return False
    # The chain of generators the parser is suspended in must end with Protocol.parse
    # waiting in reader.at_eof(); a library whose parser looks otherwise is never read
    # around.
    gen = protocol.parser
    parent = None
    while gen.gi_yieldfrom is not None:
        parent, gen = gen, gen.gi_yieldfrom
    return (
        parent is not None
        and parent.gi_code is _PARSE_CODE
        and getattr(gen, "gi_code", None) is _AT_EOF_CODE
    )


def _payload(frame: Frame) -> Message | None:
    if frame.opcode is Opcode.BINARY and frame.fin:
        return frame.data
    return None


class DirectMessages:
    """Mixin placed before websockets' ClientConnection / ServerConnection."""

    # Class-level defaults: the mixin adds no __init__ to the library's chain.
    direct_messages = False
    # The lean frame paths (module docstring); False: the library does all framing.
    lean_frames = True
    _lean = False  # the lean parser reads the stream (the library's parser is idle)
    _lean_held: bytearray | None = None  # the start of a frame the lean parser waits for
    _lean_need = 0  # the bytes that frame needs in all (0: its header is not complete)
    _sink: Sink | None = None
    _early: deque[Message | None] | None = None
    _early_waiter: asyncio.Future[None] | None = None
    _early_paused = False
    write_paused = False

    # Provided by websockets' Connection.
    protocol: Any
    transport: asyncio.Transport
    connection_lost_waiter: asyncio.Future[None]

    def data_received(self, data: bytes) -> None:
        if not (self.direct_messages and self.lean_frames):
            super().data_received(data)  # type: ignore[misc]
            return
        if not self._lean:
            if not _idle_at_boundary(self.protocol):
                super().data_received(data)  # type: ignore[misc]
                return
            self._lean = True
        self._lean_receive(data)

    def _lean_receive(self, data: bytes) -> None:
        held = self._lean_held
        buf: bytes | bytearray
        if held is not None:
            # The rest of a frame: appended (no copy of what came before) until whole.
            held += data
            if len(held) < self._lean_need:
                return
            # Parsed from here on and never written again (a new buffer holds any rest),
            # so the messages may be views into it.
            buf, self._lean_held = held, None
        else:
            buf = data if type(data) is bytes else bytes(data)
        protocol = self.protocol
        masked = protocol.side is SERVER  # a client must mask, a server must not
        limit = protocol.max_message_size
        view = memoryview(buf)
        pos, end = 0, len(buf)
        need = 0  # what the frame at ``pos`` needs in all, once its header is read
        while pos < end:
            if end - pos < 2:
                break
            head2 = buf[pos + 1]
            # Checked where the library checks them, so that it refuses as early: the
            # opcode and the mask bit on the first two bytes, the size on the length.
            if (
                buf[pos] != FIN_BINARY
                or bool(head2 & _MASK_BIT) is not masked
                or protocol.state is not OPEN
            ):
                self._to_library(view[pos:])
                return
            length = head2 & 0x7F
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                (length,) = _U16.unpack_from(buf, start)
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                (length,) = _U64.unpack_from(buf, start)
                start += 8
            if length > limit:
                self._to_library(view[pos:])
                return
            stop = start + (4 if masked else 0) + length
            if stop > end:
                need = stop - pos
                break
            if masked:
                message: Message = apply_mask(view[start + 4 : stop], buf[start : start + 4])
            else:
                message = view[start:stop]
            pos = stop
            sink = self._sink
            if sink is not None:
                sink(message)
            else:
                self._hold(message)
        if pos < end:
            self._lean_held = bytearray(view[pos:])
            self._lean_need = need

    def _to_library(self, rest: memoryview) -> None:
        """A frame that is not ours: the library reads from it on, as it would have."""
        self._lean = False
        super().data_received(bytes(rest))  # type: ignore[misc]

    def _lean_release(self) -> None:
        """The stream ends: a partial frame held here goes to the library first, so the
        library's end-of-stream error is the one it would have raised."""
        held, self._lean_held = self._lean_held, None
        self._lean = False
        if held:
            self.protocol.receive_data(bytes(held))

    def eof_received(self) -> None:
        self._lean_release()
        super().eof_received()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lean_release()
        super().connection_lost(exc)  # type: ignore[misc]

    def process_event(self, event: Any) -> None:
        if self.direct_messages and isinstance(event, Frame) and event.opcode in _DATA_OPCODES:
            message = _payload(event)
            sink = self._sink
            if sink is not None:
                sink(message)
            else:
                self._hold(message)
            return
        super().process_event(event)  # type: ignore[misc]

    def _hold(self, message: Message | None) -> None:
        if self._early is None:
            self._early = deque()
        self._early.append(message)
        waiter = self._early_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._early) >= EARLY_MESSAGES and not self._early_paused:
            self._early_paused = True
            self.transport.pause_reading()

    def _resume_early(self) -> None:
        if self._early_paused:
            self._early_paused = False
            self.transport.resume_reading()

    async def next_message(self) -> Message:
        """The next binary message before ``deliver_to``; TransportClosed otherwise."""
        while not self._early:
            if self.connection_lost_waiter.done():
                raise TransportClosed("connection closed")
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._early_waiter = waiter
            try:
                await asyncio.wait(
                    [waiter, self.connection_lost_waiter], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self._early_waiter = None
                waiter.cancel()
        message = self._early.popleft()
        if len(self._early) < EARLY_MESSAGES // 2:
            self._resume_early()
        if message is None:
            raise TransportClosed("unexpected text or fragmented message")
        return message

    def deliver_to(self, sink: Sink) -> None:
        """From now on, hand every message to ``sink`` synchronously (in order)."""
        early, self._early = self._early, None
        self._sink = sink
        while early:
            sink(early.popleft())
        self._resume_early()

    @property
    def is_open(self) -> bool:
        return bool(self.protocol.state is OPEN)

    def write_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Frame ``data`` as one binary message and write it now (needs ``is_open``)."""
        protocol = self.protocol
        if (
            self.lean_frames
            and protocol.state is OPEN
            and not protocol.expect_continuation_frame
            and not protocol.extensions
            and not protocol.debug
            and not protocol.writes
        ):
            self.transport.write(serialize_binary(data, protocol.side is not SERVER))
            return
        protocol.send_binary(data)
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def abort(self) -> None:
        """Drop the connection at once: no closing handshake (the peer is unreachable)."""
        self.transport.abort()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        super().pause_writing()  # type: ignore[misc]

    def resume_writing(self) -> None:
        self.write_paused = False
        super().resume_writing()  # type: ignore[misc]
