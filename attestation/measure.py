"""What the exit measures about itself, and the TCG measured-boot event log.

The manifest lists, in this order: one entry per installed software package (SHA-256 over
the sorted relative paths and contents of its files), the configuration file, and the
nodeId. ``quote.measure`` extends each entry into the measurement PCR; a verifier replays
the manifest (``evidence.replay_manifest``) against the quoted value.

The event log parser reads the TCG PC Client crypto-agile format (a SHA-1 style header
event carrying the "Spec ID Event03" algorithm list, then TCG_PCR_EVENT2 records, all
little-endian) and replays every bank, honouring the StartupLocality event for PCR 0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from attestation import constants as c
from attestation.errors import EventLogError, MeasurementError
from attestation.evidence import ManifestEntry


def _hash_tree(root: Path) -> bytes:
    """SHA-256 over (relative path, SHA-256 of contents) of every file, sorted; skips
    bytecode caches, which Python rewrites at will."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        rel = path.relative_to(root).as_posix().encode()
        h.update(struct.pack(">H", len(rel)) + rel + hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def _digest_path(path: Path) -> bytes:
    if path.is_dir():
        return _hash_tree(path)
    return hashlib.sha256(path.read_bytes()).digest()


def build_manifest(
    software: Iterable[Path], config: Path | None, node_id: bytes
) -> tuple[ManifestEntry, ...]:
    """Measure installed software (files or directories), configuration and nodeId."""
    if len(node_id) != c.NODE_ID_SIZE:
        raise MeasurementError("nodeId must be 32 bytes")
    entries: list[ManifestEntry] = []
    try:
        for path in sorted(software, key=lambda p: p.name):
            name = c.SOFTWARE_ENTRY_PREFIX + path.name
            entries.append(ManifestEntry(name, _digest_path(path)))
        if config is not None:
            entries.append(ManifestEntry(c.CONFIG_ENTRY, _digest_path(config)))
    except OSError as exc:
        raise MeasurementError(f"cannot measure: {exc}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise MeasurementError("two software paths share a name")
    entries.append(ManifestEntry(c.NODE_ID_ENTRY, node_id))
    return tuple(entries)


SOFTWARE_PACKAGES = ("attestation", "l2bridge", "exitnode")


def installed_software() -> tuple[Path, ...]:
    """Where the ShadowMesh packages the exit node runs are installed (without importing)."""
    roots = []
    for name in SOFTWARE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.append(Path(next(iter(spec.submodule_search_locations))))
    return tuple(roots)


# --- TCG event log ---


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
    return sizes


def parse_event_log(data: bytes) -> tuple[Event, ...]:
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


_HASHES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


def replay_event_log(events: tuple[Event, ...], alg: int = c.TPM_ALG_SHA256) -> dict[int, bytes]:
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


def read_event_log(path: Path = Path(c.EVENT_LOG_PATH)) -> tuple[Event, ...] | None:
    """The kernel's measured-boot log, or None where the kernel exposes none."""
    try:
        with path.open("rb") as f:
            data = f.read(c.MAX_EVENT_LOG_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc}") from None
    return parse_event_log(data)
