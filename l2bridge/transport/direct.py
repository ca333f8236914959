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
with the library's protocol object and writes it to the transport. The
transport's write-buffer limits decide ``write_paused``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN

from l2bridge.transport.constants import EARLY_MESSAGES
from l2bridge.transport.errors import TransportClosed

# A message the sink gets: the binary payload, or None for anything the tunnel
# never sends (text, fragments), which ends the tunnel.
Message = bytes | bytearray | memoryview
Sink = Callable[[Message | None], None]

_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


def _payload(frame: Frame) -> Message | None:
    if frame.opcode is Opcode.BINARY and frame.fin:
        return frame.data
    return None


class DirectMessages:
    """Mixin placed before websockets' ClientConnection / ServerConnection."""

    # Class-level defaults: the mixin adds no __init__ to the library's chain.
    direct_messages = False
    _sink: Sink | None = None
    _early: deque[Message | None] | None = None
    _early_waiter: asyncio.Future[None] | None = None
    _early_paused = False
    write_paused = False

    # Provided by websockets' Connection.
    protocol: Any
    transport: asyncio.Transport
    connection_lost_waiter: asyncio.Future[None]

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
        self.protocol.send_binary(data)
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
