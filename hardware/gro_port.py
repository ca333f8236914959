"""A TAP joined to its bridge through a veth pair whose inner end has Linux's GRO.

A TAP has no receive path of its own in the kernel, so nothing merges the frames a bridge
hands it: plain 1500-byte TCP segments (a bridged NIC without GRO, hosts that do not
segment late) reach the node one ``read`` each, and the node's software GRO
(``hardware.gro``) merges them in Python. With ``network.gro: kernel`` the node puts a
veth pair between the bridge and its TAP instead::

    bridge ── <tap>-out  ==veth==  <tap>-in ── <tap>-br ── TAP
              TSO off    │         GRO on      (two ports:     ▲
                         │                     a wire)         │
                         └── super-frames: tc redirect ────────┘

``<tap>-out`` has TSO off, which makes the veth deliver every frame to ``<tap>-in``
through NAPI, where Linux's GRO merges each flow's segments (UDP too: UDP GRO forwarding
on, and a flush timeout so that datagrams sent one by one can meet); the merged super-frames
cross the two-port bridge ``<tap>-br`` to the TAP, which takes them whole (``vnet_hdr``).
TSO super-frames from the bridge (hosts that do segment late, the usual case) would be cut
by the kernel at ``<tap>-out`` for want of TSO and merged again at ``<tap>-in``; a tc
filter at ``<tap>-out``'s egress hook, which runs before that cut, sends every frame longer
than a single frame straight to the TAP instead (measured in ``bench/l2-results.md``).
Frames the node writes to its TAP go the other way unchanged: ``<tap>-in`` keeps TSO, so
super-frames cross whole.

``<tap>-br`` is made transparent: no STP, no multicast snooping, and link-local group
frames (LLDP, 802.1X) are forwarded as far as Linux lets a bridge forward them.

Everything is undone by ``close``; a leftover from a node that was killed (``kill -9``) is
recognised and replaced at the next ``open``: a veth of the outer name whose peer has the
inner name, a bridge of the inner bridge's name with exactly the settings ``open`` gives it
and no port but the TAP. A device of one of those names that is not such a leftover is
refused, never deleted.
"""

from __future__ import annotations

import json

from hardware import ethernet, netns

IFNAMSIZ = 15
# How long the merging end's GRO may hold packets for more of their flow (the device's
# gro_flush_timeout). Without it the veth's NAPI poll runs once per frame for anything sent
# one packet per system call (UDP: iperf3, QUIC, media), every poll ends with a flush, and
# nothing merges; TCP merges anyway, its segments arriving in bursts. 20 us merged a
# UDP stream into runs of about 32 datagrams and cost UDP through the tunnel 36-40 % less
# CPU per Gbit, with TCP and idle latency unchanged (bench/l2-results.md); a lone packet
# waits at most this long.
GRO_FLUSH_TIMEOUT_NS = 20_000
# Link-local group addresses 01:80:C2:00:00:0X a bridge may forward (bits 0-2: STP,
# pause and bonding frames, are never forwarded by Linux).
GROUP_FWD_MASK = "0xfff8"
# Longest frame that is not a super-frame: the MTU plus an Ethernet header and two VLAN tags.
FRAME_OVERHEAD = ethernet.ETH_HEADER_LEN + 2 * ethernet.VLAN_TAG_LEN
# Classic BPF (``linux/filter.h``) for ``tc ... bpf bytecode``: "is the packet longer than N".
BPF_LD_W_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = skb->len
BPF_JMP_JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K: A > k ? jt : jf
BPF_RET_K = 0x06  # BPF_RET | BPF_K
BPF_MATCH = 0xFFFFFFFF  # cls_bpf: -1 is a match (with the filter's own class)


def longer_than(n: int) -> str:
    """cBPF bytecode in ``tc``'s notation matching packets longer than ``n`` bytes."""
    program = [
        (BPF_LD_W_LEN, 0, 0, 0),
        (BPF_JMP_JGT_K, 0, 1, n),
        (BPF_RET_K, 0, 0, BPF_MATCH),
        (BPF_RET_K, 0, 0, 0),
    ]
    return ",".join([str(len(program)), *(" ".join(map(str, ins)) for ins in program)])


class GroPortError(Exception):
    """The merging port cannot be built; the message says which device and why."""


def names(tap: str) -> tuple[str, str, str]:
    """(outer veth end, merging veth end, inner bridge) for ``tap``."""
    outer, inner, bridge = (tap[: IFNAMSIZ - len(end)] + end for end in ("-out", "-in", "-br"))
    return outer, inner, bridge


def check_gro(mode: str, vnet_hdr: bool, bridge: str | None) -> None:
    """Refuse ``network.gro: kernel`` where it cannot work (``GroPortError``)."""
    if mode != "kernel":
        return
    if not vnet_hdr:
        raise GroPortError(
            "network.gro: kernel needs network.vnet_hdr: true (the TAP must take super-frames)"
        )
    if bridge is None:
        raise GroPortError("network.gro: kernel needs network.bridge (the bridge to join)")


def join_bridge(tap: str, bridge: str, mtu: int, *, merge: bool) -> list[list[str]]:
    """Put ``tap`` in ``bridge`` (this namespace): directly, or with ``merge`` through the
    merging port. Returns the commands that remove the port (none for a direct join)."""
    if not merge:
        netns.attach(None, tap, bridge)
        return []
    port = GroPort(None, tap, bridge, mtu)
    port.open()
    return port.teardown()


class GroPort:
    """``open`` joins the TAP to ``bridge`` through the merging pair; ``close`` undoes it."""

    def __init__(self, ns: netns.Namespace | None, tap: str, bridge: str, mtu: int) -> None:
        self.ns = ns
        self.tap = tap
        self.bridge = bridge
        self.mtu = mtu
        self.outer, self.inner, self.inner_bridge = names(tap)
        self._made = False

    def _ip(self, *args: str, check: bool = True) -> str:
        return netns.ip(self.ns, *args, check=check)

    def _details(self, dev: str) -> dict[str, object] | None:
        """``ip -d link`` of ``dev`` as a mapping ({} if unreadable), None if it is absent."""
        if not netns.link_exists(self.ns, dev):
            return None
        try:
            doc = json.loads(self._ip("-j", "-d", "link", "show", "dev", dev))[0]
        except (ValueError, IndexError, KeyError, TypeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _ours_outer(self, doc: dict[str, object]) -> bool:
        """A veth whose peer bears the merging end's name."""
        info = doc.get("linkinfo")
        kind = info.get("info_kind") if isinstance(info, dict) else None
        return kind == "veth" and doc.get("link") == self.inner

    def _ours_bridge(self, doc: dict[str, object]) -> bool:
        """A bridge set up as ``open`` sets it up, with no port but the TAP."""
        info = doc.get("linkinfo")
        data = info.get("info_data") if isinstance(info, dict) else None
        if not isinstance(info, dict) or info.get("info_kind") != "bridge":
            return False
        if not isinstance(data, dict) or data.get("group_fwd_mask") != GROUP_FWD_MASK:
            return False
        if data.get("mcast_snooping") != 0:
            return False
        try:
            ports = json.loads(self._ip("-j", "link", "show", "master", self.inner_bridge))
            names = {p.get("ifname") for p in ports if isinstance(p, dict)}
        except (ValueError, TypeError, AttributeError):
            return False
        return names <= {self.tap, self.inner}

    def _clear_leftovers(self) -> None:
        # The veth first: deleting it takes the merging end out of the bridge too.
        checks = (
            (self.outer, self._ours_outer, "merging port"),
            (self.inner_bridge, self._ours_bridge, "merging port's bridge"),
        )
        for dev, ours, what in checks:
            doc = self._details(dev)
            if doc is None:
                continue
            if not ours(doc):
                raise GroPortError(
                    f"{dev}: exists and is not this node's {what}; rename it or set "
                    "network.gro to true"
                )
            self._ip("link", "del", dev)
        if netns.link_exists(self.ns, self.inner):
            raise GroPortError(f"{self.inner}: exists and is not this node's merging port")

    def open(self) -> None:
        self._clear_leftovers()
        self._made = True
        try:
            mtu = str(self.mtu)
            self._ip("link", "add", self.outer, "mtu", mtu, "type", "veth", "peer", "name",
                     self.inner, "mtu", mtu)  # fmt: skip
            self._ip("link", "add", self.inner_bridge, "mtu", mtu, "type", "bridge",
                     "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
                     "group_fwd_mask", GROUP_FWD_MASK)  # fmt: skip
            # TSO off on the sending end is what makes the veth use NAPI (and so GRO) for
            # forwarded frames; rx-udp-gro-forwarding (Linux 5.11) lets it merge UDP too.
            netns.ethtool(self.ns, "-K", self.outer, "tso", "off")
            netns.ethtool(self.ns, "-K", self.inner, "gro", "on")
            netns.ethtool(self.ns, "-K", self.inner, "rx-udp-gro-forwarding", "on", check=False)
            # Hold merged packets up to GRO_FLUSH_TIMEOUT_NS for more of their flow.
            flush = f"/sys/class/net/{self.inner}/gro_flush_timeout"
            netns.run([*self._prefix(), "tee", flush], stdin_text=f"{GRO_FLUSH_TIMEOUT_NS}\n")
            netns.attach(self.ns, self.tap, self.inner_bridge)
            netns.attach(self.ns, self.inner, self.inner_bridge)
            netns.attach(self.ns, self.outer, self.bridge)
            for dev in (self.inner_bridge, self.inner, self.outer):
                # Ports, not hosts: no IPv6 link-local address, router solicitations or MLD
                # reports of their own leaking into the bridged LAN (as for the TAP).
                sysctl = ["sysctl", "-q", "-w", f"net/ipv6/conf/{dev}/disable_ipv6=1"]
                netns.run([*self._prefix(), *sysctl], check=False)
                self._ip("link", "set", dev, "up")
            self._bypass()
        except netns.NetnsError as exc:
            self.close()
            raise GroPortError(f"network.gro: kernel: {exc}") from None

    def _bypass(self) -> None:
        """Super-frames skip the pair: at ``<tap>-out``'s egress hook, which runs before the
        kernel would cut them for want of TSO, a frame longer than any single frame goes
        straight to the TAP (which takes super-frames whole). Only plain frames then cross
        the pair to be merged, and TSO traffic from the bridge keeps 0.84-0.97x of what it
        carries without the port (0.68-0.75x when it crossed the pair; bench/l2-results.md).
        A TSO flow's lone small segment may still be overtaken by its next super-frame while
        it waits for GRO (at most ``GRO_FLUSH_TIMEOUT_NS``): the runs saw 0-1 retransmitted
        segments per 4 s (0-45 without the port)."""
        tc = [*self._prefix(), "tc"]
        netns.run([*tc, "qdisc", "add", "dev", self.outer, "clsact"])
        netns.run([*tc, "filter", "add", "dev", self.outer, "egress", "prio", "1",
                   "protocol", "all", "bpf", "bytecode", longer_than(self.mtu + FRAME_OVERHEAD),
                   "action", "mirred", "egress", "redirect", "dev", self.tap])  # fmt: skip

    def _prefix(self) -> list[str]:
        return self.ns.prefix() if self.ns is not None else []

    def teardown(self) -> list[list[str]]:
        """The commands ``close`` runs, for an owner that keeps a list of undo commands."""
        return [
            [*self._prefix(), "ip", "link", "del", dev] for dev in (self.inner_bridge, self.outer)
        ]

    def close(self) -> None:
        """Remove the pair and the inner bridge (the TAP is left to its owner)."""
        if not self._made:
            return
        self._made = False
        for cmd in self.teardown():
            netns.run(cmd, check=False)
