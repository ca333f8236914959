"""Attacks one client of an exit tries on the others through the virtual switch.

Each test plays the attacker (an authenticated client, i.e. one of the switch's ports)
and asserts that the victim's traffic stays the victim's and that the attempt is counted.
"""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from exitnode import constants
from exitnode.errors import PortRefused
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from hardware import ethernet

LAN = constants.LOCAL_PORT
TRUNK = PortPolicy(vlans=None)
BCAST = "ff:ff:ff:ff:ff:ff"
GW_MAC = "02:00:00:00:00:fe"
GW_IP = "10.0.0.1"
GW_LL = "fe80::1"
VICTIM = "02:00:00:00:00:0a"
EVIL = "02:00:00:00:00:0e"


def raw(dst: bytes, src: bytes) -> bytes:
    """A minimal untagged IPv4 frame (built by hand: the table tests send thousands)."""
    return ethernet.NO_OFFLOAD + dst + src + b"\x08\x00" + bytes(46)


def pkt(p: object, hdr: bytes = ethernet.NO_OFFLOAD) -> bytes:
    return hdr + bytes(p)  # type: ignore[call-overload]


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_reply(src: str, ip: str) -> bytes:
    """A gratuitous ARP reply: ``src`` claims ``ip``."""
    return pkt(Ether(src=src, dst=BCAST) / ARP(op=2, hwsrc=src, psrc=ip, pdst=ip))


def lan_with_gateway(**cfg: object) -> Switch:
    # The frames each attack gets through (holding notices: test_departures.py).
    cfg.setdefault("announce_holdings", False)
    sw = Switch(SwitchConfig(**cfg))  # type: ignore[arg-type]
    sw.attach(LAN, TRUNK, 0.0)
    sw.forward(LAN, [arp_reply(GW_MAC, GW_IP)], 0.0)
    return sw


def test_a_client_cannot_take_over_another_clients_mac() -> None:
    sw = lan_with_gateway()
    sw.attach("victim", PortPolicy(), 0.0)
    sw.attach("evil", PortPolicy(), 0.0)
    sw.forward("victim", [raw(mac(GW_MAC), mac(VICTIM))], 1.0)
    # The attacker sends from the victim's MAC so the switch moves it to the attacker.
    hijack = raw(mac(GW_MAC), mac(VICTIM))
    assert sw.forward("evil", [hijack] * 3, 2.0) == {}
    assert sw.stats.drops["mac_spoof"] == 3
    # The LAN's replies to the victim still reach the victim, and only the victim.
    reply = raw(mac(VICTIM), mac(GW_MAC))
    assert sw.forward(LAN, [reply], 2.5) == {"victim": [reply]}


def test_clients_filling_the_table_do_not_make_a_victims_unicast_flood() -> None:
    sw = lan_with_gateway()
    # Sixteen identities, each at its MAC limit: as many entries as the whole table.
    for n in range(constants.MAX_MACS // constants.MAX_MACS_PER_PORT):
        port = f"sybil{n}"
        sw.attach(port, PortPolicy(), 0.0)
        spray = [
            raw(mac(GW_MAC), bytes([2, 0x80 | n, 0, 0]) + i.to_bytes(2, "big"))
            for i in range(constants.MAX_MACS_PER_PORT)
        ]
        sw.forward(port, spray, 0.0)
    sw.attach("victim", PortPolicy(), 1.0)
    sw.forward("victim", [raw(mac(GW_MAC), mac(VICTIM))], 1.0)
    assert sw.lookup(mac(VICTIM), 0, 1.0) == "victim"  # from the port's reserve
    # So the LAN's unicast to the victim goes to the victim, not to every sybil.
    reply = raw(mac(VICTIM), mac(GW_MAC))
    assert sw.forward(LAN, [reply], 1.5) == {"victim": [reply]}
    assert len(sw) <= constants.MAX_MACS + 1
    assert sw.stats.drops["mac_table_full"] > 0


def test_one_device_is_limited_in_tunnels_and_macs_over_all_of_them() -> None:
    sw = lan_with_gateway()
    per_device = constants.MAX_TUNNELS_PER_DEVICE
    for n in range(per_device):
        sw.attach(f"mallory#{n}", PortPolicy(max_macs=100), 0.0, device="mallory")
    try:
        sw.attach(f"mallory#{per_device}", PortPolicy(max_macs=100), 0.0, device="mallory")
    except PortRefused as refused:
        assert refused.reason == "tunnel_limit"
    else:
        raise AssertionError("a device opened more tunnels than its limit")
    assert sw.stats.drops["tunnel_limit"] == 1
    # 100 MACs for the device, however they are spread over its tunnels.
    for n in range(per_device):
        spray = [raw(mac(GW_MAC), bytes([2, 9, n, 0, 0, i])) for i in range(60)]
        sw.forward(f"mallory#{n}", spray, 0.0)
    assert len(sw) == 1 + 100
    assert sw.stats.drops["mac_limit"] == 60 * per_device - 100
    # Another device is unaffected, and a freed tunnel slot can be used again.
    sw.attach("alice#1", PortPolicy(), 0.0, device="alice")
    sw.detach("mallory#0")
    sw.attach("mallory#9", PortPolicy(max_macs=100), 0.0, device="mallory")


def test_broadcast_budget_is_per_device_not_per_tunnel() -> None:
    sw = lan_with_gateway()
    budget = PortPolicy(broadcast_rate=10.0, broadcast_burst=20.0)
    for n in range(constants.MAX_TUNNELS_PER_DEVICE):
        sw.attach(f"mallory#{n}", budget, 0.0, device="mallory")
    sent = 0
    for n in range(constants.MAX_TUNNELS_PER_DEVICE):
        src = bytes([2, 9, 9, 9, 9, n])
        out = sw.forward(f"mallory#{n}", [raw(b"\xff" * 6, src)] * 20, 0.0)
        sent += len(out.get(LAN, []))
    assert sent == 20  # one burst for the device, not one per tunnel
    assert sw.stats.drops["rate_limited"] == 20 * (constants.MAX_TUNNELS_PER_DEVICE - 1)


def test_arp_spoofing_the_gateway_or_another_client_is_dropped() -> None:
    sw = lan_with_gateway()
    sw.attach("victim", PortPolicy(), 0.0)
    sw.attach("evil", PortPolicy(), 0.0)
    # Claiming the gateway's address from the attacker's own MAC (cache poisoning).
    assert sw.forward("evil", [arp_reply(EVIL, GW_IP)], 1.0) == {}
    assert sw.owner(bytes([10, 0, 0, 1]), 0, 1.0) == LAN and sw.bindings == 1
    # Claiming a configured gateway address the LAN has not used yet.
    configured = lan_with_gateway(protected_ips=frozenset({bytes([10, 0, 0, 254])}))
    configured.attach("evil", PortPolicy(), 0.0)
    assert configured.forward("evil", [arp_reply(EVIL, "10.0.0.254")], 1.0) == {}
    assert configured.stats.drops["ip_spoof"] == 1
    assert sw.forward("evil", [arp_reply(EVIL, GW_IP)], 1.0) == {}
    assert sw.stats.drops["ip_spoof"] == 2
    # Another client's address: first claim wins while it is live.
    claim = arp_reply(VICTIM, "10.0.0.7")
    assert set(sw.forward("victim", [claim], 1.0)) == {LAN, "evil"}
    assert sw.forward("evil", [arp_reply(EVIL, "10.0.0.7")], 2.0) == {}
    assert sw.stats.drops["ip_spoof"] == 3
    # An ARP whose sender hardware address is not the frame's source.
    lie = pkt(Ether(src=EVIL, dst=BCAST) / ARP(op=2, hwsrc=VICTIM, psrc="10.0.0.9"))
    assert sw.forward("evil", [lie], 2.0) == {}
    assert sw.stats.drops["arp_mac_mismatch"] == 1
    # The attacker's own address is fine, and so is an address probe.
    assert LAN in sw.forward("evil", [arp_reply(EVIL, "10.0.0.66")], 2.0)
    probe = pkt(Ether(src=EVIL, dst=BCAST) / ARP(hwsrc=EVIL, psrc="0.0.0.0", pdst="10.0.0.7"))
    assert LAN in sw.forward("evil", [probe], 2.0)
    # A tag does not hide an ARP from inspection.
    tagged = pkt(Ether(src=EVIL, dst=BCAST) / Dot1Q(vlan=0) / ARP(op=2, hwsrc=EVIL, psrc=GW_IP))
    assert sw.forward("evil", [tagged], 2.0) == {}
    assert sw.stats.drops["ip_spoof"] == 4


def test_neighbor_discovery_spoofing_and_rogue_routers_are_dropped() -> None:
    sw = lan_with_gateway()
    sw.attach("evil", PortPolicy(), 0.0)
    allnodes = "33:33:00:00:00:01"
    router_na = (
        Ether(src=GW_MAC, dst=allnodes)
        / IPv6(src=GW_LL, dst="ff02::1")
        / ICMPv6ND_NA(tgt=GW_LL, R=1)
        / ICMPv6NDOptDstLLAddr(lladdr=GW_MAC)
    )
    sw.forward(LAN, [pkt(router_na)], 0.0)
    ip6 = IPv6(src="fe80::e", dst="ff02::1")
    # An NA claiming the router's link-local address, plain and behind a hop-by-hop header.
    na = ICMPv6ND_NA(tgt=GW_LL, R=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=EVIL)
    spoof = pkt(Ether(src=EVIL, dst=allnodes) / ip6 / na)
    hidden = pkt(Ether(src=EVIL, dst=allnodes) / ip6 / IPv6ExtHdrHopByHop() / na)
    assert sw.forward("evil", [spoof, hidden], 1.0) == {}
    assert sw.stats.drops["ip_spoof"] == 2
    # A rogue router advertisement.
    ra = pkt(Ether(src=EVIL, dst=allnodes) / ip6 / ICMPv6ND_RA())
    assert sw.forward("evil", [ra], 1.0) == {}
    assert sw.stats.drops["nd_router"] == 1
    # A solicitation whose source link-layer option names another MAC.
    ns = ICMPv6ND_NS(tgt="fe80::7") / ICMPv6NDOptSrcLLAddr(lladdr=VICTIM)
    assert sw.forward("evil", [pkt(Ether(src=EVIL, dst=allnodes) / ip6 / ns)], 1.0) == {}
    assert sw.stats.drops["nd_mac_mismatch"] == 1
    # Its own address, advertised honestly, goes through.
    own = ICMPv6ND_NA(tgt="fe80::e") / ICMPv6NDOptDstLLAddr(lladdr=EVIL)
    assert LAN in sw.forward("evil", [pkt(Ether(src=EVIL, dst=allnodes) / ip6 / own)], 1.0)


def test_virtio_headers_that_do_not_describe_the_frame_are_dropped() -> None:
    sw = lan_with_gateway()
    sw.attach("evil", PortPolicy(), 0.0)
    tcp = bytes(Ether(src=EVIL, dst=GW_MAC) / IP() / TCP() / (b"x" * 3000))
    good = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM,
        gso_type=ethernet.GSO_TCPV4,
        hdr_len=54,
        gso_size=1448,
        csum_start=34,
        csum_offset=16,
    )
    assert sw.forward("evil", [good + tcp], 1.0) == {LAN: [good + tcp]}

    def hdr(**change: int) -> bytes:
        names = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
        fields = dict(zip(names, ethernet.OFFLOAD_HEADER.unpack(good), strict=True))
        fields.update(change)
        return ethernet.offload_header(**fields)

    bad = [
        hdr(gso_type=3),  # legacy UDP fragmentation offload (UFO)
        hdr(hdr_len=len(tcp) + 1),  # headers longer than the frame
        hdr(csum_start=6),  # checksum "inside" the Ethernet header
        hdr(csum_offset=40),  # no protocol keeps its checksum there
        hdr(flags=0),  # a super-frame without a partial checksum
        hdr(gso_type=ethernet.GSO_TCPV6),  # TCPv6 segmentation of an IPv4 packet
        hdr(flags=ethernet.NEEDS_CSUM | ethernet.DATA_VALID),  # contradictory
        hdr(gso_type=ethernet.GSO_UDP_L4 | ethernet.GSO_ECN, csum_offset=6),
    ]
    assert sw.forward("evil", [h + tcp for h in bad], 1.0) == {}
    assert sw.stats.drops["bad_offload"] == len(bad)
    plain = ethernet.offload_header(gso_size=1448)  # a segment size without GSO
    assert sw.forward("evil", [plain + tcp[:1000]], 1.0) == {}
    assert sw.stats.drops["bad_offload"] == len(bad) + 1


def test_a_super_frame_must_carry_what_its_type_says_so_nd_inspection_cannot_be_skipped() -> None:
    # The ARP/ND guard reads frames that are not super-frames; a router advertisement
    # labelled as a TCP super-frame must not get past it as "just TCP".
    sw = lan_with_gateway()
    sw.attach("evil", PortPolicy(), 0.0)
    allnodes = "33:33:00:00:00:01"
    ra = bytes(Ether(src=EVIL, dst=allnodes) / IPv6(src="fe80::e", dst="ff02::1") / ICMPv6ND_RA())
    ra += bytes(3000)
    as_tcp = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM, gso_type=ethernet.GSO_TCPV6, hdr_len=74, gso_size=1400,
        csum_start=54, csum_offset=16,
    )  # fmt: skip
    as_udp = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM, gso_type=ethernet.GSO_UDP_L4, hdr_len=62, gso_size=1400,
        csum_start=54, csum_offset=6,
    )  # fmt: skip
    udp4 = bytes(Ether(src=EVIL, dst=GW_MAC) / IP(proto=17) / UDP() / (b"x" * 3000))
    udp_in_tcp = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM, gso_type=ethernet.GSO_TCPV4, hdr_len=54, gso_size=1448,
        csum_start=34, csum_offset=16,
    )  # fmt: skip
    fragment = bytes(Ether(src=EVIL, dst=GW_MAC) / IP(flags="MF") / TCP() / (b"x" * 3000))
    hbh = bytes(
        Ether(src=EVIL, dst=allnodes) / IPv6() / IPv6ExtHdrHopByHop() / TCP() / (b"x" * 3000)
    )
    frames = [as_tcp + ra, as_udp + ra, udp_in_tcp + udp4, udp_in_tcp + fragment, as_tcp + hbh]
    assert sw.forward("evil", frames, 1.0) == {}
    assert sw.stats.drops["bad_offload"] == len(frames)
    assert sw.stats.drops["nd_router"] == 0
    # a checksum start that is not the TCP header's
    tcp = bytes(Ether(src=EVIL, dst=GW_MAC) / IP() / TCP() / (b"x" * 3000))
    off = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM, gso_type=ethernet.GSO_TCPV4, hdr_len=54, gso_size=1448,
        csum_start=38, csum_offset=16,
    )  # fmt: skip
    assert sw.forward("evil", [off + tcp], 1.0) == {}


def test_frames_with_unknown_tag_types_are_dropped_not_switched_untagged() -> None:
    sw = lan_with_gateway()
    sw.attach("evil", PortPolicy(), 0.0)  # untagged only
    inner = Dot1Q(vlan=20) / IP()
    tagged = [
        pkt(Ether(src=EVIL, dst=GW_MAC, type=tpid) / inner)
        for tpid in (0x9100, 0x9200, 0x9300, 0x88A8)
    ]
    assert sw.forward("evil", tagged, 1.0) == {}
    assert sw.stats.drops["unknown_tpid"] == 4
    # An exit configured for 802.1ad service tags reads them as the frame's VLAN.
    qinq = lan_with_gateway(tag_tpids=frozenset({ethernet.TPID_8021Q, ethernet.TPID_8021AD}))
    qinq.attach("trunk", PortPolicy(vlans=frozenset({20})), 0.0)
    s_tagged = pkt(Ether(src=EVIL, dst=GW_MAC, type=0x88A8) / inner)
    assert qinq.forward("trunk", [s_tagged], 1.0) == {LAN: [s_tagged]}


def test_one_device_cannot_fill_the_address_table() -> None:
    sw = lan_with_gateway()
    sw.attach("evil#1", PortPolicy(max_ips=4), 0.0, device="evil")
    sw.attach("evil#2", PortPolicy(max_ips=4), 0.0, device="evil")
    claims = [arp_reply(EVIL, f"10.0.1.{n}") for n in range(1, 7)]
    sw.forward("evil#1", claims[:3], 1.0)
    sw.forward("evil#2", claims[3:], 1.0)  # the limit is the device's, over its tunnels
    assert sw.stats.drops["ip_limit"] == 2
    assert [sw.owner(bytes([10, 0, 1, n]), 0, 1.0) for n in range(1, 7)] == [
        "evil#1", "evil#1", "evil#1", "evil#2", None, None
    ]  # fmt: skip
    # Re-claiming its own addresses (from either tunnel) costs nothing; they age out.
    assert sw.forward("evil#2", [claims[0]], 2.0)
    assert sw.owner(bytes([10, 0, 1, 1]), 0, 2.0) == "evil#2"
    sw.age(2.0 + constants.MAC_AGEING_S + 1)
    assert sw.owner(bytes([10, 0, 1, 1]), 0, 400.0) is None
    assert sw.forward("evil#1", claims[4:], 400.0)  # room again


def ipv4(src: str, dst: str, ip_src: str, ip_dst: str = "10.0.0.99") -> bytes:
    return pkt(Ether(src=src, dst=dst) / IP(src=ip_src, dst=ip_dst) / UDP(dport=53) / b"q")


def test_a_client_cannot_send_from_the_gateways_the_lans_or_another_clients_address() -> None:
    # IP source guard: the address another port holds (ARP/ND) is not a client's to send
    # from; a forged DNS answer "from the gateway" to another site's host is dropped.
    sw = lan_with_gateway(protected_ips=frozenset({bytes([10, 0, 0, 1])}))
    sw.attach("victim", PortPolicy(), 0.0)
    sw.attach("evil", PortPolicy(), 0.0)
    sw.forward("victim", [arp_reply(VICTIM, "10.0.0.10")], 0.5)
    lan_host = "02:00:00:00:00:33"
    sw.forward(LAN, [arp_reply(lan_host, "10.0.0.33")], 0.5)
    sw.forward("evil", [arp_reply(EVIL, "10.0.0.14")], 0.5)
    for forged in ("10.0.0.1", "10.0.0.33", "10.0.0.10"):
        assert sw.forward("evil", [ipv4(EVIL, VICTIM, forged)], 1.0) == {}
    assert sw.stats.drops["ip_spoof"] == 3
    # Its own address, and one nobody holds (a router at its site forwards from anywhere).
    own, routed = ipv4(EVIL, GW_MAC, "10.0.0.14"), ipv4(EVIL, GW_MAC, "192.0.2.7")
    assert sw.forward("evil", [own, routed], 1.1) == {LAN: [own, routed]}
    # The victim and the LAN send from their own addresses as before.
    mine = ipv4(VICTIM, GW_MAC, "10.0.0.10")
    assert sw.forward("victim", [mine], 1.2) == {LAN: [mine]}
    reply = ipv4(GW_MAC, VICTIM, "10.0.0.1")
    assert sw.forward(LAN, [reply], 1.3) == {"victim": [reply]}
    # IPv6: the victim's address (claimed in ND) is not the attacker's either.
    sw.forward("victim", [pkt(Ether(src=VICTIM, dst="33:33:00:00:00:01") / IPv6(src="fe80::a",
               dst="ff02::1") / ICMPv6ND_NA(tgt="fe80::a") / ICMPv6NDOptDstLLAddr(lladdr=VICTIM))],
               1.4)  # fmt: skip
    forged6 = pkt(Ether(src=EVIL, dst=VICTIM) / IPv6(src="fe80::a", dst="fe80::b") / UDP())
    assert sw.forward("evil", [forged6], 1.5) == {}
    assert sw.stats.drops["ip_spoof"] == 4


def test_a_flow_cannot_carry_a_forged_source_past_the_guard() -> None:
    # The fast path takes a frame on its Ethernet header: a flow of the attacker's own
    # packets, then one from the victim's address with the same header, in one batch and
    # the next; and a flow whose source another device binds afterwards.
    sw = lan_with_gateway()
    sw.attach("victim", PortPolicy(), 0.0)
    sw.attach("evil", PortPolicy(), 0.0)
    sw.forward("victim", [arp_reply(VICTIM, "10.0.0.10")], 0.5)
    own, forged = ipv4(EVIL, GW_MAC, "10.0.0.14"), ipv4(EVIL, GW_MAC, "10.0.0.10")
    assert sw.forward("evil", [own, own, forged, own], 1.0) == {LAN: [own, own, own]}
    assert sw.forward("evil", [forged, own], 1.1) == {LAN: [own]}
    assert sw.stats.drops["ip_spoof"] == 2
    # The attacker's flow from an address nobody held, which the victim then claims.
    free = ipv4(EVIL, GW_MAC, "10.0.0.77")
    assert sw.forward("evil", [free, free], 1.2) == {LAN: [free, free]}
    sw.forward("victim", [arp_reply(VICTIM, "10.0.0.77")], 1.3)
    assert sw.forward("evil", [free], 1.4) == {}
    assert sw.stats.drops["ip_spoof"] == 3
