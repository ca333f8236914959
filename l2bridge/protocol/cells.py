"""Cells and relay messages of multi-hop circuits (sans-I/O codec).

A cell is one frame inside a link's records (the link is the ordinary WebSocket +
handshake + session between two neighbours)::

    "SMC\\x01" | kind u8 | circuit id u32 | body
    CREATE, CREATED   body = flags u8 | length u16 | chunk | zeros   (CONTROL_FRAGMENT_CLASS)
    RELAY             body = onion header (160) | payload (one RELAY_SIZE_CLASSES size)
    DESTROY           body = reason u8 | zeros                        (512)

The circuit id is chosen by the side that opened the link and names the circuit on that
link only. CREATE/CREATED carry one hop's handshake (hopshake.py) in fragments (flag 1:
more follow); DESTROY tears the circuit down (a fixed reason code, never text).

Inside the onion, the payload is a relay message padded to its size class::

    command u8 | flags u8 | length u32 | data | zeros

Flags: 1 = more fragments follow, 2 = not the first fragment. DATA carries one L2 frame
(one cell; two for a GSO super-frame above the largest class); EXTEND/EXTENDED/EXTEND_FAILED
go in fragments of
CONTROL_FRAGMENT_CLASS, reassembled by ``Reassembler`` with a size bound and the cells'
sequence numbers (a gap drops the partial message).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from l2bridge.codec import Reader, text, var16
from l2bridge.constants import (
    CONTROL_FRAGMENT_CLASS,
    MAX_HOP_HANDSHAKE,
    MAX_RELAY_MESSAGE,
    NODE_ID_SIZE,
    ONION_HEADER_SIZE,
    RELAY_MESSAGE_HEADER_SIZE,
    RELAY_SIZE_CLASSES,
)
from l2bridge.errors import MalformedMessage

CELL_MAGIC = b"SMC\x01"
_CELL = struct.Struct(">4sBI")
CELL_HEADER_SIZE = _CELL.size
_FRAGMENT = struct.Struct(">BH")
_MESSAGE = struct.Struct(">BBI")
DESTROY_BODY_SIZE = 512
FLAG_MORE = 1
FLAG_CONTINUED = 2  # relay message fragments after the first
MAX_ENDPOINT_SIZE = 255


class CellKind(IntEnum):
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4


class RelayCommand(IntEnum):
    PADDING = 0
    DATA = 1
    EXTEND = 2
    EXTENDED = 3
    EXTEND_FAILED = 4


class DestroyReason(IntEnum):
    NORMAL = 0
    PROTOCOL = 1
    NEXT_HOP_GONE = 2
    OVERLOADED = 3


class ExtendFailure(IntEnum):
    UNREACHABLE = 1  # the next hop did not answer or refused the link
    REFUSED = 2  # it answered the CREATE with something unusable
    BUSY = 3  # this hop already extended the circuit


_CONTROL_BODY = CONTROL_FRAGMENT_CLASS
_CHUNK = _CONTROL_BODY - _FRAGMENT.size


@dataclass(frozen=True, slots=True)
class Cell:
    kind: CellKind
    circuit: int
    body: memoryview


def encode_cell(kind: CellKind, circuit: int, body: bytes | bytearray | memoryview) -> bytes:
    return cell_header(kind, circuit) + body


def cell_header(kind: CellKind, circuit: int) -> bytes:
    """The header ``encode_cell`` puts before a body: the onion functions write it into
    the cell's buffer themselves (``prefix``), so no copy of the body is made for it."""
    return _CELL.pack(CELL_MAGIC, kind, circuit)


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of ``data`` (cast only when it is not one already: a cast per cell
    costs more than the check)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def looks_like_cell(frame: bytes | bytearray | memoryview) -> bool:
    """Whether a link frame is a cell (the exit uses the first frame to tell a circuit
    link from an L2 device's link)."""
    return bytes(frame[:4]) == CELL_MAGIC and _body_ok(
        frame[4] if len(frame) > 4 else 0, len(frame)
    )


def _body_ok(kind: int, frame_size: int) -> bool:
    size = frame_size - CELL_HEADER_SIZE
    if kind in (CellKind.CREATE, CellKind.CREATED):
        return size == _CONTROL_BODY
    if kind == CellKind.RELAY:
        return size - ONION_HEADER_SIZE in RELAY_SIZE_CLASSES
    if kind == CellKind.DESTROY:
        return size == DESTROY_BODY_SIZE
    return False


_KINDS = {int(k): k for k in CellKind}  # a dict lookup per cell, not an Enum call
_COMMANDS = {int(c): c for c in RelayCommand}


def parse_cell(frame: bytes | bytearray | memoryview) -> Cell:
    """The cell in a link frame; ``MalformedMessage`` on a bad magic, kind or size."""
    view = _byte_view(frame)
    if len(view) < CELL_HEADER_SIZE:
        raise MalformedMessage("short cell")
    magic, kind, circuit = _CELL.unpack_from(view, 0)
    if magic != CELL_MAGIC or not _body_ok(kind, len(view)):
        raise MalformedMessage("not a cell")
    return Cell(_KINDS[kind], circuit, view[CELL_HEADER_SIZE:])


# -- CREATE / CREATED fragments ----------------------------------------------------------------


def handshake_cells(kind: CellKind, circuit: int, message: bytes) -> list[bytes]:
    """``message`` (a hop handshake) in CREATE or CREATED cells."""
    if len(message) > MAX_HOP_HANDSHAKE:
        raise ValueError("hop handshake larger than MAX_HOP_HANDSHAKE")
    out = []
    for start in range(0, max(len(message), 1), _CHUNK):
        chunk = message[start : start + _CHUNK]
        more = FLAG_MORE if start + _CHUNK < len(message) else 0
        body = _FRAGMENT.pack(more, len(chunk)) + chunk
        out.append(encode_cell(kind, circuit, body + bytes(_CONTROL_BODY - len(body))))
    return out


def read_fragment(body: memoryview) -> tuple[bool, bytes]:
    """(more follow, chunk) of a CREATE/CREATED body."""
    flags, length = _FRAGMENT.unpack_from(body, 0)
    if flags & ~FLAG_MORE or length > _CHUNK:
        raise MalformedMessage("bad fragment")
    return bool(flags & FLAG_MORE), bytes(body[_FRAGMENT.size : _FRAGMENT.size + length])


def destroy_cell(circuit: int, reason: DestroyReason) -> bytes:
    return encode_cell(CellKind.DESTROY, circuit, bytes((reason,)) + bytes(DESTROY_BODY_SIZE - 1))


def destroy_reason(body: memoryview) -> DestroyReason:
    code = body[0]
    return (
        DestroyReason(code) if code in DestroyReason._value2member_map_ else DestroyReason.PROTOCOL
    )


# -- relay messages ----------------------------------------------------------------------------


def size_class(length: int) -> int:
    """The smallest payload class a message of ``length`` data bytes fits in."""
    need = length + RELAY_MESSAGE_HEADER_SIZE
    for size in RELAY_SIZE_CLASSES:
        if need <= size:
            return size
    raise ValueError("relay message larger than the largest size class")


_LARGEST_DATA = RELAY_SIZE_CLASSES[-1] - RELAY_MESSAGE_HEADER_SIZE
_ZEROS = memoryview(bytes(RELAY_SIZE_CLASSES[-1]))  # padding, sliced (never written)


def relay_payloads(command: RelayCommand, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """The padded payload(s) of one relay message.

    DATA and PADDING: one cell of the smallest class that fits, or fragments of the largest
    class (the last one in the smallest class that fits) for a GSO super-frame too big for
    one cell. Control messages: fragments of CONTROL_FRAGMENT_CLASS.
    """
    if len(data) > MAX_RELAY_MESSAGE:
        raise ValueError("relay message larger than MAX_RELAY_MESSAGE")
    bulk = command is RelayCommand.DATA or command is RelayCommand.PADDING
    chunk = _LARGEST_DATA if bulk else CONTROL_FRAGMENT_CLASS - RELAY_MESSAGE_HEADER_SIZE
    view = _byte_view(data)
    for start in range(0, max(len(view), 1), chunk):
        part = view[start : start + chunk]
        flags = (FLAG_MORE if start + chunk < len(view) else 0) | (FLAG_CONTINUED if start else 0)
        size = size_class(len(part)) if bulk else CONTROL_FRAGMENT_CLASS
        pad = size - RELAY_MESSAGE_HEADER_SIZE - len(part)
        # One pass over the frame: no zero-filled buffer written over afterwards.
        yield b"".join((_MESSAGE.pack(command, flags, len(part)), part, _ZEROS[:pad]))


@dataclass(frozen=True, slots=True)
class RelayMessage:
    command: RelayCommand
    data: bytes | memoryview  # a view for DATA in one cell, else bytes


class Reassembler:
    """Relay messages from payloads in sequence order, bounded; drops counted in ``drops``.

    A fragment that does not follow the previous one (a dropped cell in between), a message
    over ``limit`` or a bad header drops the partial message; nothing is raised.
    """

    __slots__ = ("_command", "_last", "_limit", "_parts", "_size", "drops")

    def __init__(self, drops: Counter[str], limit: int = MAX_RELAY_MESSAGE) -> None:
        self.drops = drops
        self._limit = limit
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self._command: RelayCommand | None = None
        self._last = -1

    def add(self, sequence: int, payload: bytes | bytearray | memoryview) -> RelayMessage | None:
        if len(payload) not in RELAY_SIZE_CLASSES:
            self.drops["bad_size"] += 1
            return None
        code, flags, length = _MESSAGE.unpack_from(payload, 0)
        command = _COMMANDS.get(code)
        if (
            command is None
            or flags & ~(FLAG_MORE | FLAG_CONTINUED)
            or length > len(payload) - RELAY_MESSAGE_HEADER_SIZE
        ):
            self._reset()
            self.drops["bad_message"] += 1
            return None
        # A view, not a copy: a DATA frame goes on as a view of the opened payload.
        data = memoryview(payload)[RELAY_MESSAGE_HEADER_SIZE : RELAY_MESSAGE_HEADER_SIZE + length]
        continued = bool(flags & FLAG_CONTINUED)
        if self._command is not None and (
            not continued or command != self._command or sequence != self._last + 1
        ):
            self._reset()
            self.drops["fragment_gap"] += 1
        self._last = sequence
        if self._command is None and continued:
            self.drops["orphan_fragment"] += 1  # its start was lost or refused
            return None
        if self._command is None and not flags & FLAG_MORE:
            return RelayMessage(command, data if command is RelayCommand.DATA else bytes(data))
        if self._size + length > self._limit:
            self._reset()
            self.drops["message_too_large"] += 1
            return None
        self._command = command
        self._parts.append(data)
        self._size += length
        if flags & FLAG_MORE:
            return None
        message = RelayMessage(command, b"".join(self._parts))
        self._reset()
        return message

    def _reset(self) -> None:
        self._parts, self._size, self._command = [], 0, None


class HandshakeAssembler:
    """CREATE / CREATED fragments on one circuit of one link, bounded."""

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, body: memoryview) -> bytes | None:
        """The whole message once its last fragment is in; ``MalformedMessage`` past bounds."""
        more, chunk = read_fragment(body)
        self._size += len(chunk)
        if self._size > MAX_HOP_HANDSHAKE:
            raise MalformedMessage("hop handshake too large")
        self._parts.append(chunk)
        if more:
            return None
        message = b"".join(self._parts)
        self._parts, self._size = [], 0
        return message


# -- EXTEND / EXTENDED bodies -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extend:
    """Ask the tail to open a link to ``endpoint`` and send it ``create``.

    No connection token travels here: the relaying hop mints the next hop's token from its
    own credential for that hop, so the next hop never sees one minted from the client's
    (which would name the client).
    """

    node_id: bytes
    endpoint: str
    create: bytes

    def encode(self) -> bytes:
        if len(self.node_id) != NODE_ID_SIZE:
            raise ValueError("node id must be 32 bytes")
        return b"".join([self.node_id, text(self.endpoint), var16(self.create)])

    @classmethod
    def decode(cls, data: bytes) -> Extend:
        r = Reader(data)
        node = r.take(NODE_ID_SIZE)
        endpoint = r.text(MAX_ENDPOINT_SIZE)
        create = r.var16(MAX_HOP_HANDSHAKE)
        r.end()
        if not endpoint.startswith(("ws://", "wss://")):
            raise MalformedMessage("endpoint")
        return cls(node, endpoint, create)
