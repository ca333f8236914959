"""The sink LAN host of ``bench/load.py``: counts the load's frames and their latency.

Runs inside the sink namespace (``python bench/load_sink.py IFACE...``): one AF_PACKET
socket per interface for the load's EtherType, and a broadcast from the sink's MAC every
``ANNOUNCE_S`` on each so the exits' switches know where it is. Frames carry (phase,
client, seq, send time on CLOCK_MONOTONIC, which every namespace shares). Commands on
stdin, one per line: ``report PHASE`` prints one JSON line (frames, distinct frames,
latency percentiles) for that phase; ``quit`` ends it.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

ETHERTYPE = 0x88B5
SINK_MAC = bytes.fromhex("025e00000001")
HEADER = struct.Struct("!BHIQ")  # phase, client, seq, sent (ns, CLOCK_MONOTONIC)
ANNOUNCE_S = 1.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(ifaces: list[str]) -> None:
    socks = []
    for name in ifaces:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        s.bind((name, 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        socks.append(s)
    announce = b"\xff" * 6 + SINK_MAC + struct.pack("!H", ETHERTYPE) + b"\x00" * 46
    frames: dict[int, int] = {}
    seen: dict[int, set[tuple[int, int]]] = {}
    latency: dict[int, list[float]] = {}
    next_announce = 0.0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        if now >= next_announce:
            for s in socks:
                s.send(announce)
            next_announce = now + ANNOUNCE_S
        readable, _, _ = select.select([*socks, sys.stdin], [], [], 0.2)
        for s in readable:
            if s is sys.stdin:
                line = sys.stdin.readline().split()
                if not line or line[0] == "quit":
                    return
                phase = int(line[1])
                lat = latency.get(phase, [])
                print(json.dumps({
                    "frames": frames.get(phase, 0),
                    "distinct": len(seen.get(phase, ())),
                    "latency_ms_p50": percentile(lat, 0.50),
                    "latency_ms_p99": percentile(lat, 0.99),
                    "latency_ms_max": max(lat) if lat else None,
                }), flush=True)  # fmt: skip
                continue
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                if len(data) < 14 + HEADER.size or data[6:12] == SINK_MAC:
                    continue
                phase, client, seq, sent = HEADER.unpack_from(data, 14)
                if phase == 0:
                    continue
                arrived = time.monotonic_ns()
                frames[phase] = frames.get(phase, 0) + 1
                seen.setdefault(phase, set()).add((client, seq))
                latency.setdefault(phase, []).append((arrived - sent) / 1e6)


if __name__ == "__main__":
    main(sys.argv[1:])
