"""The IMA binary list: the kernel's byte layout, PCR 10 replay and incremental checks."""

from __future__ import annotations

import hashlib
import struct

import pytest

from attestation import constants as c
from attestation import ima
from attestation.errors import EvidenceError

DIGEST = hashlib.sha256(b"contents").digest()


def test_entry_layout_is_the_kernels():
    raw = ima.encode_entry("/usr/bin/python3", DIGEST)
    pcr, template_hash, name_len = struct.unpack_from("<I20sI", raw)
    assert (pcr, name_len) == (10, 6)
    assert raw[28:34] == b"ima-ng"
    (size,) = struct.unpack_from("<I", raw, 34)
    data = raw[38:]
    assert len(data) == size
    # d-ng: length 40, "sha256:" NUL, digest; n-ng: length, path, NUL
    assert data[:4] == struct.pack("<I", 40) and data[4:12] == b"sha256:\x00"
    assert data[12:44] == DIGEST
    assert data[44:48] == struct.pack("<I", 17) and data[48:] == b"/usr/bin/python3\x00"
    assert template_hash == hashlib.sha1(data).digest()


def test_round_trip():
    raw = ima.encode_entry("/a", DIGEST) + ima.encode_entry("/b/ü", bytes(32), violation=True)
    entries = ima.parse_list(raw)
    assert [(e.path, e.violation) for e in entries] == [("/a", False), ("/b/ü", True)]
    assert entries[0].file_digest == DIGEST
    again = b"".join(ima.encode_entry(e.path, e.file_digest, violation=e.violation)
                     for e in entries)  # fmt: skip
    assert again == raw


def test_replay_extends_sha256_of_template_data_and_ff_for_violations():
    ok, bad = ima.encode_entry("/a", DIGEST), ima.encode_entry("/b", DIGEST, violation=True)
    result = ima.replay(ok + bad, 0, ima.INITIAL_STATE)
    first = hashlib.sha256(bytes(32) + hashlib.sha256(ok[38:]).digest()).digest()
    assert result.state == ima.ImaState(2, hashlib.sha256(first + b"\xff" * 32).digest())
    assert result.problems == ()


def test_incremental_replay_skips_what_was_seen_and_needs_no_gap():
    entries = [ima.encode_entry(f"/f{i}", DIGEST) for i in range(5)]
    whole = ima.replay(b"".join(entries), 0, ima.INITIAL_STATE)
    first = ima.replay(b"".join(entries[:3]), 0, ima.INITIAL_STATE)
    rest = ima.replay(b"".join(entries[3:]), 3, first.state)
    assert rest.state == whole.state
    assert [e.path for e in rest.new_entries] == ["/f3", "/f4"]
    # The whole list again: only the two new entries are replayed.
    again = ima.replay(b"".join(entries), 0, first.state)
    assert again.state == whole.state and len(again.new_entries) == 2
    with pytest.raises(EvidenceError, match="entries from 3 are needed"):
        ima.replay(entries[4], 4, first.state)
    with pytest.raises(EvidenceError, match="before entry 3"):
        ima.replay(entries[0], 0, first.state)
    assert ima.skip_offset(b"".join(entries), 3) == sum(map(len, entries[:3]))


def test_a_wrong_sha1_or_pcr_is_a_problem():
    raw = bytearray(ima.encode_entry("/a", DIGEST))
    raw[4] ^= 1
    assert "template hash is wrong" in ima.replay(bytes(raw), 0, ima.INITIAL_STATE).problems[0]
    raw = bytearray(ima.encode_entry("/a", DIGEST))
    raw[0] = 11
    assert "is for PCR 11" in ima.replay(bytes(raw), 0, ima.INITIAL_STATE).problems[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:30], "truncated"),
        (lambda b: b[:24] + struct.pack("<I", 5) + b"ima-n" + b[34:], "ima-ng template"),
        (lambda b: b[:34] + struct.pack("<I", 1 << 30) + b[38:], "too large"),
        (lambda b: b[:38] + struct.pack("<I", 41) + b[42:], "sha256 ima-ng"),
        (lambda b: b[:46] + b"sha1:" + b[51:], "sha256 ima-ng"),
        (lambda b: b[:-1] + b"x", "NUL-terminated"),
        (lambda b: b[:-3] + b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_malformed_entries_are_refused(mutate, message):
    with pytest.raises(EvidenceError, match=message):
        ima.parse_list(mutate(ima.encode_entry("/abc", DIGEST)))


def test_bad_paths_cannot_be_written():
    for path in ("", "a\0b", "/" + "x" * c.MAX_IMA_PATH):
        with pytest.raises(EvidenceError):
            ima.encode_entry(path, DIGEST)


def test_boot_aggregate_is_sha256_over_pcrs_0_to_9():
    pcrs = tuple(bytes([i]) * 32 for i in range(10))
    assert ima.boot_aggregate(pcrs) == hashlib.sha256(b"".join(pcrs)).digest()
    with pytest.raises(EvidenceError):
        ima.boot_aggregate(pcrs[:8])
