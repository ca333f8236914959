"""The DHCP guard: a client of the exit cannot answer other sites' hosts as their DHCP server.

The attacker is an authenticated client (a port of the switch) running a DHCP or DHCPv6
server, or forging its replies; the victims are hosts on the exit's LAN and at other sites
asking for an address. Frames are built with scapy as the real servers send them.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (
    DHCP6_Advertise,
    DHCP6_RelayForward,
    DHCP6_RelayReply,
    DHCP6_Reply,
    DHCP6_Solicit,
    DHCP6OptClientId,
)
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from exitnode import constants, dhcpguard
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from hardware import ethernet

LAN = constants.LOCAL_PORT
TRUNK = PortPolicy(vlans=None)
BCAST = "ff:ff:ff:ff:ff:ff"
ROGUE = "02:00:00:00:00:0e"
HOST = "02:00:00:00:00:0a"
SERVER = "02:00:00:00:00:5e"
ALL_DHCP6 = "33:33:00:01:00:02"


def frame(p: object) -> bytes:
    return ethernet.NO_OFFLOAD + bytes(p)  # type: ignore[call-overload]


def judged(data: bytes) -> bool:
    header = ethernet.parse(data, 1522, frozenset({ethernet.TPID_8021Q, ethernet.TPID_8021AD}))
    return dhcpguard.server_message(data, header)


def offer(src: str = ROGUE, dst: str = BCAST, message: str = "offer") -> Ether:
    return (
        Ether(src=src, dst=dst)
        / IP(src="192.168.66.1", dst="255.255.255.255")
        / UDP(sport=67, dport=68)
        / BOOTP(op=2, yiaddr="192.168.66.50", chaddr=bytes.fromhex(HOST.replace(":", "")))
        / DHCP(options=[("message-type", message), ("router", "192.168.66.1"), "end"])
    )


def discover(src: str = HOST) -> Ether:
    return (
        Ether(src=src, dst=BCAST)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=bytes.fromhex(src.replace(":", "")))
        / DHCP(options=[("message-type", "discover"), "end"])
    )


def v6(payload: object, *ext: object, dst: str = ALL_DHCP6) -> Ether:
    packet = IPv6(src="fe80::e", dst="ff02::1:2")
    for header in ext:
        packet = packet / header  # type: ignore[operator]
    return Ether(src=ROGUE, dst=dst) / packet / payload  # type: ignore[operator]


# -- what counts as a server's message ---------------------------------------------------------


@pytest.mark.parametrize("message", ["offer", "ack", "nak"])
def test_dhcpv4_server_replies_are_server_messages(message: str) -> None:
    assert judged(frame(offer(message=message)))
    assert judged(frame(offer(dst=HOST, message=message)))  # unicast to the host's MAC


def test_requests_and_a_relay_agents_forwarded_requests_are_not() -> None:
    assert not judged(frame(discover()))
    relayed = (
        Ether(src=ROGUE, dst=SERVER)
        / IP(src="10.9.0.1", dst="10.0.0.5")
        / UDP(sport=67, dport=67)
        / BOOTP(op=1, giaddr="10.9.0.1")
        / DHCP(options=[("message-type", "discover"), "end"])
    )
    assert not judged(frame(relayed))
    assert not judged(frame(Ether() / IP() / UDP(dport=53) / DNS(qd=DNSQR(qname="a."))))
    assert not judged(frame(Ether() / IP() / TCP(dport=68)))


def test_a_servers_reply_to_a_relay_agent_is_a_server_message() -> None:
    to_relay = Ether() / IP() / UDP(sport=67, dport=67) / BOOTP(op=2, giaddr="10.9.0.1")
    assert judged(frame(to_relay))


def test_any_udp_to_the_client_port_counts_whatever_its_source_port() -> None:
    # dhclient and udhcpc read port 68 from a raw socket: a reply from another port works.
    forged = Ether() / IP() / UDP(sport=4000, dport=68) / BOOTP(op=2)
    assert judged(frame(forged))


def test_dhcpv6_server_messages_and_relay_replies() -> None:
    client_id = DHCP6OptClientId()
    assert judged(frame(v6(UDP(sport=547, dport=546) / DHCP6_Advertise() / client_id)))
    assert judged(frame(v6(UDP(sport=547, dport=546) / DHCP6_Reply())))
    assert judged(frame(v6(UDP(sport=547, dport=547) / DHCP6_RelayReply())))
    assert not judged(frame(v6(UDP(sport=546, dport=547) / DHCP6_Solicit() / client_id)))
    assert not judged(frame(v6(UDP(sport=547, dport=547) / DHCP6_RelayForward())))


def test_extension_headers_and_fragments_do_not_hide_a_dhcpv6_reply() -> None:
    reply = UDP(sport=547, dport=546) / DHCP6_Reply()
    assert judged(frame(v6(reply, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())))
    assert judged(frame(v6(reply, IPv6ExtHdrFragment(offset=0, m=1, nh=17))))
    # A later fragment has no UDP header; without the first it is never reassembled.
    later = v6(b"\x00" * 16, IPv6ExtHdrFragment(offset=2, m=0, nh=17))
    assert not judged(frame(later))
    # Nine extension headers (no real packet has so many) or a chain cut short: dropped.
    many = v6(reply, *[IPv6ExtHdrDestOpt() for _ in range(9)])
    assert judged(frame(many))
    cut = bytes(v6(b"", IPv6ExtHdrHopByHop()))
    header = bytearray(frame(Ether(cut)))
    header[ethernet.OFFLOAD_HEADER_LEN + 14 + 40] = 60  # the hop-by-hop says more follows
    assert judged(bytes(header))


def test_ipv4_fragments_options_and_cut_headers() -> None:
    first = Ether() / IP(flags="MF", frag=0) / UDP(sport=67, dport=68) / (b"x" * 8)
    assert judged(frame(first))
    later = Ether() / IP(flags=0, frag=3, proto=17) / (b"\x00\x43\x00\x44" + b"\x00" * 20)
    assert not judged(frame(later))
    options = Ether() / IP(options=b"\x01" * 8) / UDP(sport=67, dport=68) / BOOTP(op=2)
    assert judged(frame(options))
    # UDP to 67 too short to hold BOOTP's op: cannot be judged, so it is dropped.
    short = Ether() / IP(proto=17) / struct.pack(">HHHH", 68, 67, 8, 0)
    assert judged(frame(short))
    # A UDP header cut short after a valid IP header.
    cut = Ether() / IP(proto=17) / b"\x00\x43"
    assert judged(frame(cut))


def test_vlan_tags_and_a_c_tag_inside_an_s_tag_are_looked_through() -> None:
    tagged = offer().copy()
    tagged_frame = Ether(src=ROGUE, dst=BCAST) / Dot1Q(vlan=10) / tagged.payload
    assert judged(frame(tagged_frame))
    qinq = Ether(src=ROGUE, dst=BCAST) / Dot1AD(vlan=7) / Dot1Q(vlan=10) / tagged.payload
    assert judged(frame(qinq))


def test_a_udp_super_frame_to_the_client_port_is_a_server_message() -> None:
    packet = (
        Ether(src=ROGUE, dst=HOST)
        / IP(src="10.0.0.9", dst="10.0.0.10")
        / UDP(sport=67, dport=68)
        / (b"\x02" + bytes(2999))
    )
    data = bytes(packet)
    hdr = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM,
        gso_type=ethernet.GSO_UDP_L4,
        hdr_len=42,
        gso_size=1000,
        csum_start=34,
        csum_offset=6,
    )
    assert judged(hdr + data)


@pytest.mark.parametrize("cut", range(1, 90))
def test_never_raises_on_frames_cut_anywhere(cut: int) -> None:
    for whole in (frame(offer()), frame(v6(UDP(dport=546) / DHCP6_Reply(), IPv6ExtHdrHopByHop()))):
        data = whole[: len(whole) - cut]
        try:
            header = ethernet.parse(data, 1522)
        except ethernet.FrameError:
            continue
        dhcpguard.server_message(data, header)


# -- the switch ----------------------------------------------------------------------------------


def switch() -> Switch:
    sw = Switch(SwitchConfig(announce_holdings=False))
    sw.attach(LAN, TRUNK, 0.0)
    sw.attach("rogue#1", PortPolicy(), 0.0, device="rogue")
    sw.attach("site#2", PortPolicy(), 0.0, device="site")
    return sw


def test_a_clients_dhcp_server_reaches_no_other_site_and_not_the_lan() -> None:
    sw = switch()
    # The hosts ask: their DISCOVERs flood to every port, the rogue's included.
    assert set(sw.forward(LAN, [frame(discover())], 1.0)) == {"rogue#1", "site#2"}
    out = sw.forward("rogue#1", [frame(offer()), frame(offer(dst=HOST, message="ack"))], 1.1)
    assert out == {}
    assert sw.stats.drops[dhcpguard.DROP_DHCP_SERVER] == 2
    # Told once for the device, however many it sends.
    sw.forward("rogue#1", [frame(offer())], 1.2)
    assert sw.refusals == [("rogue#1", dhcpguard.DROP_DHCP_SERVER)]
    # Its other traffic still flows.
    dns = frame(Ether(src=ROGUE, dst=HOST) / IP() / UDP(sport=5353, dport=53) / b"q")
    assert sw.forward("rogue#1", [dns], 1.3) == {LAN: [dns]}


def test_the_lan_and_a_trusted_site_may_answer() -> None:
    sw = switch()
    sw.forward("site#2", [frame(discover())], 1.0)
    from_lan = frame(offer(src=SERVER, dst=HOST))
    assert sw.forward(LAN, [from_lan], 1.1) == {"site#2": [from_lan]}
    sw.attach("office#3", PortPolicy(dhcp_server=True), 1.2, device="office")
    from_office = frame(offer(src="02:00:00:00:00:0f", dst=HOST))
    assert sw.forward("office#3", [from_office], 1.3) == {"site#2": [from_office]}
    assert sw.stats.drops[dhcpguard.DROP_DHCP_SERVER] == 0


def test_a_flow_of_ordinary_frames_does_not_carry_an_offer_past_the_guard() -> None:
    # The fast path takes a frame on its Ethernet header alone: first a flow of pings from
    # the rogue to the host, then the offer with the same header, in one batch and the next.
    sw = switch()
    sw.forward(LAN, [frame(discover())], 1.0)
    ping = frame(Ether(src=ROGUE, dst=HOST) / IP(src="192.168.66.1") / UDP(dport=9) / b"p")
    forged = frame(offer(dst=HOST))
    assert forged[:24] == ping[:24]  # same offload and Ethernet header: the flow's key
    out = sw.forward("rogue#1", [ping, ping, forged, ping], 1.1)
    assert out == {LAN: [ping, ping, ping]}
    out = sw.forward("rogue#1", [forged, ping], 1.2)  # the flow kept from the last call
    assert out == {LAN: [ping]}
    assert sw.stats.drops[dhcpguard.DROP_DHCP_SERVER] == 2


def test_a_device_whose_policy_trusts_it_is_told_nothing() -> None:
    sw = Switch(SwitchConfig(announce_holdings=False))
    sw.attach(LAN, TRUNK, 0.0)
    sw.attach("office#1", PortPolicy(dhcp_server=True), 0.0, device="office")
    assert sw.forward("office#1", [frame(offer())], 1.0) == {LAN: [frame(offer())]}
    assert sw.refusals == []
