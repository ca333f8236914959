"""JA4 (TLS client) and JA4S (TLS server) fingerprints, after FoxIO's published spec
(github.com/FoxIO-LLC/ja4, technical_details/JA4.md and JA4S.md), from the bytes of a
ClientHello / ServerHello handshake message.

JA4 = a_b_c: a = "t" + version (highest supported_versions, GREASE ignored; else the
legacy version) + "d"/"i" (SNI present or not) + cipher count + extension count (two
digits each, GREASE ignored) + first and last character of the first ALPN value ("00"
without ALPN); b = SHA-256 of the sorted cipher list, 12 hex characters; c = SHA-256 of
the sorted extension list without SNI and ALPN, "_", the signature algorithms in the order
sent (GREASE ignored here too: Chromium 156 sends one), 12 hex characters.
JA4S = "t" + version + extension count + ALPN chosen, the cipher chosen, SHA-256 of the
extensions in the order sent.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
EXT_SNI, EXT_ALPN, EXT_SIGALGS, EXT_VERSIONS = 0x0000, 0x0010, 0x000D, 0x002B


class NotAHello(ValueError):
    """The bytes are not a (complete) ClientHello / ServerHello."""


def is_grease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass(frozen=True, slots=True)
class Hello:
    version: int  # legacy_version
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]  # types, in the order sent
    versions: tuple[int, ...]  # supported_versions (client: offered; server: the one)
    alpn: tuple[bytes, ...]
    sigalgs: tuple[int, ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NotAHello("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def vec(self, size: int) -> bytes:
        n = self.u8() if size == 1 else self.u16() if size == 2 else int.from_bytes(self.take(3))
        return self.take(n)


def _u16s(data: bytes) -> tuple[int, ...]:
    return tuple(struct.unpack(f">{len(data) // 2}H", data[: len(data) // 2 * 2]))


def parse_hello(message: bytes) -> tuple[int, Hello]:
    """(handshake type, fields) of a ClientHello (1) or ServerHello (2) message."""
    r = _Reader(message)
    kind = r.u8()
    body = _Reader(r.vec(3))
    if kind not in (1, 2):
        raise NotAHello(f"handshake type {kind}")
    version = body.u16()
    body.take(32)
    body.vec(1)  # session id
    if kind == 1:
        ciphers = _u16s(body.vec(2))
        body.vec(1)  # compression methods
    else:
        ciphers = (body.u16(),)
        body.u8()
    extensions: list[int] = []
    versions: tuple[int, ...] = ()
    alpn: tuple[bytes, ...] = ()
    sigalgs: tuple[int, ...] = ()
    if body.pos < len(body.data):
        ext = _Reader(body.vec(2))
        while ext.pos < len(ext.data):
            etype = ext.u16()
            data = ext.vec(2)
            extensions.append(etype)
            if etype == EXT_VERSIONS:
                versions = _u16s(data[1:] if kind == 1 else data)
            elif etype == EXT_ALPN:
                names, a = [], _Reader(data[2:])
                while a.pos < len(a.data):
                    names.append(a.vec(1))
                alpn = tuple(names)
            elif etype == EXT_SIGALGS:
                sigalgs = _u16s(data[2:])
    return kind, Hello(version, ciphers, tuple(extensions), versions, alpn, sigalgs)


def _version(hello: Hello) -> str:
    offered = [v for v in hello.versions if not is_grease(v)]
    return VERSIONS.get(max(offered) if offered else hello.version, "00")


def _alpn(value: bytes | None) -> str:
    if not value:
        return "00"
    first, last = chr(value[0]), chr(value[-1])
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    return f"{value[0]:02x}"[0] + f"{value[-1]:02x}"[-1]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def ja4(hello: Hello) -> str:
    ciphers = [c for c in hello.ciphers if not is_grease(c)]
    exts = [e for e in hello.extensions if not is_grease(e)]
    sni = "d" if EXT_SNI in exts else "i"
    a = (
        f"t{_version(hello)}{sni}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}"
        f"{_alpn(hello.alpn[0] if hello.alpn else None)}"
    )
    b = _hash(",".join(f"{c:04x}" for c in sorted(ciphers)))
    rest = sorted(e for e in exts if e not in (EXT_SNI, EXT_ALPN))
    text = ",".join(f"{e:04x}" for e in rest)
    sigalgs = ",".join(f"{s:04x}" for s in hello.sigalgs if not is_grease(s))
    c = _hash(f"{text}_{sigalgs}" if sigalgs else text) if rest else "000000000000"
    return f"{a}_{b}_{c}"


def ja4s(hello: Hello) -> str:
    exts = [e for e in hello.extensions if not is_grease(e)]
    a = f"t{_version(hello)}{min(len(exts), 99):02d}{_alpn(hello.alpn[0] if hello.alpn else None)}"
    return f"{a}_{hello.ciphers[0]:04x}_{_hash(','.join(f'{e:04x}' for e in exts))}"


def first_handshake(stream: bytes) -> bytes:
    """The first handshake message carried by TLS records at the start of ``stream``."""
    data = b""
    pos = 0
    while pos + 5 <= len(stream):
        ctype, length = stream[pos], struct.unpack(">H", stream[pos + 3 : pos + 5])[0]
        if ctype != 22:
            break
        data += stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[1:4]):
            return data[: 4 + int.from_bytes(data[1:4])]
    raise NotAHello("no complete handshake message")
