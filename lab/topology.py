"""The four-namespace network the demo, the integration tests and the benchmark share.

::

    lan-a            client                         exit                 lan-b
    eth0 10.77.0.1 ── lan0 ─┐                ┌─ lan0 ── eth0 10.77.0.2
                           br0 (+ TAP)      br0 (+ TAP)
                     wan0 172.31.0.2 ──── wan0 172.31.0.1
                     (the underlay: the tunnel's TCP runs here)

Hosts in lan-a and lan-b share one IP subnet: only the Layer-2 tunnel joins them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from hardware import netns
from hardware.netns import Lab, Namespace

HOST_A = "10.77.0.1"
HOST_B = "10.77.0.2"
LAN_PREFIX = 24
CLIENT_WAN = "172.31.0.2"
EXIT_WAN = "172.31.0.1"
WAN_PREFIX = 30
BRIDGE = "br0"


@dataclass(frozen=True, slots=True)
class Topology:
    lan_a: Namespace
    client: Namespace
    exit: Namespace
    lan_b: Namespace
    mtu: int

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return (self.lan_a, self.client, self.exit, self.lan_b)


def build(lab: Lab, mtu: int = 1500, *, extra_lan: bool = False) -> Topology:
    """Create the namespaces, veths and bridges (not the tunnel). Owned by ``lab``."""
    lan_a = lab.namespace("lan-a")
    client = lab.namespace("client")
    exit_ = lab.namespace("exit")
    lan_b = lab.namespace("lan-b")
    for ns in (lan_a, client, exit_, lan_b):
        quiet(ns)
    lab.veth(lan_a, "eth0", client, "lan0", mtu=mtu)
    lab.veth(lan_b, "eth0", exit_, "lan0", mtu=mtu)
    lab.veth(client, "wan0", exit_, "wan0")
    for ns in (client, exit_):
        netns.bridge(ns, BRIDGE, mtu=mtu)
        netns.attach(ns, "lan0", BRIDGE)
    lan_a.ip("addr", "add", f"{HOST_A}/{LAN_PREFIX}", "dev", "eth0")
    lan_b.ip("addr", "add", f"{HOST_B}/{LAN_PREFIX}", "dev", "eth0")
    client.ip("addr", "add", f"{CLIENT_WAN}/{WAN_PREFIX}", "dev", "wan0")
    exit_.ip("addr", "add", f"{EXIT_WAN}/{WAN_PREFIX}", "dev", "wan0")
    return Topology(lan_a, client, exit_, lan_b, mtu)


def join_taps(topo: Topology, tap: str, what: str, timeout_s: float = 15.0) -> None:
    """A tunnel's two TAPs (client and exit namespaces) into their bridges, once they exist."""
    for ns in (topo.exit, topo.client):
        if not netns.wait_for(partial(netns.link_exists, ns, tap), timeout_s, 0.1):
            raise RuntimeError(f"{what}: tap device did not appear")
        netns.attach(ns, tap, BRIDGE)
        ns.ip("link", "set", tap, "up")


def plain_senders(topo: Topology, plain: bool) -> None:
    """Make the LAN hosts send plain 1500-byte frames (TSO/GSO off), or their default back.

    What a tunnel meets behind a bridged NIC without GRO, or from a host that does not
    segment late: the frames reach the TAP one packet each even with offloads on."""
    state = "off" if plain else "on"
    for ns in (topo.lan_a, topo.lan_b):
        ns.run(["ethtool", "-K", "eth0", "tso", state, "gso", state])


def quiet(ns: Namespace) -> None:
    """No IPv6 in the lab: its router solicitations and neighbour discovery would add
    background frames to every capture and keep MAC entries alive."""
    ns.run(
        [
            "sysctl", "-q", "-w",
            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
        ]
    )  # fmt: skip


def ping(src: Namespace, dst_ip: str, count: int = 3, interval: float = 0.2) -> int:
    """Send ``count`` pings; return how many replies came back."""
    out = src.run(
        ["ping", "-c", str(count), "-i", str(interval), "-W", "1", "-q", dst_ip],
        check=False,
        timeout=count * (interval + 1) + 5,
    )
    match = re.search(r"(\d+) (?:packets )?received", out)
    return int(match.group(1)) if match else 0
