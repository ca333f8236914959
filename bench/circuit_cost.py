"""Per-cell cost of multi-hop circuits, in measures that do not depend on the machine's load.

    python bench/circuit_cost.py                      # link records per relayed cell
    valgrind --tool=callgrind python bench/circuit_cost.py --sansio N SIZE

Default: a 3-hop circuit through relaying exits in one process (``lab.circuitlab``), 100
batches of 64 frames of 1,514 bytes; counts, from the relays' link statistics, how many link
records carried the cells relayed from one exit to the next (``cells_per_record``).

``--sansio N SIZE``: no I/O at all: the client seals N frames of SIZE bytes for 3 hops and
hop 1 peels its layer (``l2bridge.protocol``). Run it under callgrind for two values of N:
the difference of the instruction counts divided by the difference of N is the cost per
frame, start-up (imports, the hybrid exchanges) cancelled.

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.multihop import A, B, circuit, frame
from l2bridge.protocol.cells import parse_cell
from l2bridge.protocol.circuit import ClientCircuit, RelayCircuit
from lab.circuitlab import start_exits

BATCHES = 100
BATCH = 64


async def records() -> dict[str, object]:
    exits = await start_exits(3)
    try:
        cl = await circuit(exits)
        tail = exits[-1]
        tail.tap.inject(frame(B, A, 98)[10:])  # the tail learns B: frames to it are unicast
        await cl.send_frames([frame(A, B, 98)])
        await asyncio.sleep(0.3)
        tail.tap.delivered()

        def totals() -> tuple[int, int]:
            rec = cells = 0
            for x in exits:
                assert x.relay is not None
                for hop in x.relay.hops:
                    if hop.next is not None:
                        stats = hop.next.stats()
                        rec += stats["records_sent"]
                        cells += stats["frames_sent"]
            return rec, cells

        r0, c0 = totals()
        for _ in range(BATCHES):
            await cl.send_frames([frame(A, B, 1514)] * BATCH)
            await asyncio.sleep(0.002)
        await asyncio.sleep(1.0)
        r1, c1 = totals()
        await cl.close()
    finally:
        for x in exits:
            await x.kill()
    return {
        "frames": BATCHES * BATCH,
        "relay_link_records": r1 - r0,
        "relayed_cells": c1 - c0,
        "cells_per_record": round((c1 - c0) / max(1, r1 - r0), 1),
    }


def sansio(n: int, size: int) -> dict[str, object]:
    from l2bridge.identity.keys import HybridSigningKey
    from l2bridge.protocol.cells import CellKind, HandshakeAssembler

    key = HybridSigningKey.generate()
    client = ClientCircuit(7)
    hop: RelayCircuit | None = None
    assembler = HandshakeAssembler()
    for cell in map(parse_cell, client.first_hop(key.node_id, None)):
        create = assembler.add(cell.body) if cell.kind is CellKind.CREATE else None
        if create is not None:
            hop, created = RelayCircuit.accept(create, 7, key)
            for reply in created:
                client.receive(reply, 0.0)
    assert hop is not None and client.length == 1
    frames = [bytes(10) + bytes(size)] * n
    bodies = [bytes(parse_cell(c).body) for c in client.seal_frames(frames)]
    outs = [hop.from_previous(b, 0.0) for b in bodies]
    assert all(o.frames for o in outs)
    return {"frames": n, "size": size, "hops": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sansio", nargs=2, type=int, metavar=("N", "SIZE"))
    args = parser.parse_args()
    out = sansio(*args.sansio) if args.sansio else asyncio.run(records())
    print(json.dumps({"bench": "circuit_cost", **out}))


if __name__ == "__main__":
    main()
