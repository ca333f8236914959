"""HTTP/1.x request heads: an incremental parser shaped like nginx's (sans-I/O),
and the header set and order a browser sends when it opens a WebSocket.

``HeadParser`` takes a connection's bytes as they arrive and says, as early as
nginx 1.22 would, whether they form a request head, can still become one, or
cannot (and then which error nginx answers). Each byte is examined a bounded
number of times however the bytes are split, so a head fed one byte at a time
costs linear work (the old scanner re-read the whole buffer on every segment).

What it copies from nginx (``ngx_http_parse.c``, ``ngx_http_request.c``):
- leading empty lines are skipped; the request line is checked byte by byte
  (a TLS ClientHello fails on its first byte, ``HTTP/2.0`` at its digit);
- lines may end in LF or CRLF; a stray CR, a NUL, a space or control byte in a
  header name, or a line starting with white space is a 400; a header name with
  other non-token bytes (``_``, ``@``) is ignored, like nginx's
  ``ignore_invalid_headers``;
- the buffer limits: a 1 KiB first buffer, then up to 4 buffers of 8 KiB; a
  line that does not fit one 8 KiB buffer is a 414 (request line) or a 400
  "Request Header Or Cookie Too Large" (header), as are more than 4 buffers.

``RequestHead.strict`` says whether the head was also acceptable to a strict
RFC 9112 parser (CRLF only, nothing ignored): only such a head may be handed
to the WebSocket library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from l2bridge.transport.constants import (
    HEAD_FIRST_BUFFER,
    HEAD_LARGE_BUFFER,
    HEAD_LARGE_BUFFERS,
)

CR, LF, SP = 0x0D, 0x0A, 0x20


class Problem(Enum):
    MALFORMED = "malformed"  # -> 400, close
    LINE_TOO_LONG = "line_too_long"  # -> 414, close
    HEAD_TOO_LARGE = "head_too_large"  # -> 400 "Request Header Or Cookie Too Large", close
    BAD_VERSION = "bad_version"  # -> 505, close


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str  # "0.9", "1.0" or "1.1" (any HTTP/1.x with x >= 1 counts as 1.1)
    headers: tuple[tuple[str, str], ...]
    strict: bool = True  # CRLF endings only and no header ignored

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


@dataclass(frozen=True, slots=True)
class Incomplete:
    """More bytes are needed."""


@dataclass(frozen=True, slots=True)
class Invalid:
    problem: Problem
    http09: bool = False  # an HTTP/0.9 request line: nginx answers with the body alone


@dataclass(frozen=True, slots=True)
class Complete:
    head: RequestHead
    consumed: int  # bytes of the head, from the first byte fed (skipped empty lines included)


ScanResult = Incomplete | Invalid | Complete

_METHOD_RUN = re.compile(rb"[A-Z_-]*")
_SPACE_RUN = re.compile(rb" *")
# nginx refuses control bytes in the target (since 1.21.1); anything else up to a space.
_TARGET_RUN = re.compile(rb"[^\x00-\x20\x7f]*")
_DIGIT_RUN = re.compile(rb"[0-9]*")
_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+")
_NAME_STOP = re.compile(rb"[\x00-\x20\x7f:]")
_VALUE_STOP = re.compile(rb"[\x00\r]")
_PROTOCOL = b"HTTP/"


def _skip(run: re.Pattern[bytes], buf: bytearray, pos: int) -> int:
    """End of the run of ``run``'s bytes starting at ``pos`` (the patterns match empty)."""
    match = run.match(buf, pos)
    assert match is not None
    return match.end()


# Request-line states.
_START, _METHOD, _BEFORE_TARGET, _TARGET, _BEFORE_PROTO, _PROTO = range(6)
_MAJOR_FIRST, _MAJOR, _MINOR_FIRST, _MINOR, _AFTER_VERSION, _ALMOST_DONE = range(6, 12)
_HEADERS = 12


class HeadParser:
    """Parses one request head incrementally. ``feed`` returns the state so far.

    After Complete or Invalid the parser is finished: feeding more returns the
    same result. ``buffer`` holds every byte fed (the caller's leftover after a
    Complete head is ``buffer[consumed:]``).
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.result: ScanResult = Incomplete()
        self._state = _START
        self._pos = 0  # next byte to examine
        self._start = 0  # first byte of the request line
        self._line_start = 0  # first byte of the line being parsed
        self._marks: list[int] = []  # method end, target start, target end
        self._proto_seen = 0
        self._major = 0
        self._minor = 0
        self._crlf_only = True
        self._ignored = False
        self._headers: list[tuple[str, str]] = []
        self._scan = 0  # next byte of an unfinished header line to check
        self._in_value = False  # that line's colon has been seen
        # nginx's header buffers: where the current one ends, and large ones taken.
        self._buffer_end = HEAD_FIRST_BUFFER
        self._large = 0

    def feed(self, data: bytes) -> ScanResult:
        if not isinstance(self.result, Incomplete):
            return self.result
        self.buffer += data
        if self._state < _HEADERS:
            self._request_line()
        if self._state == _HEADERS and isinstance(self.result, Incomplete):
            self._header_lines()
        if isinstance(self.result, Incomplete):
            self._check_room(len(self.buffer), complete=False)
        return self.result

    # --- nginx's buffer arithmetic -------------------------------------------------

    def _check_room(self, upto: int, *, complete: bool) -> bool:
        """Account for bytes up to ``upto``; False (and the result set) on overflow.

        ``complete``: a line ends at ``upto``; else the head is unfinished and
        ``upto`` bytes have arrived. nginx reads into a buffer; when it is full and
        the head is not complete it copies the unfinished line into a fresh 8 KiB
        buffer, and gives up when that line alone fills 8 KiB or all 4 large
        buffers are taken (a 414 in the request line, else a 400 "too large").
        """
        while upto > self._buffer_end or (not complete and upto == self._buffer_end):
            if self._state == _START:
                # Only empty lines so far: nginx reuses the buffer from its start.
                self._buffer_end = self._line_start + HEAD_FIRST_BUFFER
                continue
            partial = self._buffer_end - self._line_start
            if partial >= HEAD_LARGE_BUFFER or self._large >= HEAD_LARGE_BUFFERS:
                in_line = self._state < _HEADERS
                self._fail(Problem.LINE_TOO_LONG if in_line else Problem.HEAD_TOO_LARGE)
                return False
            self._large += 1
            self._buffer_end = self._line_start + HEAD_LARGE_BUFFER
        return True

    # --- the request line, byte by byte (runs of like bytes go through one regex) ----

    def _fail(self, problem: Problem = Problem.MALFORMED) -> None:
        self.result = Invalid(problem)

    def _request_line(self) -> None:
        buf = self.buffer
        pos = self._pos
        state = self._state
        marks = self._marks
        if state == _START:
            # nginx skips empty lines before a request.
            while pos < len(buf) and buf[pos] in (CR, LF):
                pos += 1
            self._line_start = self._start = pos
            if pos == len(buf):
                self._pos = pos
                return
            state = _METHOD
        # The request line must end within one large buffer from its start.
        n = min(len(buf), self._start + HEAD_LARGE_BUFFER)
        while pos < n:
            ch = buf[pos]
            if state == _METHOD:
                pos = _skip(_METHOD_RUN, buf, pos)
                if pos == n:
                    break
                if buf[pos] != SP or pos == self._start:
                    self._fail()
                    return
                marks.append(pos)
                state = _BEFORE_TARGET
                pos += 1
            elif state == _BEFORE_TARGET:
                pos = _skip(_SPACE_RUN, buf, pos)
                if pos == n:
                    break
                ch = buf[pos]
                if ch != ord("/") and not (ord("a") <= ch | 0x20 <= ord("z")):
                    self._fail()
                    return
                marks.append(pos)
                state = _TARGET
            elif state == _TARGET:
                pos = _skip(_TARGET_RUN, buf, pos)
                if pos == n:
                    break
                ch = buf[pos]
                marks.append(pos)
                if ch == SP:
                    state = _BEFORE_PROTO
                    pos += 1
                elif ch in (CR, LF):
                    self._major, self._minor = 0, 9  # HTTP/0.9: no version
                    state = _ALMOST_DONE if ch == CR else _HEADERS
                    pos += 1
                    if state == _HEADERS:
                        break
                else:
                    self._fail()
                    return
            elif state == _BEFORE_PROTO:
                pos = _skip(_SPACE_RUN, buf, pos)
                if pos == n:
                    break
                if buf[pos] in (CR, LF):
                    self._major, self._minor = 0, 9
                    state = _ALMOST_DONE if buf[pos] == CR else _HEADERS
                    pos += 1
                    if state == _HEADERS:
                        break
                    continue
                state = _PROTO
            elif state == _PROTO:
                if ch != _PROTOCOL[self._proto_seen]:
                    self._fail()
                    return
                self._proto_seen += 1
                pos += 1
                if self._proto_seen == len(_PROTOCOL):
                    state = _MAJOR_FIRST
            elif state == _MAJOR_FIRST:
                if not ord("1") <= ch <= ord("9"):
                    self._fail()
                    return
                self._major = ch - ord("0")
                if self._major > 1:
                    self._fail(Problem.BAD_VERSION)
                    return
                pos += 1
                state = _MAJOR
            elif state == _MAJOR:
                if ch == ord("."):
                    state = _MINOR_FIRST
                    pos += 1
                elif ord("0") <= ch <= ord("9"):
                    # "HTTP/10.0": nginx's major grows past 1 -> 505.
                    self._fail(Problem.BAD_VERSION)
                    return
                else:
                    self._fail()
                    return
            elif state == _MINOR_FIRST:
                if not ord("0") <= ch <= ord("9"):
                    self._fail()
                    return
                state = _MINOR
            elif state == _MINOR:
                end = _skip(_DIGIT_RUN, buf, pos)
                for digit in buf[pos:end]:
                    self._minor = self._minor * 10 + digit - ord("0")
                    if self._minor > 99:
                        self._fail()
                        return
                pos = end
                if pos == n:
                    break
                ch = buf[pos]
                pos += 1
                if ch == SP:
                    state = _AFTER_VERSION
                elif ch == CR:
                    state = _ALMOST_DONE
                elif ch == LF:
                    state = _HEADERS
                    break
                else:
                    self._fail()
                    return
            elif state == _AFTER_VERSION:
                pos = _skip(_SPACE_RUN, buf, pos)
                if pos == n:
                    break
                ch = buf[pos]
                pos += 1
                if ch == CR:
                    state = _ALMOST_DONE
                elif ch == LF:
                    state = _HEADERS
                    break
                else:
                    self._fail()
                    return
            elif state == _ALMOST_DONE:
                if ch != LF:
                    self._fail()
                    return
                pos += 1
                state = _HEADERS
                break
        self._state = state
        if state == _HEADERS:
            line_end = pos
            if buf[pos - 2 : pos] != b"\r\n":
                self._crlf_only = False
            if not self._check_room(line_end, complete=True):
                return
            self._line_start = pos
            if self._major == 0:
                # HTTP/0.9 has no headers; nginx accepts only GET.
                self._pos = pos
                self._state = state
                if bytes(buf[self._start : marks[0]]) != b"GET":
                    self.result = Invalid(Problem.MALFORMED, http09=True)
                    return
                self._finish(pos)
                return
        self._pos = pos
        self._state = state

    # --- header lines, a whole line at a time -----------------------------------------

    def _header_lines(self) -> None:
        buf = self.buffer
        while True:
            # Bytes before _scan are known to hold no LF: never search them twice.
            end = buf.find(b"\n", max(self._pos, self._scan))
            if end < 0:
                self._partial_line()
                return
            self._scan, self._in_value = end + 1, False
            line_end = end + 1
            if not self._check_room(line_end, complete=True):
                return
            line = bytes(buf[self._pos : end])
            self._pos = self._line_start = line_end
            if line.endswith(b"\r"):
                line = line[:-1]
            else:
                self._crlf_only = False
            if not line:
                self._finish(line_end)
                return
            if not self._header(line):
                self._fail()
                return

    def _partial_line(self) -> None:
        """Refuse an unfinished header line as soon as nginx would (each byte seen once).

        nginx checks header bytes as they arrive: a space or control byte in a name, a
        NUL anywhere, or a CR not followed by LF is a 400 at once, not at the line's end.
        """
        buf = self.buffer
        pos = max(self._scan, self._pos)
        n = len(buf)
        while pos < n:
            stop = (_VALUE_STOP if self._in_value else _NAME_STOP).search(buf, pos)
            if stop is None:
                pos = n
                break
            at = stop.start()
            ch = buf[at]
            if ch == ord(":") and not self._in_value:
                self._in_value = True
                pos = at + 1
            elif ch == CR and at + 1 == n:
                pos = at  # the LF may follow
                break
            else:
                self._fail()
                return
        self._scan = pos

    def _header(self, line: bytes) -> bool:
        """Take one header line; False when nginx would answer 400."""
        if b"\r" in line or b"\x00" in line:
            return False
        stop = _NAME_STOP.search(line)
        name_end = len(line) if stop is None else stop.start()
        if name_end == 0 or (stop is not None and line[name_end] != ord(":")):
            # White space or a control byte in (or before) the name.
            return False
        name = line[:name_end]
        value = line[name_end + 1 :].strip(b" ") if stop is not None else b""
        if _HEADER_NAME.fullmatch(name) is None:
            self._ignored = True  # "_", "@" ...: nginx ignores the line
            return True
        self._headers.append((name.decode("ascii"), value.decode("latin-1")))
        return True

    def _finish(self, consumed: int) -> None:
        buf = self.buffer
        marks = self._marks
        method = bytes(buf[self._start : marks[0]]).decode("ascii")
        target = bytes(buf[marks[1] : marks[2]]).decode("latin-1")
        version = "0.9" if self._major == 0 else "1.0" if self._minor == 0 else "1.1"
        head = RequestHead(
            method,
            target,
            version,
            tuple(self._headers),
            strict=self._crlf_only and not self._ignored and self._start == 0,
        )
        self.result = Complete(head, consumed)


def scan_request_head(buf: bytes) -> ScanResult:
    """Parse ``buf`` as the start of a connection (one shot; see HeadParser)."""
    return HeadParser().feed(buf)


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
