"""Sans-I/O NMEA 0183 codec for the time-bearing sentences of a GPS receiver or GPSDO.

``parse(line)`` takes one sentence (with or without CR/LF) and returns a :class:`Zda`,
:class:`Rmc`, :class:`Gga` or, for any other well-formed sentence, a :class:`Sentence`.
A bad line raises :class:`~timing.errors.NmeaError` whose ``reason`` is one of the
``REASON_*`` codes. Receivers send sentences with blank fields before they have a fix
(``$GPRMC,,V,,,,,,,,,,N*53``); those parse, with ``None`` for what is not known.

``encode`` builds sentences (used by the simulator and the round-trip tests).
:class:`NmeaTimeTracker` groups the sentences of one second into a :class:`GnssTime`.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass

from timing.constants import (
    NMEA_BURST_GAP,
    NMEA_MAX_SENTENCE,
    REASON_BAD_ADDRESS,
    REASON_BAD_CHECKSUM,
    REASON_BAD_FIELD,
    REASON_EMPTY,
    REASON_FIELD_COUNT,
    REASON_NO_CHECKSUM,
    REASON_NO_START,
    REASON_NOT_ASCII,
    REASON_TOO_LONG,
)
from timing.errors import NmeaError

_SECONDS_PER_DAY = 86400


@dataclass(frozen=True, slots=True)
class Sentence:
    """A well-formed sentence of a type this module does not interpret."""

    talker: str
    kind: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Zda:
    """``$--ZDA``: UTC time and date. ``utc`` is POSIX seconds, None before a fix."""

    talker: str
    utc: float | None
    zone_minutes: int | None


@dataclass(frozen=True, slots=True)
class Rmc:
    """``$--RMC``: ``valid`` is the status flag ('A' valid, 'V' receiver warning)."""

    talker: str
    utc: float | None
    valid: bool
    mode: str | None


@dataclass(frozen=True, slots=True)
class Gga:
    """``$--GGA``: time of day (no date) and fix quality (0 = no fix)."""

    talker: str
    seconds_of_day: float | None
    fix_quality: int
    satellites: int | None


Parsed = Zda | Rmc | Gga | Sentence


def checksum(body: bytes) -> int:
    """XOR of every byte between '$' and '*'."""
    value = 0
    for b in body:
        value ^= b
    return value


def encode(talker: str, kind: str, fields: Sequence[str]) -> bytes:
    """Build ``$<talker><kind>,<fields>*HH\\r\\n``."""
    body = (talker + kind + "," + ",".join(fields)).encode("ascii")
    return b"$" + body + b"*" + f"{checksum(body):02X}".encode() + b"\r\n"


def split(line: bytes) -> Sentence:
    """Check framing and checksum and split into address and fields."""
    line = line.rstrip(b"\r\n")
    if not line:
        raise NmeaError(REASON_EMPTY)
    if len(line) + 2 > NMEA_MAX_SENTENCE:
        raise NmeaError(REASON_TOO_LONG, f"{len(line)} bytes")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise NmeaError(REASON_NOT_ASCII)
    if line[:1] != b"$":
        raise NmeaError(REASON_NO_START)
    star = line.rfind(b"*")
    if star < 0 or len(line) - star != 3:
        raise NmeaError(REASON_NO_CHECKSUM)
    body = line[1:star]
    try:
        given = int(line[star + 1 :], 16)
    except ValueError as exc:
        raise NmeaError(REASON_BAD_CHECKSUM, "not hex") from exc
    if given != checksum(body):
        raise NmeaError(REASON_BAD_CHECKSUM)
    if b"*" in body or b"$" in body:
        raise NmeaError(REASON_BAD_FIELD, "reserved character")
    parts = body.decode("ascii").split(",")
    address = parts[0]
    if len(address) != 5 or not address.isalnum() or not address.isupper():
        # proprietary sentences ($P...) have other address shapes; we do not use them
        if not (address.startswith("P") and 2 <= len(address) <= 8 and address.isalnum()):
            raise NmeaError(REASON_BAD_ADDRESS, address[:10])
        return Sentence("P", address[1:], tuple(parts[1:]))
    return Sentence(address[:2], address[2:], tuple(parts[1:]))


def parse(line: bytes) -> Parsed:
    """Parse one sentence; raise NmeaError with a reason for a bad one."""
    s = split(line)
    if s.kind == "ZDA":
        return _zda(s)
    if s.kind == "RMC":
        return _rmc(s)
    if s.kind == "GGA":
        return _gga(s)
    return s


def _int(text: str, lo: int, hi: int, what: str) -> int:
    if not text.isdigit():
        raise NmeaError(REASON_BAD_FIELD, what)
    value = int(text)
    if not lo <= value <= hi:
        raise NmeaError(REASON_BAD_FIELD, what)
    return value


def parse_time_of_day(text: str) -> float:
    """``hhmmss[.sss]`` to seconds of the day; 60 is allowed for a leap second."""
    head, dot, frac = text.partition(".")
    if len(head) != 6 or (dot and (not frac or not frac.isdigit())):
        raise NmeaError(REASON_BAD_FIELD, "time")
    hh = _int(head[0:2], 0, 23, "hour")
    mm = _int(head[2:4], 0, 59, "minute")
    ss = _int(head[4:6], 0, 60, "second")
    fraction = int(frac) / 10 ** len(frac) if frac else 0.0
    return hh * 3600 + mm * 60 + ss + fraction


def _days(year: int, month: int, day: int) -> int:
    if day > calendar.monthrange(year, month)[1]:
        raise NmeaError(REASON_BAD_FIELD, "day")
    return calendar.timegm((year, month, day, 0, 0, 0)) // _SECONDS_PER_DAY


def _zda(s: Sentence) -> Zda:
    if len(s.fields) != 6:
        raise NmeaError(REASON_FIELD_COUNT, f"ZDA has {len(s.fields)}")
    tod, dd, mo, yyyy, zh, zm = s.fields
    zone = None
    if zh or zm:
        hours = _signed(zh, 13, "zone hours")
        minutes = _int(zm or "0", 0, 59, "zone minutes")
        zone = hours * 60 + (minutes if hours >= 0 else -minutes)
    if not (tod or dd or mo or yyyy):
        return Zda(s.talker, None, zone)
    if not (tod and dd and mo and yyyy) or len(yyyy) != 4:
        raise NmeaError(REASON_BAD_FIELD, "ZDA date/time incomplete")
    seconds = parse_time_of_day(tod)
    days = _days(_int(yyyy, 1980, 9999, "year"), _int(mo, 1, 12, "month"), _int(dd, 1, 31, "day"))
    return Zda(s.talker, days * _SECONDS_PER_DAY + seconds, zone)


def _signed(text: str, limit: int, what: str) -> int:
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    return sign * _int(digits, 0, limit, what)


def _rmc(s: Sentence) -> Rmc:
    if len(s.fields) not in (11, 12, 13):
        raise NmeaError(REASON_FIELD_COUNT, f"RMC has {len(s.fields)}")
    tod, status, date = s.fields[0], s.fields[1], s.fields[8]
    if status not in ("A", "V"):
        raise NmeaError(REASON_BAD_FIELD, "status")
    mode = s.fields[11] if len(s.fields) >= 12 and s.fields[11] else None
    if mode is not None and mode not in "ADEFMNPRS":
        raise NmeaError(REASON_BAD_FIELD, "mode")
    # mode 'N' (data not valid) overrides a stray 'A' status, as NMEA 2.3 says
    valid = status == "A" and mode not in ("N", "E", "S", "M")
    if not tod and not date:
        return Rmc(s.talker, None, False, mode)
    if not tod or len(date) != 6:
        raise NmeaError(REASON_BAD_FIELD, "RMC date/time incomplete")
    seconds = parse_time_of_day(tod)
    yy = _int(date[4:6], 0, 99, "year")
    year = 1900 + yy if yy >= 80 else 2000 + yy
    days = _days(year, _int(date[2:4], 1, 12, "month"), _int(date[0:2], 1, 31, "day"))
    return Rmc(s.talker, days * _SECONDS_PER_DAY + seconds, valid, mode)


def _gga(s: Sentence) -> Gga:
    if len(s.fields) != 14:
        raise NmeaError(REASON_FIELD_COUNT, f"GGA has {len(s.fields)}")
    tod, quality, sats = s.fields[0], s.fields[5], s.fields[6]
    seconds = parse_time_of_day(tod) if tod else None
    q = _int(quality, 0, 9, "fix quality") if quality else 0
    n = _int(sats, 0, 99, "satellites") if sats else None
    return Gga(s.talker, seconds, q, n)


# --- encoders for the three sentences (the simulator speaks through these) ---------------


def _tod(utc: float) -> str:
    seconds = utc % _SECONDS_PER_DAY
    whole = int(seconds)
    hundredths = round((seconds - whole) * 100)
    if hundredths == 100:  # rounding carried into the next second
        whole, hundredths = whole + 1, 0
    return f"{whole // 3600:02d}{whole // 60 % 60:02d}{whole % 60:02d}.{hundredths:02d}"


def encode_zda(utc: float | None, talker: str = "GP") -> bytes:
    if utc is None:
        return encode(talker, "ZDA", ["", "", "", "", "", ""])
    y, m, d = _ymd(utc)
    return encode(talker, "ZDA", [_tod(utc), f"{d:02d}", f"{m:02d}", f"{y:04d}", "00", "00"])


def encode_rmc(utc: float | None, valid: bool, talker: str = "GP") -> bytes:
    if utc is None:
        return encode(talker, "RMC", ["", "V", "", "", "", "", "", "", "", "", "", "N"])
    y, m, d = _ymd(utc)
    position = ["4807.038", "N", "01131.000", "E", "0.0", "0.0"] if valid else [""] * 6
    fields = [_tod(utc), "A" if valid else "V", *position, f"{d:02d}{m:02d}{y % 100:02d}"]
    return encode(talker, "RMC", [*fields, "", "", "A" if valid else "N"])


def encode_gga(utc: float | None, quality: int, satellites: int, talker: str = "GP") -> bytes:
    if utc is None or quality == 0:
        tod = _tod(utc) if utc is not None else ""
        fields = [tod, "", "", "", "", "0", "00", "99.99", "", "", "", "", "", ""]
        return encode(talker, "GGA", fields)
    fields = [_tod(utc), "4807.038", "N", "01131.000", "E", str(quality), f"{satellites:02d}"]
    return encode(talker, "GGA", [*fields, "0.9", "545.4", "M", "46.9", "M", "", ""])


def _ymd(utc: float) -> tuple[int, int, int]:
    t = time.gmtime(int(utc))  # pure conversion, no clock is read
    return t.tm_year, t.tm_mon, t.tm_mday


# --- grouping the sentences of one second --------------------------------------------------


@dataclass(frozen=True, slots=True)
class GnssTime:
    """The receiver's statement about one second.

    ``label`` is the UTC second (POSIX) the burst describes; ``received`` the local time
    its first sentence arrived. ``valid`` needs a positive fix indication: RMC status 'A'
    or GGA quality > 0, and no RMC saying 'V' for the same second (ZDA alone is not
    enough: receivers send it from their battery clock before a fix).
    """

    label: float
    received: float
    valid: bool
    fix_quality: int
    satellites: int | None


class NmeaTimeTracker:
    """Groups parsed sentences by the second they describe.

    ``feed(parsed, received)`` returns the previous second's :class:`GnssTime` when a
    sentence for a new second arrives; ``poll(now)`` returns the current one once the
    burst has been quiet for ``NMEA_BURST_GAP`` so a sample is not held for a whole second.
    """

    def __init__(self, burst_gap: float = NMEA_BURST_GAP) -> None:
        self._gap = burst_gap
        self._reset()
        self._last_seen = 0.0
        self._date_days: int | None = None

    def _reset(self) -> None:
        self._tod: float | None = None
        self._utc: float | None = None
        self._first: float = 0.0
        self._rmc: bool | None = None
        self._quality = 0
        self._gga = False
        self._sats: int | None = None

    def feed(self, parsed: Parsed, received: float) -> list[GnssTime]:
        out: list[GnssTime] = []
        tod: float | None
        if isinstance(parsed, Zda | Rmc):
            tod = None if parsed.utc is None else parsed.utc % _SECONDS_PER_DAY
            if parsed.utc is not None:
                self._date_days = int(parsed.utc // _SECONDS_PER_DAY)
        elif isinstance(parsed, Gga):
            tod = parsed.seconds_of_day
        else:
            return out
        if tod is None:
            # a sentence without time (no fix yet): closes the current second
            done = self._finish()
            if done is not None:
                out.append(done)
            return out
        if self._tod is not None and abs(tod - self._tod) > 1e-3:
            done = self._finish()
            if done is not None:
                out.append(done)
        if self._tod is None:
            self._tod = tod
            self._first = received
        else:
            self._first = min(self._first, received)
        self._last_seen = received
        if isinstance(parsed, Zda | Rmc) and parsed.utc is not None:
            self._utc = parsed.utc
        if isinstance(parsed, Rmc):
            self._rmc = parsed.valid and (self._rmc is not False)
        if isinstance(parsed, Gga):
            self._gga = True
            self._quality = parsed.fix_quality
            self._sats = parsed.satellites
        return out

    def poll(self, now: float) -> list[GnssTime]:
        if self._tod is not None and now - self._last_seen >= self._gap:
            done = self._finish()
            return [done] if done is not None else []
        return []

    def _finish(self) -> GnssTime | None:
        tod, utc = self._tod, self._utc
        if tod is None:
            self._reset()
            return None
        if utc is None:
            if self._date_days is None:
                self._reset()
                return None  # GGA alone: no date known yet
            utc = self._date_days * _SECONDS_PER_DAY + tod
        fix_ok = self._rmc is True or (self._rmc is None and self._gga and self._quality > 0)
        if self._gga and self._quality == 0:
            fix_ok = False
        out = GnssTime(utc, self._first, fix_ok, self._quality, self._sats)
        self._reset()
        return out
