"""Evidence: the versioned, canonical encoding an exit hands to a verifier.

Layout (big-endian; every variable field length-prefixed; nothing optional):

    magic "SMEV" | version u8 = 1
    nonce (32) | nodeId (32) | produced_at_ms u64 (the exit's wall clock)
    attest      u16 size + TPMS_ATTEST   (the quote; carries the TPM clock info)
    signature   u16 size + TPMT_SIGNATURE
    ak_public   u16 size + TPMT_PUBLIC
    pcrs        u8 count, then (index u8, value 32) with indices strictly ascending
    manifest    u8 count, then (name u8 size + UTF-8, digest 32) in measurement order

The TPM clock, reset and restart counters are not repeated outside the quote: an unsigned
copy could only disagree with the signed one. There is exactly one encoding of each value
(``decode(encode(e)) == e`` and ``encode(decode(b)) == b``); decoding checks every size
against a limit before reading and rejects trailing bytes. The qualifying data and the
manifest replay are defined here too because verifier and exit must agree on them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from attestation import constants as c
from attestation import tpms
from attestation.errors import EvidenceError


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One measured item: software package, configuration or the nodeId."""

    name: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class Evidence:
    nonce: bytes
    node_id: bytes
    produced_at_ms: int
    attest: bytes
    signature: bytes
    ak_public: bytes
    pcrs: tuple[tuple[int, bytes], ...]
    manifest: tuple[ManifestEntry, ...]


def qualifying_data(nonce: bytes, node_id: bytes) -> bytes:
    """extraData of the quote: SHA-256("shadowmesh-attest-v1" || nonce || nodeId)."""
    if len(nonce) != c.NONCE_SIZE or len(node_id) != c.NODE_ID_SIZE:
        raise EvidenceError("nonce and nodeId must be 32 bytes each")
    return hashlib.sha256(c.QUALIFYING_PREFIX + nonce + node_id).digest()


def entry_event(entry: ManifestEntry) -> bytes:
    """The digest extended into the measurement PCR for one manifest entry."""
    name = entry.name.encode()
    return hashlib.sha256(c.MEASURE_PREFIX + bytes([len(name)]) + name + entry.digest).digest()


def replay_manifest(manifest: tuple[ManifestEntry, ...]) -> bytes:
    """The measurement PCR's value after a reset and one extend per entry, in order."""
    value = bytes(c.SHA256_SIZE)
    for entry in manifest:
        value = hashlib.sha256(value + entry_event(entry)).digest()
    return value


def _check_entry(entry: ManifestEntry) -> bytes:
    name = entry.name.encode()
    if not 0 < len(name) <= c.MAX_ENTRY_NAME or not entry.name.isprintable():
        raise EvidenceError("bad manifest entry name")
    if len(entry.digest) != c.SHA256_SIZE:
        raise EvidenceError("manifest digest is not SHA-256")
    return name


def encode(e: Evidence) -> bytes:
    """Encode evidence; raises EvidenceError if a field is out of its limits."""
    if len(e.nonce) != c.NONCE_SIZE or len(e.node_id) != c.NODE_ID_SIZE:
        raise EvidenceError("nonce and nodeId must be 32 bytes each")
    if not 0 <= e.produced_at_ms < 1 << 64:
        raise EvidenceError("produced_at out of range")
    parts = [c.EVIDENCE_MAGIC, bytes([c.EVIDENCE_VERSION]), e.nonce, e.node_id]
    parts.append(struct.pack(">Q", e.produced_at_ms))
    for blob, limit in (
        (e.attest, c.MAX_ATTEST_SIZE),
        (e.signature, c.MAX_SIGNATURE_SIZE),
        (e.ak_public, c.MAX_PUBLIC_SIZE),
    ):
        if len(blob) > limit:
            raise EvidenceError("evidence field too large")
        parts.append(struct.pack(">H", len(blob)) + blob)
    indices = [i for i, _ in e.pcrs]
    if len(indices) > c.PCR_COUNT or indices != sorted(set(indices)):
        raise EvidenceError("PCR indices must be unique and ascending")
    parts.append(bytes([len(e.pcrs)]))
    for index, value in e.pcrs:
        if not 0 <= index < c.PCR_COUNT or len(value) != c.SHA256_SIZE:
            raise EvidenceError("bad PCR value")
        parts.append(bytes([index]) + value)
    if len(e.manifest) > c.MAX_MANIFEST_ENTRIES:
        raise EvidenceError("manifest too long")
    if len({entry.name for entry in e.manifest}) != len(e.manifest):
        raise EvidenceError("duplicate manifest entry")
    parts.append(bytes([len(e.manifest)]))
    for entry in e.manifest:
        name = _check_entry(entry)
        parts.append(bytes([len(name)]) + name + entry.digest)
    out = b"".join(parts)
    if len(out) > c.MAX_EVIDENCE_SIZE:
        raise EvidenceError("evidence too large")
    return out


def decode(data: bytes) -> Evidence:
    """Decode evidence bytes from a peer; raises EvidenceError on anything malformed."""
    if len(data) > c.MAX_EVIDENCE_SIZE:
        raise EvidenceError("evidence too large")
    r = tpms.Reader(bytes(data))
    if r.take(4, "magic") != c.EVIDENCE_MAGIC:
        raise EvidenceError("not ShadowMesh evidence")
    if r.u8("version") != c.EVIDENCE_VERSION:
        raise EvidenceError("unsupported evidence version")
    nonce = r.take(c.NONCE_SIZE, "nonce")
    node_id = r.take(c.NODE_ID_SIZE, "nodeId")
    produced = r.u64("produced_at")
    attest = r.tpm2b("attest", c.MAX_ATTEST_SIZE)
    signature = r.tpm2b("signature", c.MAX_SIGNATURE_SIZE)
    ak_public = r.tpm2b("ak_public", c.MAX_PUBLIC_SIZE)
    count = r.u8("PCR count")
    if count > c.PCR_COUNT:
        raise EvidenceError("too many PCRs")
    pcrs: list[tuple[int, bytes]] = []
    for _ in range(count):
        index = r.u8("PCR index")
        if index >= c.PCR_COUNT or (pcrs and index <= pcrs[-1][0]):
            raise EvidenceError("PCR indices must be unique, ascending and below 24")
        pcrs.append((index, r.take(c.SHA256_SIZE, "PCR value")))
    count = r.u8("manifest count")
    if count > c.MAX_MANIFEST_ENTRIES:
        raise EvidenceError("manifest too long")
    manifest: list[ManifestEntry] = []
    for _ in range(count):
        raw = r.take(r.u8("manifest name size"), "manifest name")
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise EvidenceError("manifest name is not UTF-8") from None
        entry = ManifestEntry(name, r.take(c.SHA256_SIZE, "manifest digest"))
        _check_entry(entry)
        if any(m.name == name for m in manifest):
            raise EvidenceError("duplicate manifest entry")
        manifest.append(entry)
    r.end("evidence")
    return Evidence(
        nonce, node_id, produced, attest, signature, ak_public, tuple(pcrs), tuple(manifest)
    )
