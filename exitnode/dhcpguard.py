"""DHCP guard for the switch, sans-I/O: which frames are a DHCP server speaking.

A host that asks for an address broadcasts its DHCPDISCOVER (DHCPv6: SOLICIT to a multicast
group) to every port of the segment, the exit's clients included. Whoever answers first
becomes the host's gateway and name server, and so sees everything it sends. On a switch
that joins several sites, a device that answers (a compromised site, or one device's
stray home router) would take over the hosts of every other site and of the exit's own
LAN. So, like DHCP snooping on a managed switch, only trusted ports may speak as a DHCP
server: the exit's LAN always, and a device the operator names (``devices.<name>.
dhcp_server: true``, for the site whose server the others use).

``server_message(frame, header)`` is True for a frame a DHCP or DHCPv6 server or relay
sends towards clients:

- IPv4: UDP to port 68 (the client port: OFFER, ACK, NAK and any other server reply), or
  to port 67 carrying a BOOTREPLY (op 2: a server's reply to a relay agent);
- IPv6: UDP to port 546 (the client port: ADVERTISE, REPLY, RECONFIGURE), or to port 547
  carrying a RELAY-REPL (13: a server's reply to a relay agent).

Requests, and relay agents forwarding requests to a server (BOOTREQUEST and RELAY-FORW to
port 67 / 547), are not server messages. Where the answer cannot be read although the
frame is UDP towards those ports, or an IPv6 header chain does not reach its upper-layer
header within the frame or ``MAX_EXTENSION_HEADERS`` (no real packet is like that; a
receiver discards a first fragment without the whole chain, RFC 8200 4.5), the frame
counts as a server message: the guard drops what it cannot judge. A later fragment (IPv4
offset or IPv6 fragment offset not 0) carries no UDP header and is not one: without its
first fragment it cannot be reassembled. A C-tag inside an 802.1ad S-tag is looked
through. Never raises, whatever the bytes.
"""

from __future__ import annotations

from typing import TypeAlias

from exitnode.neighbors import EXTENSION_HEADERS, FRAGMENT, MAX_EXTENSION_HEADERS
from hardware import ethernet

Buffer: TypeAlias = bytes | bytearray | memoryview

DROP_DHCP_SERVER = "dhcp_server"  # a DHCP/DHCPv6 server message from an untrusted port

UDP = 17
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
BOOTREPLY = 2
DHCPV6_CLIENT_PORT = 546
DHCPV6_SERVER_PORT = 547
RELAY_REPL = 13
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40


def server_message(frame: Buffer, header: ethernet.EthernetHeader) -> bool:
    """Whether ``frame`` (a parsed tunnel frame) is a DHCP/DHCPv6 server's message."""
    ethertype, l3 = header.ethertype, header.l3
    if ethertype == ethernet.TPID_8021Q and len(frame) >= l3 + ethernet.VLAN_TAG_LEN:
        # An inner C-tag (the outer tag was an S-tag): the customer's frame is behind it.
        ethertype = int.from_bytes(frame[l3 + 2 : l3 + 4], "big")
        l3 += ethernet.VLAN_TAG_LEN
    if ethertype == ethernet.ETHERTYPE_IPV4:
        return ipv4_server(frame, l3)
    if ethertype == ethernet.ETHERTYPE_IPV6:
        return _ipv6(frame, l3)
    return False


def ipv4_server(frame: Buffer, at: int) -> bool:
    """The IPv4 part of ``server_message``: the packet starting at ``at``."""
    if len(frame) - at < IPV4_HEADER_LEN or frame[at + 9] != UDP:
        return False  # not UDP (a short packet is the receiver's to drop)
    if (frame[at + 6] & 0x1F) or frame[at + 7]:
        return False  # a later fragment: no UDP header in it
    return _udp(frame, at + (frame[at] & 0x0F) * 4, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, BOOTREPLY)


def _ipv6(frame: Buffer, at: int) -> bool:
    if len(frame) - at < IPV6_HEADER_LEN:
        return False
    nxt, pos = frame[at + 6], at + IPV6_HEADER_LEN
    for _ in range(MAX_EXTENSION_HEADERS + 1):
        if nxt == UDP:
            return _udp(frame, pos, DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT, RELAY_REPL)
        if nxt != FRAGMENT and nxt not in EXTENSION_HEADERS:
            return False  # another upper layer (TCP, ICMPv6, ...) or no next header
        if len(frame) - pos < 8:
            return True  # the chain runs past the frame: cannot judge
        if nxt == FRAGMENT:
            if int.from_bytes(frame[pos + 2 : pos + 4], "big") >> 3:
                return False  # a later fragment
            nxt, pos = frame[pos], pos + 8
        else:
            nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
    return True  # more extension headers than any real packet has


def _udp(frame: Buffer, at: int, client_port: int, server_port: int, reply: int) -> bool:
    """UDP at ``at``: to the client port, or a relay reply to the server port."""
    if len(frame) - at < 4:
        return True  # a UDP header cut short: cannot judge
    port = frame[at + 2] << 8 | frame[at + 3]
    if port == client_port:
        return True
    if port != server_port:
        return False
    # The message's first byte: BOOTP's op, DHCPv6's msg-type. Missing: cannot judge.
    return len(frame) - at < 9 or frame[at + 8] == reply
