"""One connection to the built-in decoy web server (sans-I/O), behaving like a
stock Debian nginx 1.22 serving a static directory.

The driver (transport.server) feeds what the peer sends (``receive``,
``receive_eof``), pulls what to write (``data_to_send``), reports write
back-pressure (``write_blocked`` / ``write_unblocked``), and calls ``expire``
when ``deadline()`` passes. After each call it looks at ``closing``:

- ``None``: keep going;
- ``Closing.CLOSE``: write what ``data_to_send`` still gives, then close;
- ``Closing.LINGER``: write it, half-close (FIN), keep reading and discarding
  until the peer closes or the lingering timeout passes (nginx's lingering close);
- ``Closing.ABORT``: close at once, dropping unsent bytes (a timed-out client).

Like nginx: keep-alive (HTTP/1.1 unless ``Connection: close``, HTTP/1.0 only
with ``Connection: keep-alive``, at most ``keepalive_requests`` per connection);
pipelined requests answered in order, each after the previous answer is fully
handed to the socket; request bodies (Content-Length or chunked) read and
discarded, with ``100 Continue`` when asked; the timeouts ``client_header_timeout``
(from the connection's start, or from a kept-alive request's first byte),
``keepalive_timeout``, ``send_timeout`` (no write progress) and the lingering
timeouts; errors that nginx answers and closes on (400, 414, 494, 501, 505 and
any error found while reading the headers) close here too. HTTP/0.9 gets the
body alone.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote_to_bytes

from l2bridge.transport.constants import (
    DECOY_KEEPALIVE_REQUESTS,
    DECOY_LINGERING_TIME_S,
    DECOY_LINGERING_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEPALIVE_TIMEOUT_S,
    DEFAULT_SEND_TIMEOUT_S,
    MAX_DECOY_INPUT,
)
from l2bridge.transport.headers import (
    Complete,
    HeadParser,
    Invalid,
    Problem,
    RequestHead,
)
from l2bridge.transport.site import (
    CLOSING_STATUSES,
    REASONS,
    DecoyFile,
    DecoySite,
    Reply,
    Request,
    http_date,
)

__all__ = ["Closing", "DecoyConnection", "DecoyFile", "DecoySite", "DecoyTimeouts"]

# Headers nginx refuses to see twice (ngx_http_process_unique_header_line).
_UNIQUE = (
    "host",
    "content-length",
    "transfer-encoding",
    "if-modified-since",
    "if-unmodified-since",
    "if-match",
    "if-none-match",
    "if-range",
    "expect",
    "authorization",
    "content-range",
)
_HOST_BAD = re.compile(r"[\x00-\x20\x7f/]")
_PROBLEM_STATUS = {
    Problem.MALFORMED: 400,
    Problem.LINE_TOO_LONG: 414,
    Problem.HEAD_TOO_LARGE: 494,
    Problem.BAD_VERSION: 505,
}
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(;[^\r\n]*)?\r?\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class DecoyTimeouts:
    """nginx's timers; mirror the operator's nginx (defaults: Debian's)."""

    header: float = DEFAULT_HEADER_TIMEOUT_S  # client_header_timeout
    keepalive: float = DEFAULT_KEEPALIVE_TIMEOUT_S  # keepalive_timeout
    send: float = DEFAULT_SEND_TIMEOUT_S  # send_timeout
    lingering: float = DECOY_LINGERING_TIMEOUT_S  # lingering_timeout
    lingering_time: float = DECOY_LINGERING_TIME_S  # lingering_time
    keepalive_requests: int = DECOY_KEEPALIVE_REQUESTS


class Closing(Enum):
    CLOSE = "close"
    LINGER = "linger"
    ABORT = "abort"


class _HeaderError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class DecoyConnection:
    """The decoy's state for one connection. Time is passed in; nothing blocks."""

    def __init__(
        self,
        site: DecoySite,
        timeouts: DecoyTimeouts,
        started: float,
        *,
        local_host: str = "127.0.0.1",
        local_port: int = 80,
        secure: bool = False,
    ) -> None:
        self._site = site
        self._t = timeouts
        self._local = (local_host, local_port, secure)
        self._input = bytearray()
        self._parser: HeadParser | None = None
        self._out: deque[memoryview] = deque()
        self._requests = 0
        self._body_left = 0  # Content-Length bytes still to discard
        self._chunked: bytearray | None = None  # pending chunked-body bytes, when chunked
        self._chunk_left = 0  # data bytes left in the current chunk (+2 for its CRLF)
        self._after: Closing | None = None  # what to do once the answer is written
        self._eof = False
        self.closing: Closing | None = None
        # Timers (absolute times, None when not running).
        self._header_at: float | None = started + timeouts.header
        self._keepalive_at: float | None = None
        self._send_at: float | None = None
        self._linger_at: float | None = None
        self._linger_end: float | None = None

    # --- driver interface ------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        if not data or self.closing not in (None, Closing.LINGER):
            return
        if self._linger_end is not None:
            # Discarding: the body after an answer, or anything after a lingering close.
            self._linger_at = min(now + self._t.lingering, self._linger_end)
        if self.closing is Closing.LINGER:
            return
        self._input += data
        self._step(now)

    def receive_eof(self, now: float) -> None:
        """The peer will send nothing more: answer what is complete, then close."""
        self._eof = True
        if self.closing is Closing.LINGER:
            self.closing = Closing.CLOSE
        if self.closing is not None or self._out or self._after is not None:
            return  # _answer_written closes once the answer is out
        if self._body_left or self._chunked is not None:
            self.closing = Closing.CLOSE
            return
        self._step(now)
        if self.closing is None and not self._out:
            self.closing = Closing.CLOSE

    def wants_input(self) -> bool:
        """False while too much unprocessed input is buffered (pause reading)."""
        return len(self._input) <= MAX_DECOY_INPUT

    def data_to_send(self, limit: int, now: float) -> bytes:
        """Up to ``limit`` bytes to write next (b"" when nothing is due)."""
        out = bytearray()
        while self._out and len(out) < limit:
            chunk = self._out[0]
            take = limit - len(out)
            out += chunk[:take]
            if take >= len(chunk):
                self._out.popleft()
            else:
                self._out[0] = chunk[take:]
        if not self._out and out:
            self._answer_written(now)
        return bytes(out)

    def write_blocked(self, now: float) -> None:
        if self._send_at is None:
            self._send_at = now + self._t.send

    def write_unblocked(self, now: float) -> None:
        self._send_at = None

    def deadline(self) -> float | None:
        times = [
            t
            for t in (self._header_at, self._keepalive_at, self._send_at, self._linger_at)
            if t is not None
        ]
        return min(times) if times else None

    def expire(self, now: float) -> None:
        """Act on every timer that has run out by ``now``."""
        if self._send_at is not None and now >= self._send_at:
            self.closing = Closing.ABORT
            return
        for at in (self._header_at, self._keepalive_at, self._linger_at):
            if at is not None and now >= at:
                # Header, keep-alive or lingering time up: nginx closes without a word.
                self._out.clear()
                self.closing = Closing.CLOSE
                return

    # --- requests --------------------------------------------------------------------

    def _step(self, now: float) -> None:
        while self.closing is None:
            if self._body_left or self._chunked is not None:
                if not self._discard_body():
                    return
                if self._linger_end is not None and not self._out:
                    # The body was all that was left to wait for.
                    self._linger_end = self._linger_at = None
                    self._idle(now)
                continue
            if self._out or self._after is not None or not self._input:
                return
            if self._parser is None:
                self._parser = HeadParser()
                if self._header_at is None:
                    self._header_at = now + self._t.header
                self._keepalive_at = None
            data = bytes(self._input)
            self._input.clear()
            result = self._parser.feed(data)
            if isinstance(result, Invalid):
                reply = self._site.error(_PROBLEM_STATUS[result.problem])
                if result.http09:
                    reply = Reply(reply.status, (), (), reply.body)  # HTTP/0.9: no head
                self._queue_reply(reply, None, now, bare=result.http09)
                self._after = Closing.CLOSE
                return
            if not isinstance(result, Complete):
                if self._eof:
                    self.closing = Closing.CLOSE  # gone mid-request: nginx closes silently
                return
            self._input = self._parser.buffer[result.consumed :]
            self._parser = None
            self._header_at = None
            self._request(result.head, now)

    def _request(self, head: RequestHead, now: float) -> None:
        self._requests += 1
        try:
            request, body_length, chunked = self._validate(head)
        except _HeaderError as exc:
            self._queue_reply(self._site.error(exc.status, _fields(head)), head, now)
            self._after = Closing.LINGER if self._input else Closing.CLOSE
            return
        keepalive = _keepalive(head, request) and self._requests < self._t.keepalive_requests
        if head.version == "1.1" and request.headers.get("expect", "").lower() == "100-continue":
            self._out.append(memoryview(_CONTINUE))
        if body_length:
            self._body_left = body_length
        if chunked:
            self._chunked = bytearray()
            self._chunk_left = 0
        if request.method in ("CONNECT", "TRACE"):
            reply = self._site.error(405, request.headers)
            keepalive = False
        else:
            reply = self._site.answer(request)
        if reply.status in CLOSING_STATUSES:
            keepalive = False
        self._queue_reply(reply, head, now, keepalive=keepalive)
        if reply.status == 412:
            # nginx's not_modified filter finalises a 412 early: the header says
            # keep-alive, yet the connection is closed after it.
            keepalive = False
        if not keepalive:
            pending_body = self._body_left or self._chunked is not None
            self._after = Closing.LINGER if pending_body or self._input else Closing.CLOSE
        else:
            self._after = None

    def _validate(self, head: RequestHead) -> tuple[Request, int, bool]:
        """Header checks nginx makes before serving; raises _HeaderError(status)."""
        fields = _fields(head)
        for name in _UNIQUE:
            if head.count(name) > 1:
                raise _HeaderError(400)
        target = head.target
        host = ""
        if not target.startswith("/"):
            # Absolute form: the host in the target wins over the Host header.
            scheme, sep, rest = target.partition("://")
            if not sep or not scheme.isalpha():
                raise _HeaderError(400)
            authority, slash, tail = rest.partition("/")
            host = _valid_host(authority)
            target = slash + tail if slash else "/"
        if "host" in fields:
            header_host = _valid_host(fields["host"])
            host = host or header_host
        elif head.version == "1.1":
            raise _HeaderError(400)
        path, _, args = target.partition("?")
        path = _normalise(path.partition("#")[0])
        body = 0
        length = fields.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                raise _HeaderError(400)
            body = int(length)
        chunked = False
        coding = fields.get("transfer-encoding")
        if coding is not None:
            if head.version != "1.1":
                raise _HeaderError(400)
            if coding.lower() != "chunked":
                raise _HeaderError(501)
            if length is not None:
                raise _HeaderError(400)
            chunked = True
        local_host, local_port, secure = self._local
        request = Request(
            head.method, path, args, head.version, fields, host, local_host, local_port, secure
        )
        return request, body, chunked

    def _queue_reply(
        self,
        reply: Reply,
        head: RequestHead | None,
        now: float,
        *,
        keepalive: bool = False,
        bare: bool = False,
    ) -> None:
        if not bare and (head is None or head.version != "0.9"):
            lines = [f"HTTP/1.1 {reply.status} {REASONS[reply.status]}"]
            lines.append(f"Server: {self._site.server}")
            lines.append(f"Date: {http_date(now)}")
            lines += [f"{k}: {v}" for k, v in reply.before]
            lines.append("Connection: keep-alive" if keepalive else "Connection: close")
            lines += [f"{k}: {v}" for k, v in reply.after]
            self._out.append(memoryview(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")))
        if not reply.head_only and len(reply.body):
            self._out.append(memoryview(reply.body))
        if head is not None and head.version == "0.9":
            self._after = Closing.CLOSE

    def _answer_written(self, now: float) -> None:
        after = self._after
        if after is Closing.CLOSE or (after is Closing.LINGER and self._eof):
            self.closing = Closing.CLOSE
        elif after is Closing.LINGER:
            self.closing = Closing.LINGER
            self._start_lingering(now)
        elif self._eof and (self._body_left or self._chunked is not None):
            self.closing = Closing.CLOSE
        elif self._body_left or self._chunked is not None:
            # Keep-alive, but the body is still arriving: wait for it like nginx does.
            self._start_lingering(now)
        else:
            self._idle(now)
            self._step(now)

    def _start_lingering(self, now: float) -> None:
        self._linger_end = now + self._t.lingering_time
        self._linger_at = min(now + self._t.lingering, self._linger_end)
        self._input.clear()

    def _idle(self, now: float) -> None:
        if self._input:
            self._header_at = now + self._t.header  # a pipelined request
        elif self._eof:
            self.closing = Closing.CLOSE
        else:
            self._keepalive_at = now + self._t.keepalive

    def _discard_body(self) -> bool:
        """Drop request-body bytes from the input; True when the body is complete."""
        if self._body_left:
            take = min(self._body_left, len(self._input))
            del self._input[:take]
            self._body_left -= take
            return self._body_left == 0
        assert self._chunked is not None
        pending = self._chunked
        pending += self._input
        self._input.clear()
        while True:
            if self._chunk_left:
                take = min(self._chunk_left, len(pending))
                del pending[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    return False
            match = _CHUNK_LINE.match(pending)
            if match is None:
                if len(pending) > 4096 or (pending and not _could_be_chunk_line(pending)):
                    self.closing = Closing.CLOSE  # nginx: invalid chunked body
                return False
            size = int(match.group(1), 16)
            del pending[: match.end()]
            if size == 0:
                # The last chunk: trailers up to an empty line.
                end = pending.find(b"\r\n\r\n") if not pending.startswith(b"\r\n") else -2
                if end == -1:
                    return False
                self._input = pending[end + 4 :]
                self._chunked = None
                return True
            self._chunk_left = size + 2


def _could_be_chunk_line(pending: bytearray) -> bool:
    return re.fullmatch(rb"[0-9A-Fa-f]{1,15}[ \t]*(;[^\r\n]*)?\r?", pending) is not None


def _fields(head: RequestHead) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in head.headers:
        fields.setdefault(name.lower(), value)
    return fields


def _keepalive(head: RequestHead, request: Request) -> bool:
    connection = request.headers.get("connection", "").lower()
    if "close" in connection:
        return False
    if head.version == "1.0":
        return "keep-alive" in connection
    if head.version == "0.9":
        return False
    # keepalive_disable msie6: no keep-alive after an MSIE 6 POST.
    agent = request.headers.get("user-agent", "")
    return not (request.method == "POST" and re.search(r"MSIE [456]\.", agent))


def _valid_host(value: str) -> str:
    """nginx's ngx_http_validate_host: the host part, lower-cased; 400 if unusable."""
    if _HOST_BAD.search(value) or ".." in value:
        raise _HeaderError(400)
    host = value
    if host.startswith("["):
        close = host.find("]")
        host = host[: close + 1] if close > 0 else host
    else:
        host = host.split(":", 1)[0]
    host = host.removesuffix(".")
    if not host:
        raise _HeaderError(400)
    return host.lower()


def _normalise(raw: str) -> str:
    """Decode %XX and resolve "." and ".." like nginx; 400 when it cannot."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise _HeaderError(400)
    decoded = unquote_to_bytes(raw)
    if b"\x00" in decoded:
        raise _HeaderError(400)
    parts: list[bytes] = []
    segments = decoded.split(b"/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == b"..":
            if not parts:
                raise _HeaderError(400)
            parts.pop()
            if last:
                parts.append(b"")
        elif segment == b".":
            if last:
                parts.append(b"")
        elif segment or last:
            parts.append(segment)  # "//" merges (merge_slashes on)
    return "/" + b"/".join(parts).decode("latin-1") if parts else "/"
