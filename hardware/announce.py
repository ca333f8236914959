"""Announce an interface's addresses to its LAN: gratuitous ARP and unsolicited NA.

When an exit restarts, hosts on its LAN still hold ARP / neighbour entries for its
gateway address. With a stable MAC (``stable_mac``) those entries stay right; the
announcements make every host refresh them at once anyway (RFC 5227 ARP announcement,
RFC 4861 7.2.6 unsolicited Neighbor Advertisement with the Override flag), which also
covers an operator who changed the MAC on purpose.

The frame builders are pure; ``announce`` sends them with one AF_PACKET socket bound to
the interface (needs CAP_NET_RAW in its network namespace).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import struct
import subprocess

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ICMPV6 = 58
NEIGHBOR_ADVERT = 136
NA_OVERRIDE = 0x20000000
NA_ROUTER = 0x80000000
OPT_TARGET_LLADDR = 2
MAC_LABEL = b"shadowmesh exit mac v1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AnnounceError(Exception):
    """The interface could not be read or written (local error)."""


def stable_mac(node_id: bytes) -> bytes:
    """A locally administered unicast MAC derived from the exit's nodeId (same every start)."""
    digest = hashlib.sha256(MAC_LABEL + node_id).digest()
    return bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]


def parse_mac(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` -> 6 bytes; ValueError for anything else (or multicast)."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError("a MAC address like 02:00:00:00:00:01")
    mac = bytes.fromhex("".join(parts))
    if mac[0] & 1:
        raise ValueError("a unicast MAC (the first byte's lowest bit clear)")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def garp(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """A gratuitous ARP request (sender = target = ``address``), broadcast."""
    ip = address.packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def unsolicited_na(mac: bytes, address: ipaddress.IPv6Address, *, router: bool) -> bytes:
    """An unsolicited Neighbor Advertisement (Override set) to all nodes, hop limit 255."""
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    option = bytes([OPT_TARGET_LLADDR, 1]) + mac
    body = struct.pack("!I", flags) + address.packed + option
    pseudo = (
        address.packed + ALL_NODES.packed + struct.pack("!I", 4 + len(body)) + b"\x00\x00\x00"
    ) + bytes([ICMPV6])
    checksum = _checksum(pseudo + struct.pack("!BBH", NEIGHBOR_ADVERT, 0, 0) + body)
    icmp = struct.pack("!BBH", NEIGHBOR_ADVERT, 0, checksum) + body
    header = struct.pack("!IHBB", 6 << 28, len(icmp), ICMPV6, 255)
    ipv6 = header + address.packed + ALL_NODES.packed + icmp
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ipv6


def frames_for(mac: bytes, addresses: list[Address], *, router: bool = True) -> list[bytes]:
    return [
        garp(mac, a)
        if isinstance(a, ipaddress.IPv4Address)
        else unsolicited_na(mac, a, router=router)
        for a in addresses
    ]


def addresses_of(ifname: str) -> list[Address]:
    """The interface's IPv4 and IPv6 addresses (``ip -j addr``). Raises AnnounceError."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show", "dev", ifname],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        found: list[Address] = []
        for link in json.loads(out or "[]"):
            for info in link.get("addr_info", []):
                found.append(ipaddress.ip_address(info["local"]))
        return found
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        raise AnnounceError(f"cannot read the addresses of {ifname}: {exc}") from None


def announce(ifname: str, mac: bytes, addresses: list[Address], *, router: bool = True) -> int:
    """Send one announcement per address out of ``ifname``; the number sent.

    Raises AnnounceError when the interface cannot be written.
    """
    return send_frames(ifname, frames_for(mac, addresses, router=router))


def send_frames(ifname: str, frames: list[bytes]) -> int:
    """Send Ethernet frames out of ``ifname`` as they are (a packet socket); how many.

    Raises AnnounceError when the interface cannot be written."""
    if not frames:
        return 0
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            for frame in frames:
                sock.send(frame)
    except OSError as exc:
        raise AnnounceError(f"cannot send on {ifname}: {exc.strerror or exc}") from None
    return len(frames)
