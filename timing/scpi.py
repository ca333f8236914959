"""Sans-I/O codec for the SCPI-style dialect of rubidium and cesium standards.

The dialect (documented here because vendors differ; the simulator speaks exactly this):

============== ======================================= ===================================
query          reply                                   meaning
============== ======================================= ===================================
``*IDN?``      ``maker,model,serial,firmware``         identity
``SYST:TIME?`` ``hh,mm,ss.ffffff``                     UTC time of day when the reply left
``SYST:DATE?`` ``yyyy,mm,dd``                          UTC date
``SYNC:LOCK?`` ``0`` or ``1``                          oscillator locked to its reference
``SYST:STAT?`` decimal status word (bits below)        health
============== ======================================= ===================================

Status word bits: 1 warming up, 2 no reference, 4 holdover, 8 hardware fault.
Long forms (``SYSTem:TIME?``) and lower case are accepted on the command side. Lines end
with LF (CR LF accepted). The client keeps one query outstanding at a time and stamps the
moment it was sent and the moment its reply arrived, so the time offset can be taken at the
midpoint with half the round trip as uncertainty (the way NTP does).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from timing.constants import (
    REASON_BAD_FIELD,
    REASON_EMPTY,
    REASON_FIELD_COUNT,
    REASON_NOT_ASCII,
    REASON_TOO_LONG,
    REASON_UNEXPECTED,
    SCPI_REPLY_TIMEOUT,
)
from timing.errors import ScpiError
from timing.lines import Line, QueryClient

MAX_REPLY = 128
_SECONDS_PER_DAY = 86400

STATUS_WARMUP = 1
STATUS_NO_REFERENCE = 2
STATUS_HOLDOVER = 4
STATUS_FAULT = 8


class Query(Enum):
    IDN = "*IDN?"
    TIME = "SYST:TIME?"
    DATE = "SYST:DATE?"
    LOCK = "SYNC:LOCK?"
    STATUS = "SYST:STAT?"


@dataclass(frozen=True, slots=True)
class Identity:
    manufacturer: str
    model: str
    serial: str
    firmware: str


@dataclass(frozen=True, slots=True)
class TimeOfDay:
    """Time of day the device reported; ``sent``/``received`` bracket the exchange."""

    seconds_of_day: float
    sent: float
    received: float


@dataclass(frozen=True, slots=True)
class Date:
    year: int
    month: int
    day: int


@dataclass(frozen=True, slots=True)
class Lock:
    locked: bool


@dataclass(frozen=True, slots=True)
class Status:
    word: int

    @property
    def healthy(self) -> bool:
        return self.word & (STATUS_WARMUP | STATUS_NO_REFERENCE | STATUS_FAULT) == 0


@dataclass(frozen=True, slots=True)
class Rejected:
    """A reply line was rejected; ``reason`` is a stable code."""

    reason: str
    query: Query | None


@dataclass(frozen=True, slots=True)
class TimedOut:
    query: Query


Reply = Identity | TimeOfDay | Date | Lock | Status
Event = Reply | Rejected | TimedOut


# --- reply parsing (client side) ----------------------------------------------------------


def _text(line: bytes) -> str:
    line = line.rstrip(b"\r\n").strip()
    if not line:
        raise ScpiError(REASON_EMPTY)
    if len(line) > MAX_REPLY:
        raise ScpiError(REASON_TOO_LONG)
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ScpiError(REASON_NOT_ASCII)
    return line.decode("ascii")


def _number(text: str, lo: int, hi: int, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ScpiError(REASON_BAD_FIELD, what)
    return int(text)


def parse_reply(query: Query, line: bytes) -> Reply:
    """Parse the reply to ``query`` (times are filled in by :class:`ScpiClient`)."""
    text = _text(line)
    if query is Query.IDN:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4 or not all(parts[:2]):
            raise ScpiError(REASON_FIELD_COUNT, "IDN")
        return Identity(*parts)
    if query is Query.TIME:
        return TimeOfDay(parse_time_of_day(text), 0.0, 0.0)
    if query is Query.DATE:
        parts = text.split(",")
        if len(parts) != 3:
            raise ScpiError(REASON_FIELD_COUNT, "DATE")
        return Date(
            _number(parts[0], 1980, 9999, "year"),
            _number(parts[1], 1, 12, "month"),
            _number(parts[2], 1, 31, "day"),
        )
    if query is Query.LOCK:
        if text not in ("0", "1"):
            raise ScpiError(REASON_BAD_FIELD, "LOCK")
        return Lock(text == "1")
    return Status(_number(text, 0, 65535, "STAT"))


def parse_time_of_day(text: str) -> float:
    parts = text.split(",")
    if len(parts) != 3:
        raise ScpiError(REASON_FIELD_COUNT, "TIME")
    hh = _number(parts[0], 0, 23, "hour")
    mm = _number(parts[1], 0, 59, "minute")
    whole, dot, frac = parts[2].strip().partition(".")
    ss = _number(whole, 0, 60, "second")
    if dot and (not frac.isdigit() or len(frac) > 9):
        raise ScpiError(REASON_BAD_FIELD, "second")
    return hh * 3600 + mm * 60 + ss + (int(frac) / 10 ** len(frac) if frac else 0.0)


def resolve_day(seconds_of_day: float, near: float) -> float:
    """POSIX time with this time of day that lies nearest ``near`` (a rough clock)."""
    day = (near - seconds_of_day) / _SECONDS_PER_DAY
    return round(day) * _SECONDS_PER_DAY + seconds_of_day


# --- replies (device side; the simulator speaks through these) -----------------------------


def encode_time(utc: float) -> bytes:
    s = utc % _SECONDS_PER_DAY
    whole = int(s)
    micros = round((s - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = (whole + 1) % _SECONDS_PER_DAY, 0
    return f"{whole // 3600:02d},{whole // 60 % 60:02d},{whole % 60:02d}.{micros:06d}\n".encode()


def encode_identity(identity: Identity) -> bytes:
    i = identity
    return f"{i.manufacturer},{i.model},{i.serial},{i.firmware}\n".encode()


def encode_date(year: int, month: int, day: int) -> bytes:
    return f"{year:04d},{month:02d},{day:02d}\n".encode()


def encode_lock(locked: bool) -> bytes:
    return b"1\n" if locked else b"0\n"


def encode_status(word: int) -> bytes:
    return f"{word}\n".encode()


# --- commands (device side) ----------------------------------------------------------------

_SHORT = {
    "SYSTEM": "SYST",
    "SYST": "SYST",
    "TIME": "TIME",
    "DATE": "DATE",
    "SYNCHRONIZATION": "SYNC",
    "SYNC": "SYNC",
    "LOCK": "LOCK",
    "STATUS": "STAT",
    "STAT": "STAT",
}


def parse_command(line: bytes) -> Query:
    """Map a command line to the query it asks; raise ScpiError for anything else."""
    text = _text(line).upper().lstrip(":")
    if text == "*IDN?":
        return Query.IDN
    if not text.endswith("?"):
        raise ScpiError(REASON_UNEXPECTED, "not a query")
    parts = text[:-1].split(":")
    short = []
    for p in parts:
        if p not in _SHORT:
            raise ScpiError(REASON_UNEXPECTED, "unknown header")
        short.append(_SHORT[p])
    header = ":".join(short) + "?"
    for q in Query:
        if q.value == header:
            return q
    raise ScpiError(REASON_UNEXPECTED, "unknown header")


# --- the client state machine --------------------------------------------------------------


class ScpiClient(QueryClient[Query, Event]):
    """One outstanding query at a time; bytes out from :meth:`request`, events from :meth:`feed`."""

    def __init__(self, reply_timeout: float = SCPI_REPLY_TIMEOUT) -> None:
        super().__init__(reply_timeout, MAX_REPLY)

    def _encode(self, query: Query) -> bytes:
        return query.value.encode() + b"\n"

    def _busy_error(self) -> Exception:
        return ScpiError(REASON_UNEXPECTED, "query outstanding")

    def _reply(self, query: Query, sent: float, line: Line) -> Event:
        try:
            reply = parse_reply(query, line.data)
        except ScpiError as exc:
            return Rejected(exc.reason, query)
        if isinstance(reply, TimeOfDay):
            return TimeOfDay(reply.seconds_of_day, sent, line.received)
        return reply

    def _rejected(self, reason: str, query: Query | None) -> Event:
        return Rejected(reason, query)

    def _timed_out(self, query: Query) -> Event:
        return TimedOut(query)
