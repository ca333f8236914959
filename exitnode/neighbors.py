"""ARP and IPv6 Neighbor Discovery inspection for the switch, sans-I/O.

``claims(frame, header)`` reads what an ARP or ND frame says about addresses: which IP
addresses its sender claims to own (the switch binds each to the port that claimed it
first, so another port cannot take it over) and whether the link-layer addresses inside
agree with the Ethernet source. Everything else is not looked at (an empty claim).

Read as a claim:
- ARP (request or reply) over Ethernet/IPv4: the sender protocol address (0.0.0.0, the
  RFC 5227 probe, claims nothing); the sender hardware address must be the frame's source.
- ND Neighbor Solicitation: the IPv6 source (the unspecified address of duplicate address
  detection claims nothing); a Source Link-Layer Address option must be the frame's source.
- ND Neighbor Advertisement: the target address and the IPv6 source; a Target Link-Layer
  Address option must be the frame's source.
- Router Advertisements and Redirects are refused from a client outright (RA guard): only
  the exit's LAN has routers.
Extension headers before ICMPv6 are walked (a bounded number), so an NA cannot hide
behind a hop-by-hop or fragment header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from hardware import ethernet

Buffer: TypeAlias = bytes | bytearray | memoryview

DROP_ARP_MALFORMED = "arp_malformed"
DROP_ARP_MAC_MISMATCH = "arp_mac_mismatch"  # sender hardware address is not the frame's
DROP_ND_MALFORMED = "nd_malformed"
DROP_ND_MAC_MISMATCH = "nd_mac_mismatch"  # link-layer option is not the frame's source
DROP_ND_ROUTER = "nd_router"  # a Router Advertisement or Redirect from a client

ARP_LEN = 28
IPV6_HEADER_LEN = 40
ICMPV6 = 58
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_REDIRECT = 137
OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2
# Hop-by-hop, routing, destination options (walked); fragment (44) handled apart.
EXTENSION_HEADERS = frozenset({0, 43, 60})
FRAGMENT = 44
MAY_CARRY_ND = EXTENSION_HEADERS | {ICMPV6, FRAGMENT}
MAX_EXTENSION_HEADERS = 8
UNSPECIFIED_V4 = bytes(4)
UNSPECIFIED_V6 = bytes(16)


class Refused(ValueError):
    """An ARP/ND frame the switch must drop; ``reason`` is its drop-counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claim:
    """The addresses one frame claims for its sender (4-byte IPv4 or 16-byte IPv6)."""

    addresses: tuple[bytes, ...] = ()
    router: bool = False  # a Router Advertisement or Redirect


NO_CLAIM = Claim()


def claims(frame: Buffer, header: ethernet.EthernetHeader) -> Claim:
    """What ``frame`` claims; raises ``Refused`` for a malformed or inconsistent ARP/ND."""
    if header.gso:
        return NO_CLAIM
    if header.ethertype == ethernet.ETHERTYPE_ARP:
        return _arp(frame, header.l3, header.src)
    if header.ethertype == ethernet.ETHERTYPE_IPV6:
        return _ipv6(frame, header.l3, header.src)
    return NO_CLAIM


def _arp(frame: Buffer, at: int, src: bytes) -> Claim:
    if len(frame) - at < ARP_LEN:
        raise Refused(DROP_ARP_MALFORMED)
    body = bytes(frame[at : at + ARP_LEN])
    htype, ptype, hlen, plen = body[0:2], body[2:4], body[4], body[5]
    oper = int.from_bytes(body[6:8], "big")
    if htype != b"\x00\x01" or ptype != b"\x08\x00" or hlen != 6 or plen != 4:
        raise Refused(DROP_ARP_MALFORMED)
    if oper not in (1, 2):
        raise Refused(DROP_ARP_MALFORMED)
    sha, spa = body[8:14], body[14:18]
    if sha != src:
        raise Refused(DROP_ARP_MAC_MISMATCH)
    if spa == UNSPECIFIED_V4:
        return NO_CLAIM  # an address probe claims nothing
    if spa[0] >= 224 or spa[0] == 0 or spa[0] == 127:
        raise Refused(DROP_ARP_MALFORMED)  # multicast, broadcast, "this network", loopback
    return Claim((spa,))


def _ipv6(frame: Buffer, at: int, src: bytes) -> Claim:
    if len(frame) - at < IPV6_HEADER_LEN:
        return NO_CLAIM  # not ND; a short IPv6 packet is the receiver's to drop
    nxt = frame[at + 6]
    if nxt not in MAY_CARRY_ND:
        return NO_CLAIM  # the common case (TCP, UDP): nothing to read
    source = bytes(frame[at + 8 : at + 24])
    pos = at + IPV6_HEADER_LEN
    for _ in range(MAX_EXTENSION_HEADERS):
        if nxt == ICMPV6:
            return _icmpv6(frame, pos, source, src)
        if nxt == FRAGMENT:
            if len(frame) - pos < 8:
                raise Refused(DROP_ND_MALFORMED)
            offset = int.from_bytes(frame[pos + 2 : pos + 4], "big") >> 3
            if offset:
                return NO_CLAIM  # a later fragment carries no ICMPv6 header
            nxt, pos = frame[pos], pos + 8
            continue
        if nxt not in EXTENSION_HEADERS:
            return NO_CLAIM
        if len(frame) - pos < 8:
            raise Refused(DROP_ND_MALFORMED)
        nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
    raise Refused(DROP_ND_MALFORMED)  # more extension headers than any real packet has


def _icmpv6(frame: Buffer, at: int, source: bytes, src: bytes) -> Claim:
    if len(frame) - at < 4:
        raise Refused(DROP_ND_MALFORMED)
    kind = frame[at]
    if kind in (ND_ROUTER_ADVERT, ND_REDIRECT):
        return Claim(router=True)
    if kind not in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT):
        return NO_CLAIM
    if len(frame) - at < 24:
        raise Refused(DROP_ND_MALFORMED)
    target = bytes(frame[at + 8 : at + 24])
    wanted = OPT_SOURCE_LL if kind == ND_NEIGHBOR_SOLICIT else OPT_TARGET_LL
    pos = at + 24
    while pos < len(frame):
        if len(frame) - pos < 2:
            raise Refused(DROP_ND_MALFORMED)
        opt, units = frame[pos], frame[pos + 1]
        if units == 0 or pos + units * 8 > len(frame):
            raise Refused(DROP_ND_MALFORMED)
        if opt == wanted and bytes(frame[pos + 2 : pos + 8]) != src:
            raise Refused(DROP_ND_MAC_MISMATCH)
        pos += units * 8
    addresses: list[bytes] = []
    if kind == ND_NEIGHBOR_ADVERT:
        if target == UNSPECIFIED_V6 or target[0] == 0xFF:
            raise Refused(DROP_ND_MALFORMED)
        addresses.append(target)
    if source != UNSPECIFIED_V6 and source[0] != 0xFF and source not in addresses:
        addresses.append(source)
    return Claim(tuple(addresses))
