"""The relay's bounds: a stalled link costs drops, never memory; a device holds a bounded
number of circuit links."""

from __future__ import annotations

import asyncio

from exitnode import constants
from exitnode.relay import DROP_QUEUE_FULL, DeviceLinks, Relay, _Batch, _Prepended, _Queue
from l2bridge.node.metrics import Metrics
from l2bridge.transport.errors import TransportClosed


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


class CircuitLink:
    """A circuit link from ``device``: open until ``close``."""

    def __init__(self, device: bytes) -> None:
        self.session = type("S", (), {"authorization": type("A", (), {"device_id": device})})()
        self.closed = asyncio.Event()
        self.close_reason = None

    def deliver_to(self, sink):
        pass

    async def recv_frames(self):
        await self.closed.wait()
        raise TransportClosed("closed")

    async def close(self):
        self.close_reason = "closed"
        self.closed.set()


def test_a_device_holds_at_most_the_bound_of_circuit_links_at_once():
    async def scenario():
        metrics = Metrics("exit")
        relay = Relay(None, metrics, device_links=DeviceLinks(limit=2))  # type: ignore[arg-type]
        a = [CircuitLink(b"A") for _ in range(3)]
        served = [asyncio.ensure_future(relay.serve(x, [])) for x in a]  # type: ignore[arg-type]
        other = CircuitLink(b"B")
        served.append(asyncio.ensure_future(relay.serve(other, [])))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        # The third of A's links was closed at once and counted; B's is served.
        assert a[2].close_reason == "closed" and served[2].done()
        assert metrics.counters.drops["circuit_links_per_device"] == 1
        assert not served[0].done() and not served[1].done() and not served[3].done()
        assert set(relay.circuit_links.values()) == {b"A", b"B"}
        # One of A's ends: A may open another.
        await a[0].close()
        await served[0]
        again = CircuitLink(b"A")
        served.append(asyncio.ensure_future(relay.serve(again, [])))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert again.close_reason is None and not served[-1].done()
        assert metrics.counters.drops["circuit_links_per_device"] == 1
        for x in (a[1], other, again):
            await x.close()
        await asyncio.gather(*served)
        assert relay.circuit_links == {} and relay.device_links.held == {}

    asyncio.run(scenario())
