"""The relay's per-circuit queues are bounded: a stalled link costs drops, never memory."""

from __future__ import annotations

import asyncio

from exitnode import constants
from exitnode.relay import DROP_QUEUE_FULL, _Batch, _Prepended, _Queue
from l2bridge.node.metrics import Metrics


class StalledLink:
    """A link whose socket never drains: nothing goes out at once, sends never finish."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.gate = asyncio.Event()

    def send_now(self, frames):
        return False

    async def send_frames(self, frames):
        await self.gate.wait()
        self.sent.append(list(frames))


def test_a_stalled_next_hop_fills_its_queue_then_drops_and_counts():
    async def scenario():
        metrics = Metrics("exit")
        link = StalledLink()
        queue = _Queue(link, metrics)  # type: ignore[arg-type]
        cell = b"c" * 2400
        total = constants.CIRCUIT_QUEUE_CELLS * 3
        for _ in range(total):
            queue.put([cell])
            await asyncio.sleep(0)
        dropped = metrics.counters.drops[DROP_QUEUE_FULL]
        # At most one batch in flight plus a full queue; everything else was dropped.
        held = total - dropped
        assert held <= constants.CIRCUIT_QUEUE_CELLS + constants.RELAY_SEND_BATCH
        assert held * len(cell) <= constants.CIRCUIT_QUEUE_BYTES + constants.RELAY_SEND_BATCH * len(
            cell
        )
        assert dropped >= total - held
        # Once the link drains, what was queued goes out in order.
        link.gate.set()
        for _ in range(200):
            await asyncio.sleep(0)
        assert sum(map(len, link.sent)) == held
        queue.stop()

    asyncio.run(scenario())


def test_an_l2_device_link_keeps_its_first_batch():
    async def scenario():
        class Link:
            def __init__(self):
                self.sink = None

            def deliver_to(self, sink):
                self.sink = sink

            async def recv_frames(self):
                return [b"second"]

        inner = Link()
        port = _Prepended(inner, [memoryview(b"first")])  # type: ignore[arg-type]
        got = []
        port.deliver_to(got.append)
        assert [bytes(f) for f in got[0]] == [b"first"] and inner.sink == got.append
        port2 = _Prepended(Link(), [memoryview(b"first")])  # type: ignore[arg-type]
        assert [bytes(f) for f in await port2.recv_frames()] == [b"first"]
        assert await port2.recv_frames() == [b"second"]

    asyncio.run(scenario())


def test_a_received_batch_leaves_in_one_send_per_queue_in_order():
    """Cells a batch from the previous hop produces go to each next link in one send (one
    link record), not one send per cell; order within a queue is kept."""

    class RecordingLink:
        def __init__(self) -> None:
            self.sends: list[list[bytes]] = []

        def send_now(self, frames):
            self.sends.append(list(frames))
            return True

    async def scenario():
        metrics = Metrics("exit")
        a, b = RecordingLink(), RecordingLink()
        qa, qb = _Queue(a, metrics), _Queue(b, metrics)  # type: ignore[arg-type]
        batch = _Batch()
        for i in range(40):
            batch.cells.setdefault(qa if i % 3 else qb, []).append(bytes([i]))
        batch.flush(None)  # type: ignore[arg-type]  # no frames: the relay is not needed
        assert a.sends == [[bytes([i]) for i in range(40) if i % 3]]
        assert b.sends == [[bytes([i]) for i in range(40) if not i % 3]]
        assert batch.cells == {} and batch.frames == {}  # a flushed batch starts empty
        qa.stop()
        qb.stop()

    asyncio.run(scenario())
