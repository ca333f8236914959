"""A TAP joined to its bridge through a veth pair whose inner end has Linux's GRO.

A TAP has no receive path of its own in the kernel, so nothing merges the frames a bridge
hands it: plain 1500-byte TCP segments (a bridged NIC without GRO, hosts that do not
segment late) reach the node one ``read`` each, and the node's software GRO
(``hardware.gro``) merges them in Python. With ``network.gro: kernel``, and with ``auto``
(the default) wherever it can be built (``plan``, ``join_bridge``), the node puts a veth
pair between the bridge and its TAP instead::

    bridge ── <tap>-out  ==veth==  <tap>-in ── tc redirect ──► TAP
              TSO off    │         GRO on   ◄── tc redirect ──
                         │                                      ▲
                         └── super-frames: tc redirect ─────────┘

``<tap>-out`` has TSO off, which makes the veth deliver every frame to ``<tap>-in``
through NAPI, where Linux's GRO merges each flow's segments (UDP too: UDP GRO forwarding
on, and a flush timeout so that datagrams sent one by one can meet); a tc filter at
``<tap>-in``'s ingress hook, which runs after GRO, hands every (merged) frame to the TAP,
which takes super-frames whole (``vnet_hdr``). TSO super-frames from the bridge (hosts
that do segment late, the usual case) would be cut by the kernel at ``<tap>-out`` for want
of TSO and merged again at ``<tap>-in``; a tc filter at ``<tap>-out``'s egress hook, which
runs before that cut, sends every frame longer than a single frame straight to the TAP
instead (measured in ``bench/l2-results.md``). Frames the node writes to its TAP go the
other way, from the TAP's ingress hook to ``<tap>-in``, which keeps TSO, so super-frames
cross whole.

Between ``<tap>-in`` and the TAP there is only tc, no bridge: nothing learns, filters or
answers there, every frame passes (link-local ones too: STP, LLDP, 802.1X), and the
host's netfilter never sees the frames a second time (with ``br_netfilter`` loaded, a
bridge there would run them through iptables, where a masquerading rule for the exit's
bridge would rewrite them).

Everything is undone by ``close``; a leftover from a node that was killed (``kill -9``) is
recognised and replaced at the next ``open``: a veth of the outer name whose peer has the
inner name. A device of one of those names that is not such a leftover is refused, never
deleted. The bridge ``<tap>-br`` that earlier versions put between the merging end and the
TAP is removed too where one was left, if it is recognisably theirs (a bridge with their
settings and no port but the TAP); a device of that name that is not is left alone (the
port no longer uses the name).
"""

from __future__ import annotations

import json
import logging

from hardware import ethernet, netns

log = logging.getLogger(__name__)

IFNAMSIZ = 15
# The longest TAP name whose port devices keep the whole name (``-out`` is the longest
# ending): a longer one is cut, and two TAPs cut to the same prefix would share devices.
FULL_NAME_LEN = IFNAMSIZ - len("-out")
# How long the merging end's GRO may hold packets for more of their flow (the device's
# gro_flush_timeout). Without it the veth's NAPI poll runs once per frame for anything sent
# one packet per system call (UDP: iperf3, QUIC, media), every poll ends with a flush, and
# nothing merges; TCP merges anyway, its segments arriving in bursts. 20 us merged a
# UDP stream into runs of about 32 datagrams and cost UDP through the tunnel 36-40 % less
# CPU per Gbit, with TCP and idle latency unchanged (bench/l2-results.md); a lone packet
# waits at most this long.
GRO_FLUSH_TIMEOUT_NS = 20_000
# Longest frame that is not a super-frame: the MTU plus an Ethernet header and two VLAN tags.
FRAME_OVERHEAD = ethernet.ETH_HEADER_LEN + 2 * ethernet.VLAN_TAG_LEN
# Classic BPF (``linux/filter.h``) for ``tc ... bpf bytecode``: "is the packet longer than N".
BPF_LD_W_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = skb->len
BPF_JMP_JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K: A > k ? jt : jf
BPF_RET_K = 0x06  # BPF_RET | BPF_K
BPF_MATCH = 0xFFFFFFFF  # cls_bpf: -1 is a match (with the filter's own class)
# What earlier versions set on their inner bridge ``<tap>-br`` (forward every link-local
# group Linux lets a bridge forward): how a leftover of theirs is told from a bridge of the
# same name that is not.
OLD_BRIDGE_GROUP_FWD_MASK = 0xFFF8


def _bytecode(program: list[tuple[int, int, int, int]]) -> str:
    return ",".join([str(len(program)), *(" ".join(map(str, ins)) for ins in program)])


def longer_than(n: int) -> str:
    """cBPF bytecode in ``tc``'s notation matching packets longer than ``n`` bytes."""
    return _bytecode(
        [
            (BPF_LD_W_LEN, 0, 0, 0),
            (BPF_JMP_JGT_K, 0, 1, n),
            (BPF_RET_K, 0, 0, BPF_MATCH),
            (BPF_RET_K, 0, 0, 0),
        ]
    )


def every_packet() -> str:
    """cBPF bytecode in ``tc``'s notation matching every packet."""
    return _bytecode([(BPF_RET_K, 0, 0, BPF_MATCH)])


class GroPortError(Exception):
    """The merging port cannot be built; the message says which device and why."""


def names(tap: str) -> tuple[str, str]:
    """(outer veth end, merging veth end) for ``tap``."""
    outer, inner = (tap[: IFNAMSIZ - len(end)] + end for end in ("-out", "-in"))
    return outer, inner


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


def plan(mode: str, tap: str, vnet_hdr: bool, bridge: str | None) -> str:
    """The merging a node sets up for ``network.gro`` (``kernel``, ``software`` or ``off``).

    ``auto`` (the default) is ``kernel`` where the port can work: a TAP with ``vnet_hdr``
    in a bridge, named in at most ``FULL_NAME_LEN`` characters (its port's devices keep the
    whole name, so no other TAP's port can bear the same names); ``software`` elsewhere. An
    explicit ``kernel`` where it cannot work is refused (``GroPortError``)."""
    if mode == "auto":
        fits = vnet_hdr and bridge is not None and len(tap) <= FULL_NAME_LEN
        return "kernel" if fits else "software"
    check_gro(mode, vnet_hdr, bridge)
    return mode


def join_bridge(
    tap: str,
    bridge: str,
    mtu: int,
    *,
    gro: str,
    fallback: bool = False,
    ns: netns.Namespace | None = None,
) -> tuple[list[list[str]], str]:
    """Put ``tap`` in ``bridge`` (in ``ns``; None: this namespace): through the merging
    port when ``gro`` is ``kernel``, directly otherwise. Returns the commands that remove
    the port (none for a direct join) and the merging in effect. With ``fallback``
    (``network.gro: auto``) a port that cannot be built (no ``tc``, a kernel without veth or
    cls_bpf, a device of its name that is not ours) is logged and the TAP joins directly,
    merged in software."""
    if gro == "kernel":
        port = GroPort(ns, tap, bridge, mtu)
        try:
            port.open()
        except GroPortError as exc:
            if not fallback:
                raise
            log.warning("%s; network.gro: auto merges in software instead", exc)
        else:
            return port.teardown(), "kernel"
        gro = "software"
    netns.attach(ns, tap, bridge)
    return [], gro


class GroPort:
    """``open`` joins the TAP to ``bridge`` through the merging pair; ``close`` undoes it."""

    def __init__(self, ns: netns.Namespace | None, tap: str, bridge: str, mtu: int) -> None:
        self.ns = ns
        self.tap = tap
        self.bridge = bridge
        self.mtu = mtu
        self.outer, self.inner = names(tap)
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

    def _old_bridge_leftover(self) -> str | None:
        """The name of an inner bridge an earlier version left (see the module's
        docstring), if there is one and it is recognisably its."""
        name = self.tap[: IFNAMSIZ - len("-br")] + "-br"
        doc = self._details(name)
        if not doc:
            return None
        info = doc.get("linkinfo")
        data = info.get("info_data") if isinstance(info, dict) else None
        if not isinstance(info, dict) or info.get("info_kind") != "bridge":
            return None
        if not isinstance(data, dict) or data.get("mcast_snooping") != 0:
            return None
        mask = data.get("group_fwd_mask")
        try:
            if int(str(mask), 0) != OLD_BRIDGE_GROUP_FWD_MASK:
                return None
            ports = json.loads(self._ip("-j", "link", "show", "master", name))
        except (ValueError, TypeError, netns.NetnsError):
            return None
        if not isinstance(ports, list):
            return None
        names = {p.get("ifname") if isinstance(p, dict) else None for p in ports}
        return name if names <= {self.tap, self.inner} else None

    def _clear_leftovers(self) -> None:
        old_bridge = self._old_bridge_leftover()
        if old_bridge is not None:
            log.info("%s: removing the merging port's bridge an earlier version left", old_bridge)
            self._ip("link", "del", old_bridge, check=False)
        doc = self._details(self.outer)
        if doc is not None:
            if not self._ours_outer(doc):
                raise GroPortError(
                    f"{self.outer}: exists and is not this node's merging port; rename it or "
                    "set network.gro: software"
                )
            self._ip("link", "del", self.outer)  # and its peer, the merging end
        if netns.link_exists(self.ns, self.inner):
            raise GroPortError(f"{self.inner}: exists and is not this node's merging port")
        # A redirect left on a TAP that outlived its node (a persistent one).
        netns.run(self._tap_redirect_removal(), check=False)

    def open(self) -> None:
        self._clear_leftovers()
        self._made = True
        try:
            mtu = str(self.mtu)
            self._ip("link", "add", self.outer, "mtu", mtu, "type", "veth", "peer", "name",
                     self.inner, "mtu", mtu)  # fmt: skip
            # TSO off on the sending end is what makes the veth use NAPI (and so GRO) for
            # forwarded frames; rx-udp-gro-forwarding (Linux 5.11) lets it merge UDP too.
            netns.ethtool(self.ns, "-K", self.outer, "tso", "off")
            netns.ethtool(self.ns, "-K", self.inner, "gro", "on")
            netns.ethtool(self.ns, "-K", self.inner, "rx-udp-gro-forwarding", "on", check=False)
            # Hold merged packets up to GRO_FLUSH_TIMEOUT_NS for more of their flow.
            flush = f"/sys/class/net/{self.inner}/gro_flush_timeout"
            netns.run([*self._prefix(), "tee", flush], stdin_text=f"{GRO_FLUSH_TIMEOUT_NS}\n")
            # The wire between the merging end and the TAP, both ways, before either is up.
            self._redirect(self.inner, "ingress", every_packet(), self.tap)
            self._redirect(self.tap, "ingress", every_packet(), self.inner)
            netns.attach(self.ns, self.outer, self.bridge)
            for dev in (self.inner, self.outer):
                # Ports, not hosts: no IPv6 link-local address, router solicitations or MLD
                # reports of their own leaking into the bridged LAN (as for the TAP).
                sysctl = ["sysctl", "-q", "-w", f"net/ipv6/conf/{dev}/disable_ipv6=1"]
                netns.run([*self._prefix(), *sysctl], check=False)
                self._ip("link", "set", dev, "up")
            self._bypass()
        except netns.NetnsError as exc:
            self.close()
            raise GroPortError(f"network.gro: kernel: {exc}") from None

    def _redirect(self, dev: str, hook: str, match: str, to: str) -> None:
        """At ``dev``'s ``hook`` (ingress or egress), send the packets ``match`` (cBPF
        bytecode) out of ``to``."""
        tc = [*self._prefix(), "tc"]
        netns.run([*tc, "qdisc", "replace", "dev", dev, "clsact"])
        netns.run([*tc, "filter", "add", "dev", dev, hook, "prio", "1", "protocol", "all",
                   "bpf", "bytecode", match, "action", "mirred", "egress", "redirect",
                   "dev", to])  # fmt: skip

    def _bypass(self) -> None:
        """Super-frames skip the pair: at ``<tap>-out``'s egress hook, which runs before the
        kernel would cut them for want of TSO, a frame longer than any single frame goes
        straight to the TAP (which takes super-frames whole). Only plain frames then cross
        the pair to be merged, and TSO traffic from the bridge keeps 0.84-0.97x of what it
        carries without the port (0.68-0.75x when it crossed the pair; bench/l2-results.md).
        A TSO flow's lone small segment may still be overtaken by its next super-frame while
        it waits for GRO (at most ``GRO_FLUSH_TIMEOUT_NS``): the runs saw 0-1 retransmitted
        segments per 4 s (0-45 without the port)."""
        self._redirect(self.outer, "egress", longer_than(self.mtu + FRAME_OVERHEAD), self.tap)

    def _prefix(self) -> list[str]:
        return self.ns.prefix() if self.ns is not None else []

    def teardown(self) -> list[list[str]]:
        """The commands ``close`` runs, for an owner that keeps a list of undo commands: the
        TAP's redirect (gone with the TAP when that is closed first) and the pair."""
        return [self._tap_redirect_removal(), [*self._prefix(), "ip", "link", "del", self.outer]]

    def _tap_redirect_removal(self) -> list[str]:
        return [*self._prefix(), "tc", "qdisc", "del", "dev", self.tap, "clsact"]

    def close(self) -> None:
        """Remove the pair and the TAP's redirect (the TAP is left to its owner)."""
        if not self._made:
            return
        self._made = False
        for cmd in self.teardown():
            netns.run(cmd, check=False)
