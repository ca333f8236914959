"""Sans-I/O line splitter shared by the serial dialects.

Bytes and the local time they arrived go in; complete lines come out, each stamped with
the arrival time of the chunk that held its first byte (the best a serial reader knows
about when a device started talking). A line longer than the limit is dropped up to its
end of line and reported once, so a babbling device cannot grow memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

from timing.constants import MAX_LINE, REASON_TOO_LONG, REASON_UNEXPECTED

Q = TypeVar("Q")  # a dialect's query
E = TypeVar("E")  # a dialect's event


@dataclass(frozen=True, slots=True)
class Line:
    """One line without its terminator; ``received`` is the local time of its first byte."""

    data: bytes
    received: float


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line exceeded the limit and was discarded up to its end of line."""

    received: float


class LineSplitter:
    """Splits a byte stream on CR and/or LF. Empty lines (from CRLF pairs) are skipped."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._started: float | None = None
        self._discarding = False

    def feed(self, data: bytes, now: float) -> list[Line | Overlong]:
        out: list[Line | Overlong] = []
        start = 0
        n = len(data)
        while start < n:
            # find the next terminator (either CR or LF)
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            end = min(ends) if ends else -1
            chunk = data[start:] if end < 0 else data[start:end]
            if chunk and self._started is None and not self._discarding:
                self._started = now
            if not self._discarding:
                if len(self._buf) + len(chunk) > self._max:
                    out.append(Overlong(self._started if self._started is not None else now))
                    self._buf.clear()
                    self._started = None
                    self._discarding = True
                else:
                    self._buf += chunk
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buf:
                assert self._started is not None
                out.append(Line(bytes(self._buf), self._started))
                self._buf.clear()
                self._started = None
            start = end + 1
        return out

    def pending(self) -> int:
        """Bytes held for an unfinished line."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial line (after a reconnect)."""
        self._buf.clear()
        self._started = None
        self._discarding = False


class QueryClient(ABC, Generic[Q, E]):
    """One outstanding query at a time over a line-oriented serial dialect (sans-I/O).

    ``request`` gives the bytes to write; ``feed`` the events for the lines that came
    back, each reply matched to the query in flight; ``expire`` a time-out event once a
    reply is overdue. A line nobody asked for, or one too long, becomes a rejection.
    A dialect supplies how a query is written and what its events are.
    """

    def __init__(self, reply_timeout: float, max_reply: int) -> None:
        self._timeout = reply_timeout
        self._lines = LineSplitter(max_reply)
        self._pending: tuple[Q, float] | None = None

    # -- what a dialect provides ------------------------------------------------------
    @abstractmethod
    def _encode(self, query: Q) -> bytes: ...

    @abstractmethod
    def _busy_error(self) -> Exception: ...

    @abstractmethod
    def _reply(self, query: Q, sent: float, line: Line) -> E: ...

    @abstractmethod
    def _rejected(self, reason: str, query: Q | None) -> E: ...

    @abstractmethod
    def _timed_out(self, query: Q) -> E: ...

    # -- the state machine ------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._pending is not None

    def request(self, query: Q, now: float) -> bytes:
        """Bytes to write for ``query``; raises the dialect's error if one is in flight."""
        if self._pending is not None:
            raise self._busy_error()
        self._pending = (query, now)
        return self._encode(query)

    def feed(self, data: bytes, now: float) -> list[E]:
        out: list[E] = []
        for item in self._lines.feed(data, now):
            pending, self._pending = self._pending, None
            if isinstance(item, Overlong):
                out.append(self._rejected(REASON_TOO_LONG, pending[0] if pending else None))
            elif pending is None:
                out.append(self._rejected(REASON_UNEXPECTED, None))
            else:
                out.append(self._reply(pending[0], pending[1], item))
        return out

    def expire(self, now: float) -> list[E]:
        if self._pending is not None and now - self._pending[1] > self._timeout:
            query = self._pending[0]
            self._pending = None
            self._lines.reset()
            return [self._timed_out(query)]
        return []

    def reset(self) -> None:
        self._pending = None
        self._lines.reset()
