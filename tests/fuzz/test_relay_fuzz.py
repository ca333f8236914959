"""The relay driver on arbitrary frames from a previous hop: counted drops, never a crash."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exitnode.relay import Relay, _Batch
from l2bridge.constants import ONION_HEADER_SIZE, RELAY_SIZE_CLASSES
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.cells import CELL_MAGIC, CellKind, DestroyReason

KEY = HybridSigningKey.generate()
SIZES = [2048, 512, *(ONION_HEADER_SIZE + s for s in RELAY_SIZE_CLASSES[:3])]


class SinkLink:
    close_reason = None

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_now(self, frames):
        self.sent.extend(bytes(f) for f in frames)
        return True

    async def send_frames(self, frames):
        self.sent.extend(bytes(f) for f in frames)


frame_strategy = st.one_of(
    st.binary(max_size=600),
    st.builds(
        lambda kind, circ, size, head: (
            CELL_MAGIC + struct.pack(">BI", kind, circ) + (head + bytes(size))[:size]
        ),
        st.sampled_from([k.value for k in CellKind] + [0, 9]),
        st.integers(0, 3),
        st.sampled_from(SIZES),
        st.binary(max_size=64),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_strategy, max_size=12))
def test_relay_takes_garbage_frames(frames):
    async def scenario() -> None:
        metrics = Metrics("exit")
        relay = Relay(KEY, metrics)
        link = SinkLink()
        assemblers: dict = {}
        batch = _Batch()
        for frame in frames:
            relay._from_prev(link, memoryview(frame), assemblers, batch)  # type: ignore[arg-type]
        batch.flush(relay)
        for _ in range(50):  # let answers to complete-looking CREATEs finish (they fail)
            await asyncio.sleep(0.001)
        # Garbage opens no circuit's layer (a well-formed CREATE may open a circuit: anyone
        # may), so nothing is relayed or switched, and every frame that is no cell is counted.
        assert relay.relayed_cells == 0
        assert sum(metrics.counters.drops.values()) >= sum(
            1 for f in frames if not f.startswith(CELL_MAGIC)
        )
        for hop in relay.hops:
            relay.close_hop(hop, DestroyReason.NORMAL)

    asyncio.run(scenario())
