"""Small binary codec helpers shared by identities, handshake and records.

``Reader`` checks every length against what is left *before* slicing, and
raises ``MalformedMessage`` (a documented peer error) for anything short,
oversized or trailing.  ``armor``/``dearmor`` wrap binary objects in a
base64 text block for files.
"""

from __future__ import annotations

import base64
import binascii
import struct

from l2bridge.errors import MalformedMessage

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Reader:
    """Sequential reader over a bytes-like object; every read is bounds-checked."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise MalformedMessage("truncated")
        start = self._pos
        self._pos += n
        return bytes(self._data[start : self._pos])

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def var16(self, limit: int) -> bytes:
        """A u16 length then that many bytes; the length is checked before reading."""
        n = self.u16()
        if n > limit:
            raise MalformedMessage("field too long")
        return self.take(n)

    def var32(self, limit: int) -> bytes:
        n = self.u32()
        if n > limit:
            raise MalformedMessage("field too long")
        return self.take(n)

    def text(self, limit: int) -> str:
        raw = self.var16(limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("bad text") from None

    def end(self) -> None:
        if self.remaining:
            raise MalformedMessage("trailing bytes")


def u8(v: int) -> bytes:
    return bytes((v,))


def u16(v: int) -> bytes:
    return _U16.pack(v)


def u32(v: int) -> bytes:
    return _U32.pack(v)


def u64(v: int) -> bytes:
    return _U64.pack(v)


def var16(data: bytes) -> bytes:
    return _U16.pack(len(data)) + data


def var32(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def text(value: str) -> bytes:
    return var16(value.encode("utf-8"))


def armor(label: str, data: bytes) -> str:
    """A text block: ``-----BEGIN SHADOWMESH <label>-----``, base64 lines, END line."""
    body = base64.b64encode(data).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        [f"-----BEGIN SHADOWMESH {label}-----", *lines, f"-----END SHADOWMESH {label}-----", ""]
    )


def dearmor(label: str, text_block: str) -> bytes:
    """Inverse of ``armor``; raises ``MalformedMessage`` on a wrong label or bad base64."""
    begin, end = f"-----BEGIN SHADOWMESH {label}-----", f"-----END SHADOWMESH {label}-----"
    lines = [line.strip() for line in text_block.strip().splitlines()]
    if len(lines) < 2 or lines[0] != begin or lines[-1] != end:
        raise MalformedMessage(f"not a SHADOWMESH {label} block")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("bad base64") from None
