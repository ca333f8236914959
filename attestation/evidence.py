"""Evidence: the versioned, canonical encoding an exit hands to a verifier.

Layout (big-endian; every variable field length-prefixed; nothing optional):

    magic "SMEV" | version u8 = 2
    nonce (32) | nodeId (32)
    attest      u16 size + TPMS_ATTEST   (the quote; carries the TPM clock info)
    signature   u16 size + TPMT_SIGNATURE
    ak_public   u16 size + TPMT_PUBLIC
    pcrs        u8 count, then (index u8, value 32) with indices strictly ascending
    event_log   u32 size + zlib(TCG crypto-agile event log; empty: left out, see below)
    ima_first   u32: the number of the first IMA entry included
    ima_list    u32 size + zlib(IMA binary measurement list from entry ima_first)

Nothing the exit says about itself outside the quote is trusted: the event log and the IMA
list are only believed once they replay to the quoted PCRs. A verifier that sends a
``Since`` has this boot's event log from an earlier quote: the exit then leaves the log out
(an empty field; a real log is never empty), and the verifier replays the log it kept
against this quote's PCRs, so a log it has not seen can never pass. There is no unsigned timestamp
(freshness comes from the nonce in the quote and the TPM clock). The logs are compressed
(paths repeat a lot); decompression is bounded, so a small blob cannot expand past the
limits. ``encode(decode(b)) == b`` for every ``b`` that ``encode`` produced, and decoding
rejects trailing bytes; but deflate streams are not canonical (the last byte's padding bits
are unused, and one text has many streams), so a different blob can decode to the same
evidence. Nothing relies on the blob's bytes: what is checked is the decoded evidence, and a
handshake carries the blob inside the exit's signed ServerHello. The qualifying data
is defined here because verifier and exit must agree on it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from attestation import constants as c
from attestation import tpms
from attestation.errors import EvidenceError


@dataclass(frozen=True, slots=True)
class Evidence:
    nonce: bytes
    node_id: bytes
    attest: bytes
    signature: bytes
    ak_public: bytes
    pcrs: tuple[tuple[int, bytes], ...]
    event_log: bytes
    ima_first: int
    ima_list: bytes


@dataclass(frozen=True, slots=True)
class Since:
    """How far a verifier has replayed an exit's IMA list: the TPM reset count of that
    boot and the number of entries. A verifier that sends it asks for the entries after
    those only, and says it keeps that boot's event log; the exit decides from its own
    quote (``first_entry``, ``sends_boot_log``)."""

    reset_count: int
    ima_count: int


def first_entry(since: Since | None, attest: bytes, have: int) -> int:
    """The first IMA entry to send (``Evidence.ima_first``) with the quote ``attest`` and a
    list of ``have`` entries up to its PCR 10: ``since.ima_count`` when the quote is of
    the boot ``since`` names (same reset count) and the list is that long; else 0, the
    whole list. Nothing here is trusted by the verifier: a list cut anywhere else fails
    its replay (a gap) or does not reach the quoted PCR 10."""
    if since is None or since.ima_count > have:
        return 0
    if tpms.parse_attest(attest).clock_info.reset_count != since.reset_count:
        return 0
    return since.ima_count


def sends_boot_log(since: Since | None, attest: bytes) -> bool:
    """Whether evidence with the quote ``attest`` carries the event log: not when ``since``
    names the quote's boot (same reset count), whose log that verifier already replayed.
    The verifier replays its own copy against this quote's PCRs 0-9, so leaving the log
    out wrongly only makes the evidence fail."""
    if since is None:
        return True
    return tpms.parse_attest(attest).clock_info.reset_count != since.reset_count


def qualifying_data(nonce: bytes, node_id: bytes) -> bytes:
    """extraData of a handshake quote: SHA-256("shadowmesh/handshake/v1" || nonce || nodeId).

    The registry's quotes use a domain of their own, so a quote a client collected in a
    handshake can never pass as registry evidence (or the other way round).
    """
    if len(nonce) != c.NONCE_SIZE or len(node_id) != c.NODE_ID_SIZE:
        raise EvidenceError("nonce and nodeId must be 32 bytes each")
    return hashlib.sha256(c.HANDSHAKE_DOMAIN + nonce + node_id).digest()


def _compress(data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise EvidenceError("log too large for evidence")
    return zlib.compress(data, 6)


def _decompress(blob: bytes, limit: int, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(blob, limit + 1)
    except zlib.error:
        raise EvidenceError(f"{what} is not zlib data") from None
    if len(out) > limit or d.unconsumed_tail:
        raise EvidenceError(f"{what} too large")
    if not d.eof or d.unused_data:
        raise EvidenceError(f"{what} is truncated or has trailing bytes")
    return out


def encode(e: Evidence) -> bytes:
    """Encode evidence; raises EvidenceError if a field is out of its limits."""
    if len(e.nonce) != c.NONCE_SIZE or len(e.node_id) != c.NODE_ID_SIZE:
        raise EvidenceError("nonce and nodeId must be 32 bytes each")
    parts = [c.EVIDENCE_MAGIC, bytes([c.EVIDENCE_VERSION]), e.nonce, e.node_id]
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
    log = _compress(e.event_log, c.MAX_EVENT_LOG_SIZE)
    if not 0 <= e.ima_first < c.MAX_IMA_ENTRIES:
        raise EvidenceError("ima_first out of range")
    ima = _compress(e.ima_list, c.MAX_IMA_LIST_SIZE)
    parts += [struct.pack(">I", len(log)), log, struct.pack(">II", e.ima_first, len(ima)), ima]
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
    log = _decompress(r.take(r.u32("event log size"), "event log"), c.MAX_EVENT_LOG_SIZE,
                      "event log")  # fmt: skip
    first = r.u32("ima_first")
    if first >= c.MAX_IMA_ENTRIES:
        raise EvidenceError("ima_first out of range")
    ima = _decompress(r.take(r.u32("IMA list size"), "IMA list"), c.MAX_IMA_LIST_SIZE,
                      "IMA list")  # fmt: skip
    r.end("evidence")
    return Evidence(nonce, node_id, attest, signature, ak_public, tuple(pcrs), log, first, ima)
