"""Circuits through 1, 3 and 5 relaying exits on loopback: throughput, idle RTT, build time.

Run: ``python bench/multihop.py [--megabytes 20] [--builds 20] [--pings 50]``.

Everything runs in ONE process and ONE event loop: the client and every hop (real WebSocket
transport, tunnel handshakes and records, relays, the tail's switch and an in-memory TAP,
``lab.circuitlab``) share one core's worth of Python. A 5-hop circuit here therefore pays
for five relays on the same core as the client, which real exits on their own machines do
not; the figures are a floor for throughput and a ceiling for latency.

* ``frame_gbps``: one stream of 1514-byte frames (as tunnel frames) from the client through
  the circuit into the tail's TAP; ``--megabytes`` per hop count. Frames, not TCP: there is
  no kernel TCP stack in this harness, so ``tcp1_gbps`` (the issue's iperf3 figure through
  namespaces) is ``null`` here.
* ``added_rtt_ms``: median over ``--pings`` of an idle round trip client -> tail's LAN ->
  client (one 98-byte frame each way); loopback itself adds about 0.05 ms.
* ``build_ms``: median and p95 of ``--builds`` circuit builds (tunnel to hop 1, then one
  hybrid exchange per hop, each hop's CREATED checked). Evidence is the lab's stand-in:
  a real TPM quote adds the exit's quote time per hop (``bench/attestation.py``).

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2bridge.client.circuit import CircuitLink, build
from lab.circuitlab import RelayExit, dialer, fake_checker, hop_of, start_exits, token_for

A, B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
FRAME = 1514
BATCH = 64


def frame(src: bytes, dst: bytes, size: int, tag: bytes = b"") -> bytes:
    body = (tag + bytes(size))[: size - 14]
    return bytes(10) + dst + src + b"\x88\xb5" + body  # 10-byte virtio-net header


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, round(p * (len(s) - 1))))]


async def circuit(exits: list[RelayExit]) -> CircuitLink:
    return await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker, token_for)


async def throughput(cl: CircuitLink, tail: RelayExit, megabytes: int) -> float:
    total = megabytes * 1_000_000 // FRAME
    payload = frame(A, B, FRAME)
    delivered = 0

    async def drain() -> None:
        nonlocal delivered
        while delivered < total:
            delivered += len(tail.tap.delivered())
            await asyncio.sleep(0.001)

    reader = asyncio.ensure_future(drain())
    start = time.perf_counter()
    sent = 0
    while sent < total:
        n = min(BATCH, total - sent)
        await cl.send_frames([payload] * n)
        sent += n
    with contextlib.suppress(TimeoutError):  # frames dropped on the way: count what arrived
        await asyncio.wait_for(reader, 120)
    seconds = time.perf_counter() - start
    return delivered * FRAME * 8 / seconds / 1e9


async def idle_rtt(cl: CircuitLink, tail: RelayExit, pings: int) -> float:
    samples = []
    for i in range(pings):
        tag = i.to_bytes(4, "big")
        start = time.perf_counter()
        await cl.send_frames([frame(A, B, 98, tag)])
        while not any(f[14:18] == tag for f in tail.tap.delivered()):
            await asyncio.sleep(0)
        tail.tap.inject(frame(B, A, 98, tag)[10:])
        while True:
            got = await cl.recv_frames()
            if any(bytes(f[24:28]) == tag for f in got):
                break
        samples.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)
    return statistics.median(samples) * 1000


async def builds(exits: list[RelayExit], count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        cl = await circuit(exits)
        out.append((time.perf_counter() - start) * 1000)
        await cl.close()
    return out


async def run(megabytes: int, count: int, pings: int) -> dict[str, object]:
    gbps: dict[str, float] = {}
    rtt: dict[str, float] = {}
    build_ms: dict[str, dict[str, float]] = {}
    hop_ms: dict[str, list[float]] = {}
    for n in (1, 3, 5):
        exits = await start_exits(n)
        try:
            cl = await circuit(exits)
            hop_ms[str(n)] = [round(ms, 2) for ms in cl.hop_ms]
            tail = exits[-1]
            # The tail's switch learns where A is, so the echo is unicast.
            await cl.send_frames([frame(A, B, 98)])
            await asyncio.sleep(0.2)
            tail.tap.delivered()
            rtt[str(n)] = round(await idle_rtt(cl, tail, pings), 3)
            gbps[str(n)] = round(await throughput(cl, tail, megabytes), 4)
            await cl.close()
            if n > 1:
                samples = await builds(exits, count)
                build_ms[str(n)] = {
                    "median": round(statistics.median(samples), 1),
                    "p95": round(pct(samples, 0.95), 1),
                }
        finally:
            for x in exits:
                await x.kill()
    return {
        "bench": "multihop",
        "where": "one process, one event loop, loopback (all hops share one core)",
        "tcp1_gbps": None,
        "frame_gbps": gbps,
        "added_rtt_ms": rtt,
        "ratio_3hop": round(gbps["3"] / gbps["1"], 3) if gbps.get("1") else None,
        "ratio_5hop": round(gbps["5"] / gbps["1"], 3) if gbps.get("1") else None,
        "build_ms_p95": {k: v["p95"] for k, v in build_ms.items()},
        "build_ms_median": {k: v["median"] for k, v in build_ms.items()},
        "hop_add_ms_first_build": hop_ms,
        "evidence": "lab stand-in (no TPM quote per hop)",
        "megabytes": megabytes,
        "builds": count,
        "pings": pings,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--pings", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(run(args.megabytes, args.builds, args.pings))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
