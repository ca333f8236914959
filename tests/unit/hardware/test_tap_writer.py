"""``FrameDevice.write_from_thread``: a writer thread per TAP, order kept, bounded, flushed.

Through the in-memory FakeTap (same code as a real TAP); tests/integration has the real
TAPs, whose nodes write from a thread by default.
"""

from __future__ import annotations

import time

from hardware import ethernet
from hardware.tap import WRITER_INLINE_FRAMES, FakeTap

WAIT_S = 5.0


def frame(seq: int) -> bytes:
    """A plain tunnel frame carrying ``seq`` (broadcast, so nothing filters it)."""
    eth = b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x88\xb5" + seq.to_bytes(4, "big")
    return ethernet.NO_OFFLOAD + eth + bytes(46)


def seqs(delivered: list[bytes]) -> list[int]:
    return [int.from_bytes(f[14:18], "big") for f in delivered]


def wait_written(tap: FakeTap, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while tap.stats.frames_written < count and time.monotonic() < deadline:
        time.sleep(0.001)


def test_mixed_inline_and_queued_batches_arrive_in_order() -> None:
    tap = FakeTap()
    tap.write_from_thread()
    sent, seq, got = 0, 0, []
    # Small batches (inline while the thread is idle) between large ones (queued): none
    # may overtake another.
    for size in [1, 40, 2, 1, 33, 1, 1, 64, 2, 5, 1] * 6:
        batch = [frame(seq + i) for i in range(size)]
        assert tap.write_batch(batch) == size
        seq += size
        sent += size
        got += tap.delivered()  # keep the socket pair's buffer from filling
    wait_written(tap, sent)
    got += tap.delivered()
    assert seqs(got) == list(range(sent))
    assert not tap.stats.drops
    tap.close()


def test_small_batch_on_an_idle_writer_is_written_before_returning() -> None:
    tap = FakeTap()
    tap.write_from_thread()
    batch = [frame(i) for i in range(WRITER_INLINE_FRAMES)]
    assert tap.write_batch(batch) == len(batch)
    assert tap.stats.frames_written == len(batch)  # no thread hand-off: the ping path
    assert seqs(tap.delivered()) == list(range(len(batch)))
    tap.close()


def test_full_queue_drops_whole_batches_and_counts_them() -> None:
    tap = FakeTap()
    tap.write_from_thread(max_queued=10)
    writer = tap._writer
    assert writer is not None
    with writer._lock:  # the thread is stuck in a write: nothing drains
        assert tap.write_batch([frame(i) for i in range(8)]) == 8
        assert tap.write_batch([frame(8 + i) for i in range(3)]) == 0  # 11 > 10
        assert tap.write_batch([frame(20), frame(21)]) == 2  # 10 fits
        assert tap.write_batch([frame(22)]) == 0
    wait_written(tap, 10)
    assert seqs(tap.delivered()) == [*range(8), 20, 21]
    assert tap.stats.drops["tap_queue_full"] == 4
    tap.close()


def test_close_writes_what_is_queued_first() -> None:
    tap = FakeTap()
    tap.write_from_thread()
    writer = tap._writer
    assert writer is not None
    with writer._lock:
        tap.write_batch([frame(i) for i in range(50)])
    tap.close()  # waits for the thread, which writes the 50 before the device closes
    assert tap.stats.frames_written == 50
    assert tap.write_batch([frame(99)]) == 0  # closed: refused and counted, not queued
    assert tap.stats.drops["rejected"] == 1
