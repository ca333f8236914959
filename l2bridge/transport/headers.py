"""HTTP/1.x request heads: a strict, bounded, incremental scanner (sans-I/O),
and the header set and order a browser sends when it opens a WebSocket.

The exit screens every connection with ``scan_request_head`` before the
WebSocket library sees a byte, so that anything which is not a valid upgrade
is answered by the decoy site exactly as the decoy would answer it. The
scanner rejects a bad request as early as a web server would (a TLS
ClientHello fails on its first byte), and never buffers more than
``MAX_REQUEST_HEAD`` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from l2bridge.transport.constants import (
    MAX_HEADER_COUNT,
    MAX_METHOD_LENGTH,
    MAX_REQUEST_HEAD,
    MAX_REQUEST_LINE,
)

_METHOD_PREFIX = re.compile(rb"[A-Z]{0,%d}" % MAX_METHOD_LENGTH)
_REQUEST_LINE = re.compile(
    rb"([A-Z]{1,%d}) (/[\x21-\x7e]*) HTTP/(1\.[01])" % MAX_METHOD_LENGTH,
)
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\x20-\x7e\x80-\xff\t]*?)[ \t]*")


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str  # "1.0" or "1.1"
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def get(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def count(self, name: str) -> int:
        lname = name.lower()
        return sum(1 for key, _ in self.headers if key.lower() == lname)


class Problem(Enum):
    MALFORMED = "malformed"  # -> 400
    LINE_TOO_LONG = "line_too_long"  # -> 414
    HEAD_TOO_LARGE = "head_too_large"  # -> 400 "header too large"


@dataclass(frozen=True, slots=True)
class Incomplete:
    """More bytes are needed."""


@dataclass(frozen=True, slots=True)
class Invalid:
    problem: Problem


@dataclass(frozen=True, slots=True)
class Complete:
    head: RequestHead
    consumed: int  # bytes of the head including the final CRLF CRLF


ScanResult = Incomplete | Invalid | Complete


def _first_line_prefix_ok(line: bytes) -> bool:
    """Can ``line`` (no CRLF yet) still become a valid request line?"""
    if line.endswith(b"\r"):
        line = line[:-1]  # the CR of a CRLF cut in two
    space = line.find(b" ")
    method = line if space < 0 else line[:space]
    if _METHOD_PREFIX.fullmatch(method) is None:
        return False
    if space == 0:
        return False
    rest = line[space + 1 :] if space >= 0 else b""
    if rest and rest[:1] != b"/":
        return False
    return all(0x20 <= b <= 0x7E for b in rest)


def scan_request_head(buf: bytes) -> ScanResult:
    """Scan the start of a connection's bytes for one request head.

    Returns Complete when a whole, valid head is present; Invalid as soon as
    the bytes cannot become one (or grow past the limits); Incomplete otherwise.
    Only CRLF line endings are accepted, like the WebSocket library behind us.
    """
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) > MAX_REQUEST_LINE:
            return Invalid(Problem.LINE_TOO_LONG)
        return Incomplete() if _first_line_prefix_ok(buf) else Invalid(Problem.MALFORMED)
    if end > MAX_REQUEST_LINE:
        return Invalid(Problem.LINE_TOO_LONG)
    match = _REQUEST_LINE.fullmatch(buf[:end])
    if match is None:
        return Invalid(Problem.MALFORMED)
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_REQUEST_HEAD:
            return Invalid(Problem.HEAD_TOO_LARGE)
        # A bare LF or other control byte in what arrived so far is final.
        if b"\n" in buf.replace(b"\r\n", b""):
            return Invalid(Problem.MALFORMED)
        return Incomplete()
    consumed = head_end + 4
    if consumed > MAX_REQUEST_HEAD:
        return Invalid(Problem.HEAD_TOO_LARGE)
    lines = buf[end + 2 : head_end].split(b"\r\n") if head_end > end else []
    if len(lines) > MAX_HEADER_COUNT:
        return Invalid(Problem.HEAD_TOO_LARGE)
    headers: list[tuple[str, str]] = []
    for line in lines:
        hmatch = _HEADER_LINE.fullmatch(line)
        if hmatch is None:
            return Invalid(Problem.MALFORMED)
        headers.append((hmatch.group(1).decode("ascii"), hmatch.group(2).decode("latin-1")))
    method, target, version = (g.decode("ascii") for g in match.groups())
    return Complete(RequestHead(method, target, version, tuple(headers)), consumed)


def header_has_token(value: str | None, token: str) -> bool:
    """True when the comma-separated ``value`` lists ``token`` (case-insensitive)."""
    if value is None:
        return False
    return any(part.strip().lower() == token.lower() for part in value.split(","))


# What websockets lets us control: every request header name, value and order
# (we rebuild the handshake request before it is sent), the path, masking and
# message type are RFC 6455 as the library does them. What it does not let us
# control: the TCP/TLS fingerprint (Python's ssl module offers a different
# ClientHello than Chrome; put the exit behind a CDN/reverse proxy or accept
# it), frame fragmentation patterns and the exact timing of its writes.
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
BROWSER_ACCEPT_ENCODING = "gzip, deflate, br, zstd"
BROWSER_ACCEPT_LANGUAGE = "en-US,en;q=0.9"
BROWSER_EXTENSIONS = "permessage-deflate; client_max_window_bits"


def browser_headers(
    *,
    host: str,
    origin: str,
    key: str,
    protocol: str,
    user_agent: str = BROWSER_USER_AGENT,
    accept_language: str = BROWSER_ACCEPT_LANGUAGE,
) -> list[tuple[str, str]]:
    """Chrome's WebSocket request headers, in Chrome's order."""
    return [
        ("Host", host),
        ("Connection", "Upgrade"),
        ("Pragma", "no-cache"),
        ("Cache-Control", "no-cache"),
        ("User-Agent", user_agent),
        ("Upgrade", "websocket"),
        ("Origin", origin),
        ("Sec-WebSocket-Version", "13"),
        ("Accept-Encoding", BROWSER_ACCEPT_ENCODING),
        ("Accept-Language", accept_language),
        ("Sec-WebSocket-Key", key),
        # Chrome always offers compression; the exit declines it (a record is
        # ciphertext and does not compress), which servers commonly do.
        ("Sec-WebSocket-Extensions", BROWSER_EXTENSIONS),
        ("Sec-WebSocket-Protocol", protocol),
    ]
