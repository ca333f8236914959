"""The exit's virtual Layer-2 switch, sans-I/O.

Ports are named by strings (a client session, the local TAP). ``forward(port, frames, now)``
takes a batch of tunnel frames (``hardware.ethernet``) that arrived on one port and returns
the frames to send out of each other port; nothing here touches a device or a clock.

Behaviour, as an 802.1Q learning bridge with independent VLAN learning:
- source MACs are learned per (VLAN, MAC) with the time last seen, and age out after
  ``ageing_s``; a station that moves is re-learned on its new port; the table and each port
  have a size limit, beyond which frames are still forwarded (flooded) but not learned;
- broadcast, multicast and unknown unicast are flooded to every other port allowed on the
  frame's VLAN; each ingress port has two token buckets, one for broadcast + multicast and
  one for unknown-unicast floods (so random destination MACs cannot flood everyone);
- each port has a VLAN allow-list (0 = untagged); a frame on a VLAN its ingress port may not
  use is dropped, and a port only receives frames of its VLANs;
- malformed frames (short, oversized, bad offload header, bad VLAN header), group source
  MACs and frames addressed back to their own port are dropped, and every drop is counted
  by reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from exitnode import constants
from exitnode.errors import SwitchError
from exitnode.ratelimit import TokenBucket
from hardware import ethernet

Buffer: TypeAlias = bytes | bytearray | memoryview

# Drop reasons (stable names: they become metric labels).
DROP_VLAN_DENIED = "vlan_denied"
DROP_BAD_SOURCE = "bad_source"
DROP_RATE_LIMITED = "rate_limited"  # broadcast or multicast over the port's rate
DROP_FLOOD_LIMITED = "unknown_unicast_limited"  # unknown unicast over the port's flood rate
DROP_SAME_PORT = "same_port"
DROP_NO_EGRESS = "no_egress"


def _bucket_ok(rate: float, burst: float) -> bool:
    return math.isfinite(rate) and rate > 0 and math.isfinite(burst) and burst >= 1


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """What one port may do. ``vlans`` None means every VLAN (a trunk, e.g. the local TAP)."""

    vlans: frozenset[int] | None = frozenset({ethernet.UNTAGGED})
    broadcast_rate: float = constants.BROADCAST_RATE
    broadcast_burst: float = constants.BROADCAST_BURST
    max_macs: int = constants.MAX_MACS_PER_PORT
    flood_rate: float = constants.UNKNOWN_UNICAST_RATE
    flood_burst: float = constants.UNKNOWN_UNICAST_BURST

    def __post_init__(self) -> None:
        if self.vlans is not None:
            for vid in self.vlans:
                if vid != ethernet.UNTAGGED and not constants.VLAN_MIN <= vid <= constants.VLAN_MAX:
                    raise SwitchError(f"vlan {vid}: must be 0 (untagged) or 1-4094")
        if not _bucket_ok(self.broadcast_rate, self.broadcast_burst) or self.max_macs < 0:
            raise SwitchError("broadcast rate/burst must be positive, max_macs not negative")
        if not _bucket_ok(self.flood_rate, self.flood_burst):
            raise SwitchError("unknown-unicast flood rate/burst must be positive")

    def allows(self, vlan: int) -> bool:
        return self.vlans is None or vlan in self.vlans


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    ageing_s: float = constants.MAC_AGEING_S
    max_macs: int = constants.MAX_MACS
    mtu: int = constants.DEFAULT_MTU  # largest non-GSO payload a port may send

    @property
    def max_plain_frame(self) -> int:
        return self.mtu + ethernet.ETH_HEADER_LEN + ethernet.VLAN_TAG_LEN


@dataclass(slots=True)
class SwitchStats:
    frames_in: int = 0
    forwarded: int = 0  # unicast to a learned port
    flooded: int = 0  # broadcast, multicast, unknown unicast
    learned: int = 0
    moved: int = 0
    aged: int = 0
    not_learned: int = 0  # table or port limit reached
    drops: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Port:
    policy: PortPolicy
    broadcasts: TokenBucket
    floods: TokenBucket  # unknown unicast
    macs: int = 0


class Switch:
    """A learning switch; see the module docstring. Not thread-safe: one driver owns it."""

    def __init__(self, config: SwitchConfig | None = None) -> None:
        self.config = config or SwitchConfig()
        self.stats = SwitchStats()
        self._ports: dict[str, _Port] = {}
        # (vlan, mac) -> (port, last seen)
        self._table: dict[tuple[int, bytes], tuple[str, float]] = {}

    # -- ports ---------------------------------------------------------------------------
    def attach(self, port: str, policy: PortPolicy, now: float) -> None:
        if port in self._ports:
            raise SwitchError(f"port {port!r} already attached")
        broadcasts = TokenBucket(policy.broadcast_rate, policy.broadcast_burst, now)
        floods = TokenBucket(policy.flood_rate, policy.flood_burst, now)
        self._ports[port] = _Port(policy, broadcasts, floods)

    def detach(self, port: str) -> None:
        """Remove a port and forget every MAC learned on it."""
        if self._ports.pop(port, None) is None:
            raise SwitchError(f"port {port!r} is not attached")
        for key in [k for k, (p, _) in self._table.items() if p == port]:
            del self._table[key]

    @property
    def ports(self) -> list[str]:
        return list(self._ports)

    # -- MAC table -----------------------------------------------------------------------
    def lookup(self, mac: bytes, vlan: int, now: float) -> str | None:
        entry = self._table.get((vlan, mac))
        if entry is None or now - entry[1] > self.config.ageing_s:
            return None
        return entry[0]

    def age(self, now: float) -> int:
        """Drop entries not seen for ``ageing_s``; returns how many went."""
        limit = now - self.config.ageing_s
        stale = [k for k, (_, seen) in self._table.items() if seen < limit]
        for key in stale:
            port, _ = self._table.pop(key)
            state = self._ports.get(port)
            if state is not None:
                state.macs -= 1
        self.stats.aged += len(stale)
        return len(stale)

    def __len__(self) -> int:
        return len(self._table)

    def _learn(self, port: str, state: _Port, key: tuple[int, bytes], now: float) -> None:
        entry = self._table.get(key)
        if entry is not None:
            old = entry[0]
            if old != port:
                old_state = self._ports.get(old)
                if old_state is not None:
                    old_state.macs -= 1
                if state.macs >= state.policy.max_macs:
                    # The station claims to have moved onto a full port: forget the old
                    # place too, so frames for it flood rather than go to the wrong device.
                    del self._table[key]
                    self.stats.not_learned += 1
                    return
                state.macs += 1
                self.stats.moved += 1
            self._table[key] = (port, now)
            return
        if len(self._table) >= self.config.max_macs or state.macs >= state.policy.max_macs:
            self.stats.not_learned += 1
            return
        self._table[key] = (port, now)
        state.macs += 1
        self.stats.learned += 1

    # -- forwarding ----------------------------------------------------------------------
    def forward(self, port: str, frames: Iterable[Buffer], now: float) -> dict[str, list[Buffer]]:
        """Switch a batch that arrived on ``port``; returns egress port -> frames (in order).

        Raises ``SwitchError`` only if ``port`` is not attached (a driver bug).
        """
        state = self._ports.get(port)
        if state is None:
            raise SwitchError(f"port {port!r} is not attached")
        out: dict[str, list[Buffer]] = {}
        drops = self.stats.drops
        stats = self.stats
        max_plain = self.config.max_plain_frame
        for frame in frames:
            stats.frames_in += 1
            try:
                header = ethernet.parse(frame, max_plain)
            except ethernet.FrameError as exc:
                drops[exc.reason] += 1
                continue
            vlan = header.vlan
            if not state.policy.allows(vlan):
                drops[DROP_VLAN_DENIED] += 1
                continue
            if ethernet.is_group(header.src):
                drops[DROP_BAD_SOURCE] += 1
                continue
            self._learn(port, state, (vlan, header.src), now)
            if ethernet.is_group(header.dst):
                if not state.broadcasts.take(now):
                    drops[DROP_RATE_LIMITED] += 1
                    continue
                self._flood(port, vlan, frame, out)
                continue
            egress = self.lookup(header.dst, vlan, now)
            if egress is None:
                if not state.floods.take(now):
                    drops[DROP_FLOOD_LIMITED] += 1
                    continue
                self._flood(port, vlan, frame, out)
            elif egress == port:
                drops[DROP_SAME_PORT] += 1
            else:
                out.setdefault(egress, []).append(frame)
                stats.forwarded += 1
        return out

    def _flood(self, ingress: str, vlan: int, frame: Buffer, out: dict[str, list[Buffer]]) -> None:
        sent = False
        for name, state in self._ports.items():
            if name != ingress and state.policy.allows(vlan):
                out.setdefault(name, []).append(frame)
                sent = True
        if sent:
            self.stats.flooded += 1
        else:
            self.stats.drops[DROP_NO_EGRESS] += 1
