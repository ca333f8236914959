from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.constants import (
    AEAD_TAG_SIZE,
    MAX_FRAME_SIZE,
    MAX_RECORD_SIZE,
    RECORD_DATA,
    RECORD_HEADER_SIZE,
    Cipher,
)
from l2bridge.errors import RecordRejected, RecordTooLarge
from l2bridge.protocol.records import RecvKey, SendKey, parse_header, split_frames
from l2bridge.protocol.replay import ReplayWindow, Verdict


def pair(cipher: Cipher = Cipher.AES_256_GCM, epoch: int = 3) -> tuple[SendKey, RecvKey]:
    key, iv = os.urandom(32), os.urandom(12)
    return (
        SendKey(cipher, bytearray(key), bytearray(iv), epoch, 0.0),
        RecvKey(cipher, bytearray(key), bytearray(iv), epoch, 0.0),
    )


def open_record(recv: RecvKey, record) -> list[bytes]:
    _, _, counter = parse_header(record)
    return [bytes(f) for f in split_frames(recv.open(record, counter))]


frames_st = st.lists(st.binary(min_size=1, max_size=3000), max_size=8)


@settings(max_examples=60, deadline=None)
@given(frames=frames_st, padding=st.integers(0, 300), cipher=st.sampled_from(list(Cipher)))
def test_seal_open_round_trip(frames, padding, cipher) -> None:
    send, recv = pair(cipher)
    record = send.seal_frames(frames, padding)
    assert (
        len(record)
        == RECORD_HEADER_SIZE
        + sum(4 + len(f) for f in frames)
        + (4 + padding if padding else 0)
        + AEAD_TAG_SIZE
    )
    assert parse_header(record) == (RECORD_DATA, 3, 0)
    assert open_record(recv, record) == frames


def test_large_gso_frames_fit_one_record() -> None:
    send, recv = pair()
    frames = [os.urandom(MAX_FRAME_SIZE)] * 4
    assert open_record(recv, send.seal_frames(frames)) == frames
    with pytest.raises(RecordTooLarge):
        send.seal_frames([b"x" * (MAX_FRAME_SIZE + 1)])
    with pytest.raises(RecordTooLarge):
        send.seal_frames([os.urandom(MAX_FRAME_SIZE)] * 5)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_tampered_byte_is_rejected(data) -> None:
    send, recv = pair()
    record = send.seal_frames([b"frame one", b"frame two"], 16)
    i = data.draw(st.integers(0, len(record) - 1))
    bit = data.draw(st.integers(0, 7))
    record[i] ^= 1 << bit
    with pytest.raises(RecordRejected) as exc:
        _, _, counter = parse_header(record)
        recv.open(record, counter)
    assert exc.value.reason in {"auth_failed", "bad_type"}


def test_truncated_and_oversized_rejected_before_decryption() -> None:
    send, recv = pair()
    record = send.seal_frames([b"abc"])
    for cut in (0, 5, RECORD_HEADER_SIZE + AEAD_TAG_SIZE - 1):
        with pytest.raises(RecordRejected, match="truncated"):
            parse_header(record[:cut])
    with pytest.raises(RecordRejected):
        recv.open(record[:-1], 0)
    with pytest.raises(RecordRejected, match="too_large"):
        parse_header(bytes(MAX_RECORD_SIZE + 1))


def test_replay_and_reorder_rejected() -> None:
    send, recv = pair()
    r0, r1, r2 = (send.seal_frames([bytes([i])]) for i in range(3))
    assert open_record(recv, r0) == [b"\x00"]
    with pytest.raises(RecordRejected, match="replayed"):
        open_record(recv, r0)
    assert open_record(recv, r2) == [b"\x02"]
    with pytest.raises(RecordRejected, match="reordered"):
        open_record(recv, r1)
    # Without strict order (a datagram transport) an unseen record inside the window opens once.
    assert [bytes(f) for f in split_frames(recv.open(r1, 1, strict_order=False))] == [b"\x01"]
    with pytest.raises(RecordRejected, match="replayed"):
        recv.open(r1, 1, strict_order=False)


def test_forged_record_does_not_move_the_window() -> None:
    send, recv = pair()
    real = send.seal_frames([b"a"])
    forged = bytearray(real)
    forged[5:13] = (10**6).to_bytes(8, "big")
    with pytest.raises(RecordRejected, match="auth_failed"):
        recv.open(forged, 10**6)
    assert open_record(recv, real) == [b"a"]


def test_malformed_plaintext() -> None:
    with pytest.raises(RecordRejected, match="malformed"):
        split_frames(b"\x00\x00\x00\x09abc")
    with pytest.raises(RecordRejected, match="malformed"):
        split_frames(b"\x00\x00")
    assert split_frames(b"\x00\x00\x00\x01a\x00\x00\x00\x00\x00\x00") == [b"a"]


def test_wiped_keys_are_zero_and_refuse() -> None:
    send, recv = pair()
    record = send.seal_frames([b"a"])
    recv.wipe()
    send.wipe()
    assert send._key == bytearray(32) and recv._key == bytearray(32)
    assert recv._iv == bytearray(12)
    with pytest.raises(RecordRejected):
        recv.open(record, 0)
    with pytest.raises(RecordTooLarge):
        send.seal_frames([b"a"])


@settings(max_examples=100, deadline=None)
@given(counters=st.lists(st.integers(0, 5000), max_size=200), blocks=st.sampled_from([2, 4, 32]))
def test_replay_window_matches_a_reference_model(counters, blocks) -> None:
    window = ReplayWindow(blocks)
    seen: set[int] = set()
    highest = -1
    for c in counters:
        verdict = window.check(c)
        if c > highest:
            expected = Verdict.FRESH
        elif highest - c >= window.window_size:
            expected = Verdict.TOO_OLD
        elif c in seen:
            expected = Verdict.REPLAYED
        else:
            expected = Verdict.REORDERED
        assert verdict is expected, (c, highest)
        if verdict in (Verdict.FRESH, Verdict.REORDERED):
            window.commit(c)
            seen.add(c)
            highest = max(highest, c)


def test_replay_window_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(3)
