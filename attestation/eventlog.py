"""The TCG crypto-agile measured-boot event log: parse, write, replay, judge.

Format (TCG PC Client Platform Firmware Profile, little-endian): one TCG_PCR_EVENT header
(PCR 0, EV_NO_ACTION, 20-byte zero digest) whose data is the ``Spec ID Event03`` structure
listing the digest algorithms, then TCG_PCR_EVENT2 records: pcr u32, type u32, digest
count u32, (algorithm u16, digest) per bank, data size u32, data. Replay honours the
StartupLocality event for PCR 0. The kernel exposes the log at
/sys/kernel/security/tpm0/binary_bios_measurements.

The boot loader measures the kernel command line into PCR 8 as an EV_IPL event whose data
is ``kernel_cmdline: <cmdline>`` and whose digest is SHA-256 of the command line (GRUB's
convention). Only the digests are bound by the PCRs, never the data, so ``check_boot``
recomputes the digest from the data before trusting the command line it reads there.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from attestation import constants as c
from attestation.errors import EventLogError

EV_POST_CODE = 0x00000001
EV_SEPARATOR = 0x00000004
EV_S_CRTM_VERSION = 0x00000008
EV_IPL = 0x0000000D
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
CMDLINE_PREFIX = b"kernel_cmdline: "
CMDLINE_PCR = 8
_HASHES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


@dataclass(frozen=True, slots=True)
class Event:
    pcr: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # (TCG algorithm id, digest)
    data: bytes


class _LE:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EventLogError(f"event log truncated at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def event_data(self) -> bytes:
        size = self.u32()
        if size > c.MAX_EVENT_DATA:
            raise EventLogError("event data too large")
        return self.take(size)


def _spec_id(data: bytes) -> dict[int, int]:
    """Algorithm id -> digest size from the Spec ID Event03 header."""
    r = _LE(data)
    if r.take(16) != c.SPEC_ID_SIGNATURE:
        raise EventLogError("first event is not a crypto-agile Spec ID event")
    r.take(4 + 1 + 1 + 1 + 1)  # platformClass, version minor/major, errata, uintnSize
    count = r.u32()
    if not 0 < count <= c.MAX_EVENT_DIGESTS:
        raise EventLogError("bad number of algorithms in Spec ID event")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, size = r.u16(), r.u16()
        if c.EVENT_LOG_DIGEST_SIZES.get(alg, size) != size or not 0 < size <= 64:
            raise EventLogError(f"bad digest size for algorithm {alg:#06x}")
        sizes[alg] = size
    r.take(r.u8())  # vendorInfo
    if r.pos != len(data):
        raise EventLogError("trailing bytes in the Spec ID event")
    return sizes


def parse(data: bytes) -> tuple[Event, ...]:
    """Parse a crypto-agile TCG event log; raises EventLogError on anything malformed."""
    if len(data) > c.MAX_EVENT_LOG_SIZE:
        raise EventLogError("event log too large")
    r = _LE(data)
    pcr, event_type = r.u32(), r.u32()
    r.take(20)  # SHA-1 digest field of the legacy header event
    header = r.event_data()
    if pcr != 0 or event_type != c.EV_NO_ACTION:
        raise EventLogError("event log does not start with a Spec ID event")
    sizes = _spec_id(header)
    events = [Event(pcr, event_type, (), header)]
    while r.pos < len(data):
        if len(events) > c.MAX_EVENT_COUNT:
            raise EventLogError("event log has too many events")
        pcr, event_type = r.u32(), r.u32()
        if pcr >= c.PCR_COUNT:
            raise EventLogError(f"event for PCR {pcr}")
        count = r.u32()
        if count > c.MAX_EVENT_DIGESTS:
            raise EventLogError("too many digests in one event")
        digests = []
        for _ in range(count):
            alg = r.u16()
            if alg not in sizes:
                raise EventLogError(f"digest algorithm {alg:#06x} not declared in the header")
            digests.append((alg, r.take(sizes[alg])))
        events.append(Event(pcr, event_type, tuple(digests), r.event_data()))
    return tuple(events)


def _spec_id_event(algs: Iterable[int]) -> bytes:
    algs = tuple(algs)
    body = c.SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", 0, 0, 2, 2, 2, len(algs))
    for alg in algs:
        body += struct.pack("<HH", alg, c.EVENT_LOG_DIGEST_SIZES[alg])
    return body + b"\x00"  # no vendor info


def encode(events: Iterable[Event], algs: Iterable[int] = (c.TPM_ALG_SHA256,)) -> bytes:
    """A crypto-agile log: the Spec ID header for ``algs``, then ``events`` as given."""
    header = _spec_id_event(algs)
    out = [struct.pack("<II", 0, c.EV_NO_ACTION), bytes(20), struct.pack("<I", len(header)),
           header]  # fmt: skip
    for e in events:
        out.append(struct.pack("<III", e.pcr, e.event_type, len(e.digests)))
        out.extend(struct.pack("<H", alg) + digest for alg, digest in e.digests)
        out.append(struct.pack("<I", len(e.data)) + e.data)
    return b"".join(out)


def measured(pcr: int, event_type: int, data: bytes, measured_bytes: bytes | None = None) -> Event:
    """An event whose SHA-256 digest is of ``measured_bytes`` (default: the data itself)."""
    digest = hashlib.sha256(data if measured_bytes is None else measured_bytes).digest()
    return Event(pcr, event_type, ((c.TPM_ALG_SHA256, digest),), data)


def cmdline_event(cmdline: str) -> Event:
    """The boot loader's measurement of the kernel command line (PCR 8, EV_IPL)."""
    raw = cmdline.encode()
    return measured(CMDLINE_PCR, EV_IPL, CMDLINE_PREFIX + raw, raw)


def replay(events: tuple[Event, ...], alg: int = c.TPM_ALG_SHA256) -> dict[int, bytes]:
    """PCR values the log's events produce in one bank (only PCRs the log touches)."""
    name = _HASHES.get(alg)
    if name is None:
        raise EventLogError(f"cannot replay algorithm {alg:#06x}")
    size = hashlib.new(name).digest_size
    locality = 0
    values: dict[int, bytes] = {}
    for event in events[1:]:
        if event.event_type == c.EV_NO_ACTION:
            if event.data.startswith(c.STARTUP_LOCALITY_SIGNATURE) and len(event.data) == 17:
                locality = event.data[16]  # PCR 0 starts at 00..00 || locality
            continue
        digest = dict(event.digests).get(alg)
        if digest is None:
            raise EventLogError(f"event for PCR {event.pcr} lacks a {name} digest")
        initial = bytes(size - 1) + bytes([locality]) if event.pcr == 0 else bytes(size)
        current = values.get(event.pcr, initial)
        values[event.pcr] = hashlib.new(name, current + digest).digest()
    return values


def kernel_cmdlines(events: tuple[Event, ...]) -> tuple[list[str], list[str]]:
    """(command lines, problems): every PCR 8 command-line event whose digest matches."""
    lines: list[str] = []
    problems: list[str] = []
    for event in events[1:]:
        if event.pcr != CMDLINE_PCR or not event.data.startswith(CMDLINE_PREFIX):
            continue
        raw = event.data[len(CMDLINE_PREFIX) :]
        if dict(event.digests).get(c.TPM_ALG_SHA256) != hashlib.sha256(raw).digest():
            problems.append("kernel command line event's data does not match its digest")
            continue
        try:
            lines.append(raw.decode())
        except UnicodeDecodeError:
            problems.append("kernel command line is not UTF-8")
    return lines, problems


@dataclass(frozen=True, slots=True)
class BootPolicy:
    """Approved boot state: PCR values (SHA-256 bank, any of 0-9) and kernel parameters
    the booted command line must contain (e.g. ``ima_policy=tcb``)."""

    pcrs: tuple[tuple[int, bytes], ...]
    cmdline_requires: tuple[str, ...]


def check_boot(log: bytes, quoted: dict[int, bytes], policy: BootPolicy) -> list[str]:
    """Every reason the boot is not approved; [] if the log replays to the quoted PCRs
    0-9, the command line has every required parameter, and each PCR has its approved
    value."""
    problems: list[str] = []
    try:
        events = parse(log)
        replayed = replay(events)
    except EventLogError as exc:
        return [f"event log: {exc}"]
    for index in range(c.BOOT_AGGREGATE_PCRS):
        got = quoted.get(index)
        if got is None:
            problems.append(f"PCR {index} is not quoted")
        elif replayed.get(index, bytes(c.SHA256_SIZE)) != got:
            problems.append(f"PCR {index} does not match the event log")
    lines, line_problems = kernel_cmdlines(events)
    problems.extend(line_problems)
    if len(lines) != 1:
        problems.append(f"event log has {len(lines)} kernel command lines, expected one")
    else:
        params = set(lines[0].split())
        problems.extend(
            f"kernel command line lacks {p} (booted without IMA as approved)"
            for p in policy.cmdline_requires
            if p not in params
        )
    for index, value in policy.pcrs:
        if quoted.get(index) != value:
            problems.append(f"PCR {index} differs from the boot policy")
    return problems
