"""Tunnel link throughput over the real WebSocket transport on loopback.

Run: ``python bench/link_loopback.py [--megabytes 50] [--rotation 1.0] [--frame mix|1500|65536]``.

A client and an exit in one process (one event loop, so both ends share one
core's worth of Python) exchange ``--megabytes`` of frames each way at once,
batched like the client's data path (64 frames / 200 KiB per record), with the
client rekeying on every ``--rotation`` boundary. Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import MasterKey

BATCH_FRAMES = 64
BATCH_BYTES = 200 * 1024


def batches(total: int, kind: str, seed: int):
    rng = random.Random(seed)
    blob = memoryview(os.urandom(70_000))
    batch, size_sum, left = [], 0, total
    while left > 0:
        if kind == "mix":
            size = 65536 if rng.random() < 0.02 else rng.randint(60, 9000)
        else:
            size = int(kind)
        size = max(60, min(size, left))
        batch.append(blob[:size])
        size_sum += size
        left -= size
        if len(batch) >= BATCH_FRAMES or size_sum >= BATCH_BYTES:
            yield batch
            batch, size_sum = [], 0
    if batch:
        yield batch


async def pump(link: Link, total: int, kind: str, seed: int) -> None:
    for batch in batches(total, kind, seed):
        await link.send_frames(batch)


async def drain(link: Link, total: int) -> None:
    got = 0
    while got < total:
        got += sum(len(f) for f in await link.recv_frames())


async def rotate(link: Link, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(interval - (time.time() % interval) + 0.001)
        link.rekey(int(time.time() // interval))


async def run(total: int, rotation: float, kind: str) -> dict[str, object]:
    exit_id, client_id = HybridSigningKey.generate(), HybridSigningKey.generate()
    authorizer = Authorizer(allow_list=AllowList().add(client_id.node_id, "bench"))
    # Only bench/ and l2bridge are on the path here (bench/timing.py shadows the package).
    master, table = MasterKey.generate(), CredentialTable()
    _, credential = table.issue(master, exit_id.node_id, client_id.node_id, "bench", time.time())
    settings = ServerSettings(
        DecoySite.builtin(), "/ws", TokenVerifier(master, exit_id.node_id, table)
    )
    done: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()

    async def on_link(link: Link) -> None:
        await asyncio.gather(pump(link, total, kind, 2), drain(link, total))
        done.set_result(link.stats())
        await asyncio.sleep(1.0)  # let the client drain before closing

    server = await serve(
        on_link,
        settings,
        lambda: ServerHandshake(exit_id, authorizer, config=SessionConfig(rekey_interval=rotation)),
        host="127.0.0.1",
        port=0,
    )
    port = server.sockets[0].getsockname()[1]
    t0 = time.perf_counter()
    link = await connect(
        f"ws://127.0.0.1:{port}/ws",
        ClientHandshake(client_id, pinned_node_id=exit_id.node_id),
        credential=credential,
        node_id=exit_id.node_id,
    )
    t_connect = time.perf_counter() - t0
    stop = asyncio.Event()
    rotator = asyncio.create_task(rotate(link, rotation, stop))
    t1 = time.perf_counter()
    await asyncio.gather(pump(link, total, kind, 1), drain(link, total))
    exit_stats = await done
    elapsed = time.perf_counter() - t1
    stop.set()
    await rotator
    stats = link.stats()
    await link.close()
    server.close()
    await server.wait_closed()
    return {
        "bench": "link_loopback",
        "frame": kind,
        "mib_each_way": round(total / 2**20, 1),
        "rotation_s": rotation,
        "seconds": round(elapsed, 3),
        "connect_ms": round(t_connect * 1000, 1),
        "mbit_s_each_way": round(total * 8 / elapsed / 1e6, 1),
        "mbit_s_total": round(2 * total * 8 / elapsed / 1e6, 1),
        "rekeys_completed": stats["rekeys_completed"],
        "client_drops": sum(v for k, v in stats.items() if k.startswith("drop_")),
        "exit_drops": sum(v for k, v in exit_stats.items() if k.startswith("drop_")),
        "records_sent": stats["records_sent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--rotation", type=float, default=1.0)
    parser.add_argument("--frame", default="mix", choices=["mix", "1500", "9000", "65536"])
    args = parser.parse_args()
    total = int(args.megabytes * 1024 * 1024)
    print(json.dumps(asyncio.run(run(total, args.rotation, args.frame))))


if __name__ == "__main__":
    main()
