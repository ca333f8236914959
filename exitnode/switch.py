"""The exit's virtual Layer-2 switch, sans-I/O.

Ports are named by strings (a client session, the local TAP) and belong to a *device* (a
client identity; the TAP is its own device). ``forward(port, frames, now)`` takes a batch
of tunnel frames (``hardware.ethernet``) that arrived on one port and returns the frames
to send out of each other port; nothing here touches a device or a clock.

Behaviour, as an 802.1Q learning bridge with independent VLAN learning, built so that one
client cannot reach into another client's traffic:
- source MACs are learned per (VLAN, MAC) with the time last seen, and age out after
  ``ageing_s``; a station moving between ports of the same device is re-learned;
- MACs are sticky (port security) by default: a MAC live on one device's port does not
  move to another device's port (that frame is dropped as ``mac_spoof``), and MACs of a
  protected port (``SwitchConfig.protected_ports``: the exit's LAN, with its gateway)
  never move to a client; the LAN takes any MAC back. A MAC silent for ``ageing_s`` is
  forgotten and may then be learned anywhere. When a client port detaches, ``detach``
  returns a departure notice for the LAN naming the stations and addresses it held, and a
  notice arriving on the LAN port frees those entries there (``exitnode.departures``), so a
  client whose traffic moves to another exit on the same LAN is not refused there; and
  when a client port learns a station or an address, and every ``HOLDING_REFRESH_S`` for
  all of them (``holdings``), a holding notice tells the other exits on the LAN, whose
  switches take it as those stations seen on their LAN port (kept ``holding_ttl_s``), so
  their clients cannot take a station that only ever sent unicast to the gateway;
- a device has at most ``max_tunnels_per_device`` ports and ``PortPolicy.max_macs`` MACs
  over all of them; past that, new source MACs are dropped (``mac_limit``). Every client
  port has ``reserved_macs`` table entries of its own; the rest of the table is shared,
  and when the shared part is full only reserved space is learned (``mac_table_full``),
  so one device filling the table cannot make other clients' unicast flood;
- ARP and Neighbor Discovery are inspected (``exitnode.neighbors``): an address claimed
  in ARP/ND is bound to the first device that claimed it while live (``ageing_s``), a
  device has at most ``max_ips`` of them, the LAN's addresses and
  ``SwitchConfig.protected_ips`` (the gateway) can only be claimed by the LAN, link-layer
  addresses inside must be the frame's source, and clients send no Router Advertisements;
- a client port sends no IPv4/IPv6 packet from an address bound (ARP/ND, live) to a port of
  the LAN or of another device, nor from ``protected_ips`` (IP source guard: dropped as
  ``ip_spoof``); an address nobody holds may be used (routers at the sites), the flow fast
  path included;
- a client port whose policy does not say ``dhcp_server`` sends no DHCP/DHCPv6 server
  message (``exitnode.dhcpguard``; dropped as ``dhcp_server``, and its port named once in
  ``refusals`` for the driver to log), the flow fast path included;
- broadcast, multicast and unknown unicast are flooded to every other port allowed on the
  frame's VLAN; each *device* has two token buckets (shared by all its tunnels), one for
  broadcast + multicast and one for unknown-unicast floods;
- each port has a VLAN allow-list (0 = untagged); a frame on a VLAN its ingress port may not
  use is dropped, and a port only receives frames of its VLANs;
- malformed frames (short, oversized, a virtio_net_hdr that does not describe the frame,
  bad VLAN header, tag types not configured), group source MACs and frames addressed back
  to their own port are dropped, and every drop is counted by reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from exitnode import constants, departures, dhcpguard, neighbors
from exitnode.errors import PortRefused, SwitchError
from exitnode.ratelimit import TokenBucket
from hardware import ethernet

# The flow fast path's key: the offload header and dst, src and EtherType.
FLOW_KEY_LEN = ethernet.OFFLOAD_HEADER_LEN + ethernet.ETH_HEADER_LEN
_UNTAGGED_L3 = FLOW_KEY_LEN  # where L3 starts in a frame without a VLAN tag
_PROTO_AT = _UNTAGGED_L3 + 9  # an untagged IPv4 packet's protocol byte
_SRC_AT = _UNTAGGED_L3 + 12  # an untagged IPv4 packet's source address
_UDP = dhcpguard.UDP
_IPV4_TYPE = ethernet.ETHERTYPE_IPV4.to_bytes(2, "big")
_DHCP_V4_PORTS = (b"\x00\x43", b"\x00\x44")  # 67, 68
# EtherTypes a DHCP server's message may be behind (a C-tag inside an S-tag included).
_MAY_CARRY_DHCP = (ethernet.ETHERTYPE_IPV4, ethernet.ETHERTYPE_IPV6, ethernet.TPID_8021Q)
_IP_TYPES = (ethernet.ETHERTYPE_IPV4, ethernet.ETHERTYPE_IPV6)

Buffer: TypeAlias = bytes | bytearray | memoryview
Key: TypeAlias = tuple[int, bytes]  # (vlan, MAC or IP address)

# Drop reasons (stable names: they become metric labels).
DROP_VLAN_DENIED = "vlan_denied"
DROP_BAD_SOURCE = "bad_source"
DROP_RATE_LIMITED = "rate_limited"  # broadcast or multicast over the device's rate
DROP_FLOOD_LIMITED = "unknown_unicast_limited"  # unknown unicast over the device's flood rate
DROP_SAME_PORT = "same_port"
DROP_NO_EGRESS = "no_egress"
DROP_MAC_SPOOF = "mac_spoof"  # source MAC live on another device's or the LAN's port
DROP_MAC_LIMIT = "mac_limit"  # a new source MAC from a device at its max_macs
DROP_MAC_TABLE_FULL = "mac_table_full"  # shared table full and the port's reserve used
DROP_IP_SPOOF = "ip_spoof"  # ARP/ND claim of an address bound elsewhere or protected
DROP_IP_LIMIT = "ip_limit"  # a device claiming more than max_ips addresses
DROP_IP_TABLE_FULL = "ip_table_full"
DROP_TUNNEL_LIMIT = "tunnel_limit"  # a port refused: the device has max tunnels already
DROP_SWITCH_FULL = "switch_full"  # a port refused: max_ports client ports attached


def _dhcp(frame: Buffer) -> bool:
    """For a fast-path frame carrying UDP at the IPv4 offset: whether it is an untagged
    IPv4 DHCP server message (the flow key holds the EtherType). Most UDP is to other ports
    and is let go after one look at the destination port (where the receiver reads it: a
    packet too short to have one there is dropped by the receiver itself)."""
    at = _UNTAGGED_L3 + (frame[_UNTAGGED_L3] & 0x0F) * 4 + 2
    return (
        frame[at : at + 2] in _DHCP_V4_PORTS
        and frame[FLOW_KEY_LEN - 2 : FLOW_KEY_LEN] == _IPV4_TYPE
        and dhcpguard.ipv4_server(frame, _UNTAGGED_L3)
    )


def _source_address(frame: Buffer, header: ethernet.EthernetHeader) -> bytes | None:
    """An IPv4 or IPv6 packet's source address (None: too short to have one)."""
    at = header.l3
    if header.ethertype == ethernet.ETHERTYPE_IPV4:
        return bytes(frame[at + 12 : at + 16]) if len(frame) >= at + 20 else None
    return bytes(frame[at + 8 : at + 24]) if len(frame) >= at + 40 else None


def _bucket_ok(rate: float, burst: float) -> bool:
    return math.isfinite(rate) and rate > 0 and math.isfinite(burst) and burst >= 1


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """What one port may do. ``vlans`` None means every VLAN (a trunk, e.g. the local TAP).

    ``max_macs``, ``max_ips`` and the two rates are per device: every port of a device
    shares them (the first port's policy sets the device's buckets).
    """

    vlans: frozenset[int] | None = frozenset({ethernet.UNTAGGED})
    broadcast_rate: float = constants.BROADCAST_RATE
    broadcast_burst: float = constants.BROADCAST_BURST
    max_macs: int = constants.MAX_MACS_PER_PORT
    flood_rate: float = constants.UNKNOWN_UNICAST_RATE
    flood_burst: float = constants.UNKNOWN_UNICAST_BURST
    max_ips: int = constants.MAX_IPS_PER_DEVICE
    # sticky_macs: a MAC learned here stays here until it ages out or the port detaches;
    # another device sending from it meanwhile is dropped (mac_spoof). Off only for a
    # port that must let stations roam to other devices.
    sticky_macs: bool = True
    # enforce_max_macs: past max_macs (or the table's room), frames from new source MACs
    # are dropped; off, they are forwarded unlearned (their replies flood).
    enforce_max_macs: bool = True
    # dhcp_server: the port may answer DHCP/DHCPv6 (exitnode.dhcpguard); off, a client's
    # server messages are dropped. Protected ports (the LAN) always may.
    dhcp_server: bool = False

    def __post_init__(self) -> None:
        if self.vlans is not None:
            for vid in self.vlans:
                if vid != ethernet.UNTAGGED and not constants.VLAN_MIN <= vid <= constants.VLAN_MAX:
                    raise SwitchError(f"vlan {vid}: must be 0 (untagged) or 1-4094")
        if not _bucket_ok(self.broadcast_rate, self.broadcast_burst) or self.max_macs < 0:
            raise SwitchError("broadcast rate/burst must be positive, max_macs not negative")
        if not _bucket_ok(self.flood_rate, self.flood_burst):
            raise SwitchError("unknown-unicast flood rate/burst must be positive")
        if self.max_ips < 0:
            raise SwitchError("max_ips must not be negative")

    def allows(self, vlan: int) -> bool:
        return self.vlans is None or vlan in self.vlans


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    ageing_s: float = constants.MAC_AGEING_S
    max_macs: int = constants.MAX_MACS
    mtu: int = constants.DEFAULT_MTU  # largest non-GSO payload a port may send
    # Ports whose live MACs and addresses never move to another port (a frame from one
    # elsewhere is dropped), and which take a MAC or address back from any port. The
    # switchboard names the exit's TAP (its LAN, with the gateway) LOCAL_PORT.
    protected_ports: frozenset[str] = frozenset({constants.LOCAL_PORT})
    # Addresses (4-byte IPv4 / 16-byte IPv6) only a protected port may claim in ARP/ND,
    # seen or not: the LAN gateway's.
    protected_ips: frozenset[bytes] = frozenset()
    max_tunnels_per_device: int = constants.MAX_TUNNELS_PER_DEVICE
    # Table entries reserved for each of up to max_ports client ports (attached or not);
    # only the rest of max_macs is shared, so a port always has room for its first few.
    max_ports: int = constants.MAX_PORTS
    reserved_macs: int = constants.RESERVED_MACS_PER_PORT
    max_ip_bindings: int = constants.MAX_IP_BINDINGS
    # Tag protocol ids read as a VLAN tag; any other tag type is dropped (unknown_tpid).
    tag_tpids: frozenset[int] = frozenset({ethernet.TPID_8021Q})
    # Send departure notices to the protected ports when a client port detaches.
    announce_departures: bool = True
    # Send holding notices to the protected ports (``forward``, ``holdings``).
    announce_holdings: bool = True
    # How long a station or address named only by holding notices stays on the LAN port.
    holding_ttl_s: float = constants.HOLDING_TTL_S

    def __post_init__(self) -> None:
        if self.max_tunnels_per_device < 1 or self.reserved_macs < 0 or self.max_ports < 1:
            raise SwitchError("max_tunnels_per_device, max_ports >= 1; reserved_macs >= 0")
        if self.shared_macs < 0:
            raise SwitchError("max_macs must hold reserved_macs for each of max_ports")
        if ethernet.TPID_8021Q not in self.tag_tpids or not self.tag_tpids <= ethernet.TAG_TPIDS:
            raise SwitchError("tag_tpids: 0x8100 and known tag types (0x88a8, 0x9100-0x9300)")
        for ip in self.protected_ips:
            if len(ip) not in (4, 16):
                raise SwitchError("protected_ips: 4-byte IPv4 or 16-byte IPv6 addresses")

    @property
    def shared_macs(self) -> int:
        """Table entries beyond the ports' reserves, learned first come first served."""
        return self.max_macs - self.max_ports * self.reserved_macs

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
    not_learned: int = 0  # table or device limit reached (enforce_max_macs off)
    departed: int = 0  # LAN entries freed by another exit's departure notice
    held: int = 0  # stations put or kept on the LAN port by another exit's holding notice
    drops: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Device:
    broadcasts: TokenBucket
    floods: TokenBucket  # unknown unicast
    ports: set[str]
    macs: int = 0
    ips: int = 0
    dhcp_refused: bool = False  # told the driver once (``Switch.refusals``)


@dataclass(slots=True)
class _Port:
    policy: PortPolicy
    name: str
    device: str
    dev: _Device
    protected: bool
    macs: int = 0


# A port's last flow, kept between calls to ``forward``: (flow key, egress port, source
# key, destination key, the IPv4 source address its frames were let through with (None:
# not IPv4, or from a protected port) and the address bindings' generation then).
_Flow: TypeAlias = tuple[bytes, str, Key, Key, bytes | None, int]


class Switch:
    """A learning switch; see the module docstring. Not thread-safe: one driver owns it."""

    # Keep each port's last flow between calls (``forward``); False: only within a batch.
    flow_cache = True

    def __init__(self, config: SwitchConfig | None = None) -> None:
        self.config = config or SwitchConfig()
        self.stats = SwitchStats()
        self._ports: dict[str, _Port] = {}
        self._devices: dict[str, _Device] = {}
        self._table: dict[Key, tuple[str, float]] = {}  # (vlan, MAC) -> (port, last seen)
        self._ips: dict[Key, tuple[str, float]] = {}  # (vlan, IP) -> (port, last seen)
        self._shared_used = 0  # entries of client ports beyond their reserve
        self._clients = 0  # client (not protected) ports attached
        self._notice_source = departures.new_source()  # our notices' source MAC
        self._flows: dict[str, _Flow] = {}  # each port's last flow (``forward``)
        # Stations and addresses client ports took during this ``forward`` (to announce).
        self._new_macs: list[Key] = []
        self._new_ips: list[Key] = []
        # Bumped whenever an address is bound to another port or unbound: a flow's
        # source-address verdict (IP source guard) holds while it is unchanged.
        self._ip_generation = 0
        # (port, drop reason) the driver should tell the operator about, once per device
        # while it stays attached (a DHCP server at a site not trusted to run one).
        self.refusals: list[tuple[str, str]] = []

    # -- ports ---------------------------------------------------------------------------
    def attach(self, port: str, policy: PortPolicy, now: float, device: str | None = None) -> None:
        """Add ``port`` for ``device`` (default: a device of its own).

        Raises ``PortRefused`` when the device already has ``max_tunnels_per_device``
        ports, or ``max_ports`` client ports are attached.
        """
        if port in self._ports:
            raise SwitchError(f"port {port!r} already attached")
        owner = port if device is None else device
        protected = port in self.config.protected_ports
        dev = self._devices.get(owner)
        if dev is not None and len(dev.ports) >= self.config.max_tunnels_per_device:
            self.stats.drops[DROP_TUNNEL_LIMIT] += 1
            raise PortRefused(DROP_TUNNEL_LIMIT)
        if not protected and self._clients >= self.config.max_ports:
            self.stats.drops[DROP_SWITCH_FULL] += 1
            raise PortRefused(DROP_SWITCH_FULL)
        if dev is None:
            dev = _Device(
                TokenBucket(policy.broadcast_rate, policy.broadcast_burst, now),
                TokenBucket(policy.flood_rate, policy.flood_burst, now),
                set(),
            )
            self._devices[owner] = dev
        dev.ports.add(port)
        self._clients += not protected
        self._ports[port] = _Port(policy, port, owner, dev, protected)

    def detach(self, port: str) -> dict[str, list[Buffer]]:
        """Remove a port and forget every MAC and address learned on it.

        Returns the frames to send: for a client port (with ``announce_departures``), a
        departure notice to each protected port naming what the port held."""
        state = self._ports.get(port)
        if state is None:
            raise SwitchError(f"port {port!r} is not attached")
        macs = [k for k, (p, _) in self._table.items() if p == port]
        ips = [k for k, (p, _) in self._ips.items() if p == port]
        for key in macs:
            self._forget(key, port)
        for key in ips:
            self._unbind(key, port)
        del self._ports[port]
        self._flows.pop(port, None)
        self._clients -= not state.protected
        state.dev.ports.discard(port)
        if not state.dev.ports:
            del self._devices[state.device]
        if state.protected or not self.config.announce_departures:
            return {}
        return self._to_lan(departures.encode(self._notice_source, macs, ips))

    @property
    def ports(self) -> list[str]:
        return list(self._ports)

    def device_ports(self, device: str) -> int:
        dev = self._devices.get(device)
        return 0 if dev is None else len(dev.ports)

    # -- MAC table -----------------------------------------------------------------------
    def lookup(self, mac: bytes, vlan: int, now: float) -> str | None:
        entry = self._table.get((vlan, mac))
        if entry is None or now - entry[1] > self.config.ageing_s:
            return None
        return entry[0]

    def owner(self, ip: bytes, vlan: int, now: float) -> str | None:
        """The port an address is bound to (ARP/ND), or None."""
        entry = self._ips.get((vlan, ip))
        if entry is None or now - entry[1] > self.config.ageing_s:
            return None
        return entry[0]

    def age(self, now: float) -> int:
        """Drop MAC entries and address bindings not seen for ``ageing_s``; MACs gone."""
        limit = now - self.config.ageing_s
        stale = [(k, p) for k, (p, seen) in self._table.items() if seen < limit]
        for key, port in stale:
            self._forget(key, port)
        for key, port in [(k, p) for k, (p, seen) in self._ips.items() if seen < limit]:
            self._unbind(key, port)
        self.stats.aged += len(stale)
        return len(stale)

    def holdings(self, now: float) -> dict[str, list[Buffer]]:
        """Holding notices naming every live station and address of the client ports, for
        each protected port (the driver sends them every ``HOLDING_REFRESH_S``)."""
        if not self.config.announce_holdings:
            return {}
        limit = now - self.config.ageing_s
        clients = {name for name, p in self._ports.items() if not p.protected}
        macs = [k for k, (p, seen) in self._table.items() if p in clients and seen >= limit]
        ips = [k for k, (p, seen) in self._ips.items() if p in clients and seen >= limit]
        return self._to_lan(departures.encode(self._notice_source, macs, ips, held=True))

    def farewell(self) -> list[bytes]:
        """The departure notice naming every station and address the client ports hold,
        without offload header: what the LAN should hear if this switch's process died
        (``exitnode.workers``: the supervisor sends it into the bridge for a dead worker)."""
        clients = {name for name, p in self._ports.items() if not p.protected}
        macs = [k for k, (p, _) in self._table.items() if p in clients]
        ips = [k for k, (p, _) in self._ips.items() if p in clients]
        cut = ethernet.OFFLOAD_HEADER_LEN
        return [frame[cut:] for frame in departures.encode(self._notice_source, macs, ips)]

    def _announce(self, out: dict[str, list[Buffer]]) -> None:
        """Add a holding notice for what client ports took in this ``forward``."""
        notice = departures.encode(self._notice_source, self._new_macs, self._new_ips, held=True)
        self._new_macs, self._new_ips = [], []
        for name, frames in self._to_lan(notice).items():
            out.setdefault(name, []).extend(frames)

    def _to_lan(self, notice: list[bytes]) -> dict[str, list[Buffer]]:
        """``notice``'s frames for each protected port; nothing when there are none."""
        if not notice:
            return {}
        return {name: list(notice) for name, p in self._ports.items() if p.protected}

    def __len__(self) -> int:
        return len(self._table)

    @property
    def bindings(self) -> int:
        """Addresses bound to ports by ARP/ND inspection (live or not yet swept)."""
        return len(self._ips)

    def _learn(self, state: _Port, key: Key, now: float) -> str | None:
        """Learn (or refresh) ``key`` on ``state``'s port; a drop reason if the frame must go."""
        entry = self._table.get(key)
        if entry is not None and now - entry[1] > self.config.ageing_s:
            self._forget(key, entry[0])  # expired, not yet swept: as if never seen
            self.stats.aged += 1
            entry = None
        old = None if entry is None else self._ports.get(entry[0])
        if entry is not None and not self._may_move(old, state):
            return DROP_MAC_SPOOF
        refused = self._room(state, old)
        if refused is not None and state.policy.enforce_max_macs:
            return refused  # a station moving onto a full port stays where it was
        if entry is not None:
            # The station moved: its old place is wrong either way.
            self._forget(key, entry[0])
            self.stats.moved += 1
        if refused is not None:
            self.stats.not_learned += 1  # forwarded unlearned (replies flood)
            return None
        self._table[key] = (state.name, now)
        if not state.protected:
            if state.macs >= self.config.reserved_macs:
                self._shared_used += 1
            if self.config.announce_holdings:
                self._new_macs.append(key)
        state.macs += 1
        state.dev.macs += 1
        if entry is None:
            self.stats.learned += 1
        return None

    def _room(self, state: _Port, leaving: _Port | None) -> str | None:
        """Why ``state``'s port may not learn one more MAC (which ``leaving`` gives up)."""
        dev_macs = state.dev.macs - (leaving is not None and leaving.dev is state.dev)
        if dev_macs >= state.policy.max_macs:
            return DROP_MAC_LIMIT
        if state.protected or state.macs < self.config.reserved_macs:
            return None  # the LAN has only its own limit; a port always has its reserve
        freed = (
            leaving is not None
            and not leaving.protected
            and leaving.macs > self.config.reserved_macs
        )
        if self._shared_used - freed >= self.config.shared_macs:
            return DROP_MAC_TABLE_FULL
        return None

    def _may_move(self, old: _Port | None, new: _Port) -> bool:
        """Whether a live entry on ``old`` may move to ``new`` (the station moved)."""
        if new.protected or old is None:
            return True  # the exit's own LAN is authoritative for its stations
        if old.protected:
            return False  # e.g. the LAN gateway: a client sending from it is spoofing
        if old.device == new.device:
            return True  # one device's tunnels (a failover overlap)
        return not old.policy.sticky_macs

    def _forget(self, key: Key, port: str) -> None:
        del self._table[key]
        state = self._ports.get(port)
        if state is not None:
            state.macs -= 1
            state.dev.macs -= 1
            if not state.protected and state.macs >= self.config.reserved_macs:
                self._shared_used -= 1

    # -- ARP / ND bindings ---------------------------------------------------------------
    def _claim(self, state: _Port, vlan: int, claim: neighbors.Claim, now: float) -> str | None:
        """Check then bind every address ``claim`` holds; a drop reason if refused."""
        if claim.router and not state.protected:
            return neighbors.DROP_ND_ROUTER
        fresh: list[Key] = []
        for ip in claim.addresses:
            key = (vlan, ip)
            if ip in self.config.protected_ips and not state.protected:
                return DROP_IP_SPOOF
            entry = self._ips.get(key)
            if entry is not None and now - entry[1] <= self.config.ageing_s:
                if entry[0] == state.name:
                    continue
                old = self._ports.get(entry[0])
                if not (state.protected or old is None or old.device == state.device):
                    return DROP_IP_SPOOF
            fresh.append(key)
        # Addresses new to this device, and new to the table, count against the limits.
        new_to_device = sum(1 for key in fresh if self._ip_device(key) is not state.dev)
        new_to_table = sum(1 for key in fresh if key not in self._ips)
        if len(self._ips) + new_to_table > self.config.max_ip_bindings:
            if state.protected:
                return None  # the LAN is not refused; its addresses just go unbound
            return DROP_IP_TABLE_FULL
        if not state.protected and state.dev.ips + new_to_device > state.policy.max_ips:
            return DROP_IP_LIMIT
        for key in fresh:
            entry = self._ips.get(key)
            if entry is not None:
                self._unbind(key, entry[0])
            state.dev.ips += 1
        for ip in claim.addresses:
            self._ips[(vlan, ip)] = (state.name, now)
        if fresh:
            self._ip_generation += 1
        if fresh and not state.protected and self.config.announce_holdings:
            self._new_ips.extend(fresh)
        return None

    def _ip_device(self, key: Key) -> _Device | None:
        entry = self._ips.get(key)
        owner = None if entry is None else self._ports.get(entry[0])
        return None if owner is None else owner.dev

    def _unbind(self, key: Key, port: str) -> None:
        del self._ips[key]
        self._ip_generation += 1
        state = self._ports.get(port)
        if state is not None:
            state.dev.ips -= 1

    def _notice(
        self, state: _Port, frame: Buffer, header: ethernet.EthernetHeader, now: float
    ) -> None:
        """Obey a notice that arrived on ``state`` (a protected port). A departure: forget
        the stations and addresses it names that are held by that same port. A holding:
        see ``_hold``."""
        try:
            notice = departures.decode(frame, header)
        except departures.BadNotice:
            self.stats.drops[departures.DROP_MALFORMED] += 1
            return
        if notice.held:
            self._hold(state, notice, now)
            return
        for key in notice.macs:
            entry = self._table.get(key)
            if entry is not None and entry[0] == state.name:
                self._forget(key, state.name)
                self.stats.departed += 1
        for key in notice.ips:
            entry = self._ips.get(key)
            if entry is not None and entry[0] == state.name:
                self._unbind(key, state.name)

    def _hold(self, state: _Port, notice: departures.Notice, now: float) -> None:
        """Take a holding notice as the stations it names sending a frame on ``state`` (a
        protected port) and its addresses claimed there in ARP/ND: learned there (taken
        from a client port of ours, as such a frame would), live ``holding_ttl_s`` from
        ``now`` unless seen there later than that. An entry the port's own traffic keeps
        live for longer keeps its time."""
        ageing = self.config.ageing_s
        seen = now - max(0.0, ageing - self.config.holding_ttl_s)
        for key in notice.macs:
            entry = self._table.get(key)
            if entry is None or entry[0] != state.name or now - entry[1] > ageing:
                self._learn(state, key, now)
                entry = self._table.get(key)
                if entry is None or entry[0] != state.name:
                    continue  # the LAN's own limit: forwarded unlearned, as its frames are
                self._table[key] = (state.name, seen)
            elif entry[1] < seen:
                self._table[key] = (state.name, seen)
            self.stats.held += 1
        by_vlan: dict[int, list[bytes]] = {}
        for vlan, ip in notice.ips:
            by_vlan.setdefault(vlan, []).append(ip)
        for vlan, ips in by_vlan.items():
            kept = {}
            for ip in ips:
                entry = self._ips.get((vlan, ip))
                if entry is not None and entry[0] == state.name and now - entry[1] <= ageing:
                    kept[ip] = entry[1]
            self._claim(state, vlan, neighbors.Claim(tuple(ips)), now)
            for ip in ips:
                entry = self._ips.get((vlan, ip))
                if entry is not None and entry[0] == state.name:
                    self._ips[(vlan, ip)] = (state.name, max(seen, kept.get(ip, seen)))

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
        tpids = self.config.tag_tpids
        table = self._table
        dev = state.dev
        inspected = (ethernet.ETHERTYPE_ARP, ethernet.ETHERTYPE_IPV6)
        # Flow fast path: a frame whose offload header (all zero: a plain frame) and
        # Ethernet header (dst, src, type) are byte for byte those of the frame just
        # forwarded to one port gets every verdict that frame got (same policy, same
        # learning at the same ``now``, same lookup); only its size is left to check.
        # Any other outcome clears it, so a frame that changes the table in between
        # (a MAC moving, say) always takes the full path.
        #
        # Across calls (``flow_cache``), the port's last flow is taken up again by a frame
        # with the same headers only while the full path would give it the same verdicts:
        # its source still live on this port and its destination still live on the egress
        # port at ``now`` (the entries and the ageing the full path checks; the policies
        # are the ports', and a detached port's flow is dropped). The source's entry is
        # refreshed as the full path refreshes it.
        #
        # A flow's frames share their Ethernet header, not what is inside: on a port that
        # may not answer DHCP, an IPv4 UDP frame of the flow is still looked at (``_dhcp``).
        #
        # So is an IPv4 frame's source address from a client port (IP source guard): the
        # flow keeps the address its frames were let through with, and a frame from another
        # address, or after any address was bound elsewhere or unbound, takes the full path.
        flow_key: bytes | None = None
        flow_src: bytes | None = None
        flow_out: list[Buffer] = []
        flow: _Flow | None = self._flows.get(port) if self.flow_cache else None
        ageing = self.config.ageing_s
        guard = not state.protected and not state.policy.dhcp_server
        for frame in frames:
            stats.frames_in += 1
            if flow_key is not None:
                if (
                    frame[:FLOW_KEY_LEN] == flow_key
                    and len(frame) - ethernet.OFFLOAD_HEADER_LEN <= max_plain
                    and (flow_src is None or frame[_SRC_AT : _SRC_AT + 4] == flow_src)
                ):
                    if (
                        guard
                        and len(frame) > _PROTO_AT
                        and frame[_PROTO_AT] == _UDP
                        and _dhcp(frame)
                    ):
                        self._refuse_dhcp(state)
                        continue
                    flow_out.append(frame)
                    stats.forwarded += 1
                    continue
            elif (
                flow is not None
                and frame[:FLOW_KEY_LEN] == flow[0]
                and len(frame) - ethernet.OFFLOAD_HEADER_LEN <= max_plain
                and (
                    flow[4] is None
                    or (flow[5] == self._ip_generation and frame[_SRC_AT : _SRC_AT + 4] == flow[4])
                )
            ):
                src_entry = table.get(flow[2])
                dst_entry = table.get(flow[3])
                if (
                    src_entry is not None
                    and src_entry[0] == port
                    and now - src_entry[1] <= ageing
                    and dst_entry is not None
                    and dst_entry[0] == flow[1]
                    and now - dst_entry[1] <= ageing
                ):
                    if (
                        guard
                        and len(frame) > _PROTO_AT
                        and frame[_PROTO_AT] == _UDP
                        and _dhcp(frame)
                    ):
                        self._refuse_dhcp(state)
                        continue
                    table[flow[2]] = (port, now)
                    flow_key, flow_src = flow[0], flow[4]
                    flow_out = out.setdefault(flow[1], [])
                    flow_out.append(frame)
                    stats.forwarded += 1
                    continue
            flow_key = None
            try:
                header = ethernet.parse(frame, max_plain, tpids)
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
            if (
                guard
                and header.ethertype in _MAY_CARRY_DHCP
                and dhcpguard.server_message(frame, header)
            ):
                self._refuse_dhcp(state)
                continue
            key = (vlan, header.src)
            known = table.get(key)
            if known is not None and known[0] == port and now - known[1] <= self.config.ageing_s:
                table[key] = (port, now)  # the common case: a station seen here before
            else:
                refused = self._learn(state, key, now)
                if refused is not None:
                    drops[refused] += 1
                    continue
            if header.ethertype in inspected:
                try:
                    claim = neighbors.claims(frame, header)
                except neighbors.Refused as bad:
                    # The LAN is trusted as it is: its odd ARP is not ours to judge.
                    if not state.protected:
                        drops[bad.reason] += 1
                        continue
                    claim = neighbors.NO_CLAIM
                if claim is not neighbors.NO_CLAIM:
                    refused = self._claim(state, vlan, claim, now)
                    if refused is not None:
                        drops[refused] += 1
                        continue
            source = None
            if not state.protected and header.ethertype in _IP_TYPES:
                source = _source_address(frame, header)
                if source is not None and self._not_theirs(state, vlan, source, now):
                    drops[DROP_IP_SPOOF] += 1
                    continue
            if ethernet.is_group(header.dst):
                if departures.is_notice(header):
                    # Only the LAN speaks for stations leaving it; never flooded on.
                    if state.protected:
                        self._notice(state, frame, header, now)
                    else:
                        drops[departures.DROP_FORGED] += 1
                    continue
                if not dev.broadcasts.take(now):
                    drops[DROP_RATE_LIMITED] += 1
                    continue
                self._flood(port, vlan, frame, out)
                continue
            egress = self.lookup(header.dst, vlan, now)
            if egress is None:
                if not dev.floods.take(now):
                    drops[DROP_FLOOD_LIMITED] += 1
                    continue
                self._flood(port, vlan, frame, out)
            elif egress == port:
                drops[DROP_SAME_PORT] += 1
            else:
                flow_out = out.setdefault(egress, [])
                flow_out.append(frame)
                stats.forwarded += 1
                if (
                    header.l3 == _UNTAGGED_L3
                    and header.ethertype not in inspected
                    and frame[: ethernet.OFFLOAD_HEADER_LEN] == ethernet.NO_OFFLOAD
                    # A client's IPv4 packet too short to have a source starts no flow.
                    and (source is not None or state.protected or header.ethertype not in _IP_TYPES)
                ):
                    flow_key = bytes(frame[:FLOW_KEY_LEN])
                    flow_src = source  # None from the LAN, and for anything but IPv4
                    flow = (flow_key, egress, key, (vlan, header.dst), flow_src,
                            self._ip_generation)  # fmt: skip
                    if self.flow_cache:
                        self._flows[port] = flow
        if self._new_macs or self._new_ips:
            self._announce(out)
        return out

    def _not_theirs(self, state: _Port, vlan: int, source: bytes, now: float) -> bool:
        """IP source guard: whether ``source`` is an address a client on ``state`` may not
        send from: one of ``protected_ips``, or one bound (ARP/ND, live) to a port of the
        LAN or of another device. An address nobody holds may be used (a router at the
        client's site forwards packets from anywhere)."""
        if source in self.config.protected_ips:
            return True
        entry = self._ips.get((vlan, source))
        if entry is None or entry[0] == state.name or now - entry[1] > self.config.ageing_s:
            return False
        owner = self._ports.get(entry[0])
        return owner is not None and (owner.protected or owner.device != state.device)

    def _refuse_dhcp(self, state: _Port) -> None:
        """Drop a DHCP server's frame from ``state``; the first time for its device, tell the
        driver (``refusals``), so the operator learns why the site's hosts get no lease."""
        self.stats.drops[dhcpguard.DROP_DHCP_SERVER] += 1
        if not state.dev.dhcp_refused:
            state.dev.dhcp_refused = True
            self.refusals.append((state.name, dhcpguard.DROP_DHCP_SERVER))

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
