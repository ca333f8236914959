"""Caps on concurrent connections, in total and per source address (sans-I/O).

An exit counts every TCP connection it holds (screened, served by the decoy,
spliced to the fallback, or a tunnel). Over a cap a new connection is closed
before a byte is read or written: what a web server out of
``worker_connections`` does, so a prober learns nothing but "busy". IPv6
sources are counted per /64, the prefix one subscriber usually holds.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from l2bridge.transport.constants import IPV6_SOURCE_PREFIX


def source_key(address: str) -> str:
    """The bucket a peer address is counted in ("198.51.100.7", "2001:db8:1:2::/64")."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not an IP (a Unix socket): its own bucket
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_SOURCE_PREFIX}", strict=False))
    return str(ip)


class ConnectionCaps:
    """Counts open connections; ``open`` says whether one more may be held."""

    def __init__(self, total: int, per_source: int) -> None:
        if total < 1 or per_source < 1:
            raise ValueError("connection caps must be at least 1")
        self.total = total
        self.per_source = per_source
        self._open = 0
        self._by_source: Counter[str] = Counter()

    @property
    def open_count(self) -> int:
        return self._open

    def open(self, source: str) -> bool:
        """Take a slot for a connection from ``source`` (a source_key); False: over a cap."""
        if self._open >= self.total or self._by_source[source] >= self.per_source:
            return False
        self._open += 1
        self._by_source[source] += 1
        return True

    def close(self, source: str) -> None:
        """Give back the slot taken by ``open`` (call once per successful open)."""
        if self._by_source[source] <= 0:
            raise ValueError(f"no open connection from {source}")
        self._by_source[source] -= 1
        if not self._by_source[source]:
            del self._by_source[source]
        self._open -= 1
