"""Per-cell cost of multi-hop circuits, in measures that do not depend on the machine's load.

    python bench/circuit_cost.py                      # link records per relayed cell
    valgrind --tool=callgrind python bench/circuit_cost.py --sansio N SIZE

Default: a 3-hop circuit through relaying exits in one process (``lab.circuitlab``), 100
batches of 64 frames of 1,514 bytes; counts, from the relays' link statistics, how many link
records carried the cells relayed from one exit to the next (``cells_per_record``).

``--sansio N SIZE [--hops 3] [--acks M]``: no I/O at all (``l2bridge.protocol``): the
client seals N frames of SIZE bytes for the circuit, each middle hop peels its layer into a
cell for its next link (``from_previous`` with that link's cell header, as exitnode/relay.py
does), the tail opens the innermost layer; then M 66-byte frames (TCP ACKs) go back through
every hop to the client. Run it under callgrind for two values of N: the difference of
the instruction counts divided by the difference of N is the cost per frame, start-up
(imports, the hybrid exchanges) cancelled::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python -m bench.circuit_cost \\
        --sansio 200 65000

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.multihop import A, B, circuit, frame
from l2bridge.protocol.cells import encode_cell, handshake_cells, parse_cell
from l2bridge.protocol.circuit import ClientCircuit, RelayCircuit
from l2bridge.protocol.records import Buffer
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


def _build(hops: int) -> tuple[ClientCircuit, list[RelayCircuit]]:
    """A circuit of ``hops`` relays, telescoped in memory (no evidence, no sockets)."""
    from l2bridge.identity.keys import HybridSigningKey
    from l2bridge.protocol.cells import CellKind, HandshakeAssembler

    client = ClientCircuit(7)
    relays: list[RelayCircuit] = []

    def accept(cells: Sequence[Buffer], key: HybridSigningKey) -> bytes:
        """The new hop answers its CREATE; its CREATED message."""
        assembler, answer = HandshakeAssembler(), HandshakeAssembler()
        for cell in map(parse_cell, cells):
            create = assembler.add(cell.body)
            if create is not None:
                hop, created = RelayCircuit.accept(create, 7, key)
                relays.append(hop)
                for reply in map(parse_cell, created):
                    message = answer.add(reply.body)
                    if message is not None:
                        return message
        raise AssertionError("no CREATE / CREATED")

    for i in range(hops):
        key = HybridSigningKey.generate()
        if i == 0:
            cells = client.first_hop(key.node_id, None)
            created = accept(cells, key)
            for reply in handshake_cells(CellKind.CREATED, 7, created):
                client.receive(reply, 0.0)
            continue
        (extend,) = client.extend(key.node_id, f"ws://hop{i}/ws", None)
        body: Buffer = parse_cell(extend).body
        for hop in relays[:-1]:
            body = hop.from_previous(body, 0.0).forward or b""
        request = relays[-1].from_previous(body, 0.0).extend
        assert request is not None
        tail = relays[-1]
        created = accept(handshake_cells(CellKind.CREATE, 7, request.create), key)
        for answer in tail.extended_by(created):
            back: Buffer = answer
            for hop in reversed(relays[:-2]):
                back = hop.from_next(back) or b""
            client.receive(encode_cell(CellKind.RELAY, 7, back), 0.0)
    assert client.length == hops
    return client, relays


def sansio(n: int, size: int, hops: int = 3, acks: int = 0) -> dict[str, object]:
    """The client seals ``n`` frames of ``size`` bytes; each middle hop peels its layer
    into a cell for its next link (``from_previous`` with that link's cell header), the
    tail opens the last one; then ``acks`` 66-byte frames go back the same way."""
    from l2bridge.protocol.cells import CellKind, cell_header

    client, relays = _build(hops)
    header = cell_header(CellKind.RELAY, 9)
    frames = [bytes(10) + bytes(size)] * n
    delivered = 0
    for sealed in client.seal_frames(frames):
        cell: Buffer = sealed
        for hop in relays[:-1]:
            forward = hop.from_previous(parse_cell(cell).body, 0.0, header).forward
            assert forward is not None
            cell = forward
        delivered += len(relays[-1].from_previous(parse_cell(cell).body, 0.0).frames)
    assert delivered == n
    back = 0
    for ack in relays[-1].originate([bytes(66)] * acks, header):
        cell = ack
        for hop in reversed(relays[:-1]):
            wrapped = hop.from_next(parse_cell(cell).body, header)
            assert wrapped is not None
            cell = wrapped
        back += len(
            client.receive(encode_cell(CellKind.RELAY, 7, parse_cell(cell).body), 0.0).frames
        )
    assert back == acks
    return {"frames": n, "size": size, "hops": hops, "acks": acks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sansio", nargs=2, type=int, metavar=("N", "SIZE"))
    parser.add_argument("--hops", type=int, default=3, help="--sansio: circuit length")
    parser.add_argument("--acks", type=int, default=0, help="--sansio: 66-byte frames back")
    args = parser.parse_args()
    out = (
        sansio(*args.sansio, hops=args.hops, acks=args.acks)
        if args.sansio
        else asyncio.run(records())
    )
    print(json.dumps({"bench": "circuit_cost", **out}))


if __name__ == "__main__":
    main()
