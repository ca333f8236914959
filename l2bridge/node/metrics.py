"""Prometheus metrics and the status snapshot shared by the client and the exit.

One :class:`Metrics` per process, on its own registry (never the global one, so two
nodes in one test process do not collide). The data path only bumps plain integers
in :class:`Counters`; the Prometheus collector reads them when scraped, so a frame
costs no lock and no label lookup.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hardware.tap import TapStats


@dataclass(slots=True)
class Counters:
    """Plain counters bumped on the hot path (no locks: ints are updated under the GIL)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rekeys: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    # An exit's tunnel-port connections by what became of them ("admitted", "answered as
    # the decoy", "over a connection cap", ...): its screening ``Summary``'s totals.
    connections: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def add(self, other: Counters) -> None:
        """Count ``other``'s counts here too (a supervisor summing its workers)."""
        self.frames_in += other.frames_in
        self.frames_out += other.frames_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.rekeys += other.rekeys
        # Copied first (one C-level step): another thread may count a new kind meanwhile.
        self.drops.update(dict(other.drops))
        self.connections.update(dict(other.connections))

    @classmethod
    def of_snapshot(cls, snapshot: dict[str, Any]) -> Counters:
        """The counters a ``Metrics.snapshot()`` shows."""
        return cls(
            int(snapshot["frames"]["in"]), int(snapshot["frames"]["out"]),
            int(snapshot["bytes"]["in"]), int(snapshot["bytes"]["out"]),
            int(snapshot["rekeys"]),
            Counter({k: int(v) for k, v in snapshot["drops"].items()}),
            Counter({k: int(v) for k, v in snapshot.get("connections", {}).items()}),
        )  # fmt: skip


class Metrics(Collector):
    """The metrics of one node (``role`` is ``client`` or ``exit``).

    ``gauges`` maps a gauge name to a callable returning its current value, or None
    when unknown (e.g. no attestation yet); unknown gauges are left out of a scrape.
    ``info`` holds plain facts for the status page (node id, exit url, clock source).
    """

    def __init__(self, role: str) -> None:
        self.role = role
        self.started = time.time()
        self.counters = Counters()
        self.gauges: dict[str, Callable[[], float | None]] = {}
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def set_gauge(self, name: str, read: Callable[[], float | None]) -> None:
        with self._lock:
            self.gauges[name] = read

    def watch_tap(self, stats: TapStats) -> None:
        """Software GRO's work on this node's TAP: frames merged away, super-frames cut."""
        self.set_gauge("tap_frames_coalesced", lambda: float(stats.coalesced))
        self.set_gauge("tap_super_frames_cut", lambda: float(stats.segmented))

    def set_info(self, **facts: Any) -> None:
        with self._lock:
            self.info.update(facts)

    def totals(self) -> Counters:
        """The counters to report (a supervisor adds its workers' here)."""
        return self.counters

    def gauge_values(self) -> dict[str, float | None]:
        """Every gauge's current value (None: unknown)."""
        with self._lock:
            gauges = list(self.gauges.items())
        return {name: _safe_read(read) for name, read in gauges}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.totals()
        frames = CounterMetricFamily(
            "shadowmesh_frames", "Ethernet frames carried", labels=["role", "direction"]
        )
        frames.add_metric([self.role, "in"], c.frames_in)
        frames.add_metric([self.role, "out"], c.frames_out)
        yield frames
        octets = CounterMetricFamily(
            "shadowmesh_bytes", "Frame bytes carried", labels=["role", "direction"]
        )
        octets.add_metric([self.role, "in"], c.bytes_in)
        octets.add_metric([self.role, "out"], c.bytes_out)
        yield octets
        drops = CounterMetricFamily(
            "shadowmesh_drops", "Frames or records dropped", labels=["role", "reason"]
        )
        for reason, n in sorted(c.drops.items()):
            drops.add_metric([self.role, reason], n)
        yield drops
        rekeys = CounterMetricFamily(
            "shadowmesh_rekeys", "Completed key rotations", labels=["role"]
        )
        rekeys.add_metric([self.role], c.rekeys)
        yield rekeys
        if c.connections:
            connections = CounterMetricFamily(
                "shadowmesh_connections",
                "Connections to the tunnel port, by what became of them",
                labels=["role", "outcome"],
            )
            for outcome, n in sorted(c.connections.items()):
                connections.add_metric([self.role, outcome], n)
            yield connections
        for name, value in self.gauge_values().items():
            if value is None:
                continue
            g = GaugeMetricFamily(f"shadowmesh_{name}", name.replace("_", " "), labels=["role"])
            g.add_metric([self.role], value)
            yield g

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        """The JSON document served at ``/status`` and printed by ``shadowmesh status``."""
        c = self.totals()
        gauges = self.gauge_values()
        with self._lock:
            info = dict(self.info)
        return {
            "role": self.role,
            "uptime_s": round(time.time() - self.started, 3),
            "frames": {"in": c.frames_in, "out": c.frames_out},
            "bytes": {"in": c.bytes_in, "out": c.bytes_out},
            "rekeys": c.rekeys,
            "drops": dict(sorted(c.drops.items())),
            "connections": dict(sorted(c.connections.items())),
            "gauges": gauges,
            "info": info,
        }


def _safe_read(read: Callable[[], float | None]) -> float | None:
    # A gauge reader that fails must not break a scrape or the status page.
    try:
        value = read()
    except Exception:
        return None
    return None if value is None else float(value)
