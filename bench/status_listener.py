"""The status listener under idle connections: does a scrape still get through, and fast?

    python bench/status_listener.py [--idle 1000] [--requests 300]

Opens ``--idle`` connections that send nothing (a prober, or a stuck client; those past
the listener's connection limit are closed by it at once), then times ``--requests``
sequential ``GET /health`` and ``GET /metrics`` while they are held, and counts the
process's threads. Bounded: everything is closed at the end. The last stdout line is one
JSON object: idle, idle_kept_open, threads, health_ms_p50/p99, metrics_ms_p50/p99.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2bridge.node.metrics import Metrics
from l2bridge.node.status import StatusServer


def timed(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as reply:
            reply.read()
        out.append((time.perf_counter() - start) * 1000)
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    ns = parser.parse_args()
    metrics = Metrics("exit")
    server = StatusServer(metrics).start()
    host, port = server.address
    idle: list[socket.socket] = []
    try:
        for _ in range(ns.idle):
            idle.append(socket.create_connection((host, port), timeout=5))
        time.sleep(0.5)  # the listener has accepted (or refused) them all
        kept = 0
        for s in idle:
            s.setblocking(False)
            try:
                kept += s.recv(1) != b""
            except BlockingIOError:
                kept += 1  # still open, waiting for our request
        threads = threading.active_count()
        health = timed(server.url + "/health", ns.requests)
        scrape = timed(server.url + "/metrics", ns.requests)
    finally:
        for s in idle:
            s.close()
        server.stop()
    figures = {
        "idle": ns.idle,
        "idle_kept_open": kept,
        "threads": threads,
        "health_ms_p50": round(statistics.median(health), 3),
        "health_ms_p99": round(p99(health), 3),
        "metrics_ms_p50": round(statistics.median(scrape), 3),
        "metrics_ms_p99": round(p99(scrape), 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
