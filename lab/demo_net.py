"""The full demo's network: two LANs, their clients, two exits and the chain on one WAN.

::

    lan-a 10.77.0.1 ── client-a (br0 + TAP) ─┐                  ┌─ exit-1 (TAP, swtpm)
                                            wan0 ── wan (bridge) ── wan0
    lan-b 10.77.0.2 ── client-b (br0 + TAP) ─┘  Anvil 172.31.0.254 └─ exit-2 (TAP, swtpm)

Hosts in lan-a and lan-b share one IP subnet: only the Layer-2 tunnels, meeting in the
exit's virtual switch, join them. The WAN is the underlay (tunnels' TCP, the chain's RPC);
each exit's TPM listens on its own namespace's loopback, so only that exit reaches it.
Everything is created in namespaces owned by a ``Lab`` and removed with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware import netns
from hardware.netns import Lab, Namespace
from lab import topology

WAN_PREFIX = 24
CHAIN_IP = "172.31.0.254"
EXIT_IPS = ("172.31.0.1", "172.31.0.2", "172.31.0.3", "172.31.0.4", "172.31.0.5")
CLIENT_IPS = ("172.31.0.11", "172.31.0.12")
HOSTS = (topology.HOST_A, topology.HOST_B)
WAN_BRIDGE = "wan"
LAN_BRIDGE = "br0"


@dataclass(frozen=True, slots=True)
class Site:
    """A node's namespace and its WAN address."""

    name: str
    ns: Namespace
    wan_ip: str


@dataclass(frozen=True, slots=True)
class Mesh:
    wan: Namespace
    exits: tuple[Site, ...]
    clients: tuple[Site, ...]
    lans: tuple[Namespace, ...]  # lans[i] hangs off clients[i]
    mtu: int

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        sites = (*self.exits, *self.clients)
        return (self.wan, *(s.ns for s in sites), *self.lans)


def build(
    lab: Lab,
    mtu: int = 1500,
    *,
    exits: tuple[str, ...] = ("exit-1", "exit-2"),
    clients: tuple[str, ...] = ("client-a", "client-b"),
) -> Mesh:
    """Create the namespaces, veths and bridges (not the nodes). Owned by ``lab``."""
    if len(exits) > len(EXIT_IPS) or len(clients) > len(CLIENT_IPS):
        raise ValueError("the demo network has room for five exits and two clients")
    wan = lab.namespace("wan")
    topology.quiet(wan)
    netns.bridge(wan, WAN_BRIDGE)
    wan.ip("addr", "add", f"{CHAIN_IP}/{WAN_PREFIX}", "dev", WAN_BRIDGE)

    def site(name: str, ip: str) -> Site:
        ns = lab.namespace(name.replace("-", ""))
        topology.quiet(ns)
        port = f"p{ip.rsplit('.', 1)[1]}"
        lab.veth(ns, "wan0", wan, port)
        netns.attach(wan, port, WAN_BRIDGE)
        ns.ip("addr", "add", f"{ip}/{WAN_PREFIX}", "dev", "wan0")
        return Site(name, ns, ip)

    exit_sites = tuple(site(n, ip) for n, ip in zip(exits, EXIT_IPS, strict=False))
    client_sites = tuple(site(n, ip) for n, ip in zip(clients, CLIENT_IPS, strict=False))
    lans = []
    for client, host in zip(client_sites, HOSTS, strict=False):
        lan = lab.namespace("lan" + client.name[-1])
        topology.quiet(lan)
        lab.veth(lan, "eth0", client.ns, "lan0", mtu=mtu)
        netns.bridge(client.ns, LAN_BRIDGE, mtu=mtu)
        netns.attach(client.ns, "lan0", LAN_BRIDGE)
        lan.ip("addr", "add", f"{host}/{topology.LAN_PREFIX}", "dev", "eth0")
        lans.append(lan)
    return Mesh(wan, exit_sites, client_sites, tuple(lans), mtu)
