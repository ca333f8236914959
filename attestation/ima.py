"""The Linux IMA binary measurement list (``ima-ng`` template): parse, write, replay.

Each entry, as the kernel writes ``binary_runtime_measurements`` (little-endian on x86)::

    pcr u32 | template digest (20, SHA-1 over the template data) |
    name length u32 | "ima-ng" | template data length u32 | template data

    template data = d-ng field: u32 length | "sha256" ":" NUL | file digest
                  | n-ng field: u32 length | path | NUL

How PCR 10's SHA-256 bank is extended (Linux ``ima_calc_field_array_hash`` per bank, as
Keylime replays it): with SHA-256 over the template data. A *violation* entry (a file
measured while open for write, "ToMToU" / "open_writers") is recorded with an all-zero
template digest and extended as all-0xFF of the bank's size instead. The first entry is
``boot_aggregate``: SHA-256 over PCRs 0-9 of the SHA-256 bank as they stood when IMA
started (for non-SHA-1 banks the kernel includes PCRs 8 and 9, the kernel command line
and image).

``ImaReplay`` verifies incrementally: it remembers how many entries it has replayed and
PCR 10's running value, so a re-check processes only new entries. The running value
commits to every earlier entry (a hash chain), so the earlier bytes need not be sent again.

Every length is checked against a limit before anything is read. Pure: bytes in, values out.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from attestation import constants as c
from attestation.errors import EvidenceError

TEMPLATE_NAME = b"ima-ng"
DIGEST_PREFIX = b"sha256:\x00"
SHA1_SIZE = 20
ZERO_SHA1 = bytes(SHA1_SIZE)
FF_SHA256 = b"\xff" * c.SHA256_SIZE
_HEAD = struct.Struct("<I20sI")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class ImaEntry:
    """One measurement: ``path`` was opened with contents hashing to ``file_digest``."""

    pcr: int
    template_hash: bytes  # SHA-1 as recorded; all zero marks a violation
    file_digest: bytes  # SHA-256 of the file (all zero in a violation entry)
    path: str
    template_data: bytes  # the bytes the PCR extension is computed over

    @property
    def violation(self) -> bool:
        return self.template_hash == ZERO_SHA1

    def pcr_extend_value(self) -> bytes:
        """What the kernel extended into the SHA-256 bank for this entry."""
        if self.violation:
            return FF_SHA256
        return hashlib.sha256(self.template_data).digest()


def template_data(file_digest: bytes, path: str) -> bytes:
    """The ``ima-ng`` template data for one file."""
    if len(file_digest) != c.SHA256_SIZE:
        raise EvidenceError("IMA file digest must be SHA-256")
    name = path.encode() + b"\x00"
    if not 1 < len(name) <= c.MAX_IMA_PATH or b"\x00" in name[:-1]:
        raise EvidenceError("bad IMA path")
    digest_field = DIGEST_PREFIX + file_digest
    return _U32.pack(len(digest_field)) + digest_field + _U32.pack(len(name)) + name


def encode_entry(path: str, file_digest: bytes, *, violation: bool = False) -> bytes:
    """One entry in the kernel's binary format. A violation has zero digests, as in Linux."""
    if violation:
        file_digest = bytes(c.SHA256_SIZE)
    data = template_data(file_digest, path)
    recorded = ZERO_SHA1 if violation else hashlib.sha1(data, usedforsecurity=False).digest()
    return (
        _HEAD.pack(c.IMA_PCR, recorded, len(TEMPLATE_NAME))
        + TEMPLATE_NAME
        + _U32.pack(len(data))
        + data
    )


def extend(pcr10: bytes, entry: ImaEntry) -> bytes:
    """PCR 10 (SHA-256 bank) after the kernel extended ``entry`` into ``pcr10``."""
    return hashlib.sha256(pcr10 + entry.pcr_extend_value()).digest()


def boot_aggregate(pcrs_0_to_9: tuple[bytes, ...]) -> bytes:
    """The boot_aggregate file digest for the SHA-256 bank: SHA-256(PCR0 || ... || PCR9)."""
    if len(pcrs_0_to_9) != c.BOOT_AGGREGATE_PCRS:
        raise EvidenceError("boot_aggregate covers PCRs 0-9")
    return hashlib.sha256(b"".join(pcrs_0_to_9)).digest()


# pcr, template digest, name length, name, template data length: one unpack per entry.
_ENTRY = struct.Struct("<I20sI6sI")
# d-ng length, "sha256:\0", file digest, n-ng length.
_FIELDS = struct.Struct("<I8s32sI")
_DIGEST_FIELD_SIZE = len(DIGEST_PREFIX) + c.SHA256_SIZE


def _fields(data: bytes) -> tuple[bytes, str]:
    """(file digest, path) from ima-ng template data; raises EvidenceError."""
    if len(data) < _FIELDS.size:
        raise EvidenceError("IMA template data truncated or not a sha256 ima-ng digest")
    dlen, prefix, digest, nlen = _FIELDS.unpack_from(data)
    if dlen != _DIGEST_FIELD_SIZE or prefix != DIGEST_PREFIX:
        raise EvidenceError("IMA entry is not a sha256 ima-ng digest")
    if not 1 < nlen <= c.MAX_IMA_PATH or _FIELDS.size + nlen != len(data):
        raise EvidenceError("bad IMA path length")
    if data[-1] != 0 or data.find(0, _FIELDS.size, -1) != -1:
        raise EvidenceError("IMA path is not one NUL-terminated string")
    try:
        path = data[_FIELDS.size : -1].decode()
    except UnicodeDecodeError:
        raise EvidenceError("IMA path is not UTF-8") from None
    return digest, path


def iter_entries(data: bytes, offset: int = 0) -> Iterator[tuple[ImaEntry, int]]:
    """Parse entries from byte ``offset``; yields (entry, offset just after it).

    Raises EvidenceError on the first malformed entry (nothing past it is trusted).
    """
    if len(data) > c.MAX_IMA_LIST_SIZE:
        raise EvidenceError("IMA list too large")
    end = len(data)
    pos = offset
    head = _ENTRY.size
    while pos < end:
        if pos + head > end:
            raise EvidenceError("IMA list truncated")
        pcr, recorded, name_len, name, size = _ENTRY.unpack_from(data, pos)
        if name_len != len(TEMPLATE_NAME) or name != TEMPLATE_NAME:
            raise EvidenceError("IMA entry does not use the ima-ng template")
        pos += head
        if size > c.MAX_IMA_TEMPLATE or pos + size > end:
            raise EvidenceError("IMA template data too large or truncated")
        tdata = data[pos : pos + size]
        pos += size
        digest, path = _fields(tdata)
        yield ImaEntry(pcr, recorded, digest, path, tdata), pos


def parse_list(data: bytes) -> tuple[ImaEntry, ...]:
    """Every entry of a binary measurement list; raises EvidenceError if malformed."""
    out: list[ImaEntry] = []
    for entry, _ in iter_entries(data):
        if len(out) >= c.MAX_IMA_ENTRIES:
            raise EvidenceError("IMA list has too many entries")
        out.append(entry)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ImaState:
    """How far a verifier has replayed one boot's list: entries and PCR 10's value."""

    count: int
    pcr10: bytes


INITIAL_STATE = ImaState(0, bytes(c.SHA256_SIZE))


@dataclass(frozen=True, slots=True)
class Replay:
    """The result of replaying a (partial) list on top of a state."""

    state: ImaState  # after every entry given
    new_entries: tuple[ImaEntry, ...]  # entries not replayed before, in order
    problems: tuple[str, ...]  # entries that are malformed for a PCR-10 ima-ng list


def replay(data: bytes, first_index: int, state: ImaState) -> Replay:
    """Replay ``data`` (entries numbered from ``first_index``) on top of ``state``.

    Entries numbered below ``state.count`` were replayed before and are skipped (only
    parsed); ``first_index`` above ``state.count`` leaves a gap and is refused. Raises
    EvidenceError if the bytes are malformed.
    """
    if first_index > state.count:
        raise EvidenceError(
            f"IMA list starts at entry {first_index}; entries from {state.count} are needed"
        )
    index = first_index
    value = state.pcr10
    new: list[ImaEntry] = []
    problems: list[str] = []
    sha256, sha1 = hashlib.sha256, hashlib.sha1
    skip = state.count
    for entry, _ in iter_entries(data):
        if index >= c.MAX_IMA_ENTRIES:
            raise EvidenceError("IMA list has too many entries")
        index += 1
        if index <= skip:
            continue
        tdata = entry.template_data
        if entry.template_hash == ZERO_SHA1:  # a violation: the kernel extends 0xFF..FF
            value = sha256(value + FF_SHA256).digest()
        else:
            if sha1(tdata, usedforsecurity=False).digest() != entry.template_hash:
                problems.append(f"IMA entry {index - 1} ({entry.path}): template hash is wrong")
            value = sha256(value + sha256(tdata).digest()).digest()
        if entry.pcr != c.IMA_PCR:
            problems.append(f"IMA entry {index - 1} ({entry.path}) is for PCR {entry.pcr}")
        new.append(entry)
    if index < state.count:
        raise EvidenceError(f"IMA list ends at entry {index}, before entry {state.count}")
    return Replay(ImaState(index, value), tuple(new), tuple(problems))


def skip_offset(data: bytes, count: int) -> int:
    """Byte offset of entry ``count`` in a list from entry 0 (for sending only new ones)."""
    if count == 0:
        return 0
    for seen, (_, end) in enumerate(iter_entries(data), start=1):
        if seen == count:
            return end
    raise EvidenceError(f"IMA list has fewer than {count} entries")
