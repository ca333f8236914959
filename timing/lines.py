"""Sans-I/O line splitter shared by the serial dialects.

Bytes and the local time they arrived go in; complete lines come out, each stamped with
the arrival time of the chunk that held its first byte (the best a serial reader knows
about when a device started talking). A line longer than the limit is dropped up to its
end of line and reported once, so a babbling device cannot grow memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from timing.constants import MAX_LINE


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
