"""Sans-I/O codec for the SRS PRS10 rubidium standard's two-letter RS-232 dialect.

Commands are two letters, an optional ``?`` or value, and CR. We use:

======== ============================= =========================================================
command  reply                         meaning
======== ============================= =========================================================
``ID?``  ``PRS10_<fw>_SN_<serial>``    identity
``ST?``  six decimals ``s1,...,s6``    status bytes ST1..ST6 (bits below)
``LO?``  ``0`` or ``1``                frequency lock loop locked to the rubidium line
``TT?``  signed integer, ns            time tag: the unit's 1 PPS output against its 1 PPS
                                       input (e.g. from GPS); what the PLL steers to zero
======== ============================= =========================================================

Status bits interpreted (the rest are reported raw): ST1..ST4 non-zero means a power,
lamp/RF or temperature problem or the frequency lock loop is off, so the unit is not fit
to give time; ST5 bit 2 (0x04) means its phase-lock loop to the 1 PPS input is active.
The PRS10 has no time-of-day: it is a frequency and phase standard whose 1 PPS output is
captured by a PPS adapter, so this dialect feeds lock state and phase, not time labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from timing.constants import (
    PRS10_REPLY_TIMEOUT,
    REASON_BAD_FIELD,
    REASON_EMPTY,
    REASON_FIELD_COUNT,
    REASON_NOT_ASCII,
    REASON_TOO_LONG,
    REASON_UNEXPECTED,
)
from timing.errors import Prs10Error
from timing.lines import Line, QueryClient

MAX_REPLY = 64
ST5_PLL_ACTIVE = 0x04
MAX_TIME_TAG_NS = 1_000_000_000


class Command(Enum):
    ID = "ID"
    ST = "ST"
    LO = "LO"
    TT = "TT"


@dataclass(frozen=True, slots=True)
class Identity:
    firmware: str
    serial: str


@dataclass(frozen=True, slots=True)
class StatusBytes:
    values: tuple[int, int, int, int, int, int]

    @property
    def healthy(self) -> bool:
        return not any(self.values[:4])

    @property
    def pps_locked(self) -> bool:
        return bool(self.values[4] & ST5_PLL_ACTIVE)


@dataclass(frozen=True, slots=True)
class LockLoop:
    locked: bool


@dataclass(frozen=True, slots=True)
class TimeTag:
    """Time of the unit's 1 PPS output minus its 1 PPS input, in seconds."""

    seconds: float
    received: float


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    command: Command | None


@dataclass(frozen=True, slots=True)
class TimedOut:
    command: Command


Reply = Identity | StatusBytes | LockLoop | TimeTag
Event = Reply | Rejected | TimedOut


def _text(line: bytes) -> str:
    line = line.strip()
    if not line:
        raise Prs10Error(REASON_EMPTY)
    if len(line) > MAX_REPLY:
        raise Prs10Error(REASON_TOO_LONG)
    if any(b < 0x20 or b > 0x7E for b in line):
        raise Prs10Error(REASON_NOT_ASCII)
    return line.decode("ascii")


def parse_reply(command: Command, line: bytes, received: float = 0.0) -> Reply:
    text = _text(line)
    if command is Command.ID:
        parts = text.split("_")
        if len(parts) != 4 or parts[0] != "PRS10" or parts[2] != "SN" or not parts[3]:
            raise Prs10Error(REASON_BAD_FIELD, "ID")
        return Identity(parts[1], parts[3])
    if command is Command.ST:
        parts = text.split(",")
        if len(parts) != 6:
            raise Prs10Error(REASON_FIELD_COUNT, "ST")
        values = []
        for p in parts:
            if not p.isdigit() or int(p) > 255:
                raise Prs10Error(REASON_BAD_FIELD, "ST")
            values.append(int(p))
        a, b, c, d, e, f = values
        return StatusBytes((a, b, c, d, e, f))
    if command is Command.LO:
        if text not in ("0", "1"):
            raise Prs10Error(REASON_BAD_FIELD, "LO")
        return LockLoop(text == "1")
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isdigit() or abs(int(text)) >= MAX_TIME_TAG_NS:
        raise Prs10Error(REASON_BAD_FIELD, "TT")
    return TimeTag(int(text) * 1e-9, received)


def parse_command(line: bytes) -> tuple[Command, str | None]:
    """Device side: ``(command, None)`` for a query, ``(command, value)`` for a set."""
    text = _text(line).upper()
    head, rest = text[:2], text[2:].strip()
    try:
        command = Command(head)
    except ValueError as exc:
        raise Prs10Error(REASON_UNEXPECTED, "unknown command") from exc
    if rest == "?":
        return command, None
    if command is Command.LO and rest in ("0", "1"):
        return command, rest
    raise Prs10Error(REASON_UNEXPECTED, "unsupported form")


def encode_identity(identity: Identity) -> bytes:
    return f"PRS10_{identity.firmware}_SN_{identity.serial}\r".encode()


def encode_status(values: tuple[int, int, int, int, int, int]) -> bytes:
    return (",".join(str(v) for v in values) + "\r").encode()


def encode_lock(locked: bool) -> bytes:
    return b"1\r" if locked else b"0\r"


def encode_time_tag(seconds: float) -> bytes:
    return f"{round(seconds * 1e9)}\r".encode()


class Prs10Client(QueryClient[Command, Event]):
    """One outstanding query at a time, replies matched in order."""

    def __init__(self, reply_timeout: float = PRS10_REPLY_TIMEOUT) -> None:
        super().__init__(reply_timeout, MAX_REPLY)

    def _encode(self, command: Command) -> bytes:
        return command.value.encode() + b"?\r"

    def _busy_error(self) -> Exception:
        return Prs10Error(REASON_UNEXPECTED, "query outstanding")

    def _reply(self, command: Command, sent: float, line: Line) -> Event:
        try:
            return parse_reply(command, line.data, line.received)
        except Prs10Error as exc:
            return Rejected(exc.reason, command)

    def _rejected(self, reason: str, command: Command | None) -> Event:
        return Rejected(reason, command)

    def _timed_out(self, command: Command) -> Event:
        return TimedOut(command)
