"""The exit's virtual Layer-2 switch, sans-I/O.

Ports are named by strings (a client session, the local TAP). ``forward(port, frames, now)``
takes a batch of tunnel frames (``hardware.ethernet``) that arrived on one port and returns
the frames to send out of each other port; nothing here touches a device or a clock.

Behaviour, as an 802.1Q learning bridge with independent VLAN learning:
- source MACs are learned per (VLAN, MAC) with the time last seen, and age out after
  ``ageing_s``; a station that moves is re-learned on its new port; the table and each port
  have a size limit, beyond which frames are still forwarded (flooded) but not learned
  (or, with ``enforce_max_macs``, dropped);
- MACs live on a protected port (``SwitchConfig.protected_ports``: the exit's LAN, so its
  gateway) or on a port with ``sticky_macs`` do not move: a frame from another port with
  such a source is dropped as ``mac_spoof``, so a client cannot take over the gateway's MAC
  and receive everyone's traffic. The protection lasts while the entry is live: a station
  silent for ``ageing_s`` is forgotten and may then be learned anywhere (a real move);
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
DROP_MAC_SPOOF = "mac_spoof"  # source MAC live on a protected or sticky port elsewhere
DROP_MAC_LIMIT = "mac_limit"  # a new source MAC on a port at its enforced max_macs


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
    # Port security (off by default: a client may bridge a whole LAN that moves around).
    # sticky_macs: a MAC learned here stays here until it ages out or the port detaches;
    # another port sending from it meanwhile is dropped (mac_spoof).
    sticky_macs: bool = False
    # enforce_max_macs: past max_macs, frames from new source MACs are dropped (mac_limit)
    # instead of being forwarded unlearned.
    enforce_max_macs: bool = False

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
    # Ports whose live MACs never move to another port (a frame from one elsewhere is
    # dropped as mac_spoof), and which take a MAC back from any port. The switchboard names
    # the exit's TAP (its LAN, with the gateway) LOCAL_PORT.
    protected_ports: frozenset[str] = frozenset({constants.LOCAL_PORT})

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

    def _learn(self, port: str, state: _Port, key: tuple[int, bytes], now: float) -> str | None:
        """Learn (or refresh) ``key`` on ``port``; a drop reason if the frame must go."""
        entry = self._table.get(key)
        if entry is not None and entry[0] != port and now - entry[1] > self.config.ageing_s:
            self._forget(key, entry[0])  # expired, not yet swept: as if never seen
            self.stats.aged += 1
            entry = None
        if entry is not None:
            old = entry[0]
            if old != port:
                if not self._may_move(old, port):
                    return DROP_MAC_SPOOF
                if state.macs >= state.policy.max_macs:
                    if state.policy.enforce_max_macs:
                        return DROP_MAC_LIMIT
                    # The station claims to have moved onto a full port: forget the old
                    # place too, so frames for it flood rather than go to the wrong device.
                    self._forget(key, old)
                    self.stats.not_learned += 1
                    return None
                self._forget(key, old)
                state.macs += 1
                self.stats.moved += 1
            self._table[key] = (port, now)
            return None
        if state.macs >= state.policy.max_macs:
            if state.policy.enforce_max_macs:
                return DROP_MAC_LIMIT
            self.stats.not_learned += 1
            return None
        # Clients filling the whole table must not keep the LAN's stations (the gateway)
        # from being learned and so protected: a protected port has only its own limit.
        if len(self._table) >= self.config.max_macs and port not in self.config.protected_ports:
            self.stats.not_learned += 1
            return None
        self._table[key] = (port, now)
        state.macs += 1
        self.stats.learned += 1
        return None

    def _may_move(self, old: str, new: str) -> bool:
        """Whether a live entry on ``old`` may move to ``new`` (the station moved)."""
        if new in self.config.protected_ports:
            return True  # the exit's own LAN is authoritative for its stations
        if old in self.config.protected_ports:
            return False  # e.g. the LAN gateway: a client sending from it is spoofing
        old_state = self._ports.get(old)
        return old_state is None or not old_state.policy.sticky_macs

    def _forget(self, key: tuple[int, bytes], port: str) -> None:
        del self._table[key]
        state = self._ports.get(port)
        if state is not None:
            state.macs -= 1

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
        table = self._table
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
            key = (vlan, header.src)
            known = table.get(key)
            if known is not None and known[0] == port:
                table[key] = (port, now)  # the common case: a station seen here before
            else:
                refused = self._learn(port, state, key, now)
                if refused is not None:
                    drops[refused] += 1
                    continue
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
