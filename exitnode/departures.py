"""Departure and holding notices between exits bridging one LAN, sans-I/O.

Several exits may bridge the same LAN (several circuit tails, or single-hop exits a client
fails over between). Each exit's switch learns a client's stations on its LAN port when
another exit puts them on the LAN, and port security (``exitnode.switch``) then refuses the
client's own frames when they arrive on a client port of *this* exit (``mac_spoof``,
``ip_spoof``) until the LAN entry ages out, five minutes later. When a client port
detaches, its exit therefore sends one notice (or a few) onto its LAN naming the stations
(VLAN, MAC) and addresses (VLAN, IP) that were learned on that port; a switch that holds one
of them on the LAN port the notice arrived on forgets it, and the station may be learned
wherever it shows up next.

Safety: a notice names only what a client port held, and a client port can never hold a
station or address that is live on the LAN (the switch refuses it), so a notice never frees
a live LAN station; a client cannot send a notice (the switch drops notice frames from
client ports: ``forged_departure``); a notice is only obeyed from the LAN port, and only for
entries on that port. A LAN host can forge notices, but a LAN host can already claim any
station on its own LAN.

Holding notices are the other half. A client's frames to the LAN's gateway are unicast: the
LAN's switch never shows them to another exit, so that exit's switch has not learned the
client's station on its LAN port and would let one of *its* clients claim the same MAC or
address, whose frames then take the station over on the LAN (and the LAN taking it back
locks the first client out at its exit). So an exit also announces what its client ports
hold: when a client port learns a station or binds an address, and every
``HOLDING_REFRESH_S`` for all of them. A switch takes a holding notice that arrives on its
LAN port as if the stations named had just sent a frame there (addresses: claimed in ARP
there), which is what they would be to it if their frames crossed the LAN, only kept for
``HOLDING_TTL_S`` after the last notice rather than the whole ageing time, so a client whose
exit crashed (and sent no departure) is refused elsewhere for no longer than that. A LAN host
can forge a holding notice, but it gains nothing it could not get by sending from those MACs.

Wire format: an untagged Ethernet frame to ``DEPARTURE_GROUP`` with EtherType
``DEPARTURE_ETHERTYPE``, payload ``DEPARTURE_MAGIC`` (a departure) or ``HOLDING_MAGIC`` (a
holding) (8) | MAC count (1) | IP count (1) | MACs: VLAN (2, big-endian) + MAC (6) | IPs:
VLAN (2) + length (1: 4 or 16) + address.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from exitnode import constants
from hardware import ethernet

Key = tuple[int, bytes]

DROP_FORGED = "forged_departure"  # a notice from a client port
DROP_MALFORMED = "bad_departure"  # a notice from the LAN that does not parse


_ETHERTYPE = constants.DEPARTURE_ETHERTYPE.to_bytes(2, "big")


class BadNotice(ValueError):
    """A departure notice that does not parse."""


@dataclass(frozen=True, slots=True)
class Notice:
    macs: tuple[Key, ...]
    ips: tuple[Key, ...]
    held: bool = False  # a holding notice; False: a departure


def new_source() -> bytes:
    """A random locally administered unicast MAC for one switch's notices."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


def is_notice(header: ethernet.EthernetHeader) -> bool:
    return (
        header.dst == constants.DEPARTURE_GROUP
        and header.ethertype == constants.DEPARTURE_ETHERTYPE
    )


def is_notice_frame(frame: bytes | bytearray | memoryview) -> bool:
    """Whether ``frame``, as a host on the LAN receives it (no offload header), is a notice."""
    dst, ethertype = bytes(frame[:6]), bytes(frame[12:14])
    return dst == constants.DEPARTURE_GROUP and ethertype == _ETHERTYPE


def encode(
    source: bytes, macs: Sequence[Key], ips: Sequence[Key], *, held: bool = False
) -> list[bytes]:
    """Tunnel frames (no offload) announcing that ``macs`` and ``ips`` left (or, with
    ``held``, are held here); none when both are empty."""
    out: list[bytes] = []
    head = (
        ethernet.NO_OFFLOAD
        + constants.DEPARTURE_GROUP
        + source
        + _ETHERTYPE
        + (constants.HOLDING_MAGIC if held else constants.DEPARTURE_MAGIC)
    )
    per_mac, per_ip = constants.DEPARTURE_MACS_PER_FRAME, constants.DEPARTURE_IPS_PER_FRAME
    i = j = 0
    while i < len(macs) or j < len(ips):
        chunk_macs, chunk_ips = macs[i : i + per_mac], ips[j : j + per_ip]
        i, j = i + per_mac, j + per_ip
        body = bytearray(head)
        body += bytes([len(chunk_macs), len(chunk_ips)])
        for vlan, mac in chunk_macs:
            body += vlan.to_bytes(2, "big") + mac
        for vlan, ip in chunk_ips:
            body += vlan.to_bytes(2, "big") + bytes([len(ip)]) + ip
        out.append(bytes(body))
    return out


def decode(frame: bytes | bytearray | memoryview, header: ethernet.EthernetHeader) -> Notice:
    """The stations and addresses a notice names; BadNotice if it does not parse exactly."""
    if header.vlan != ethernet.UNTAGGED:
        raise BadNotice("tagged")
    data = bytes(frame[header.l3 :])
    magic = data[: len(constants.DEPARTURE_MAGIC)]  # both magics are 8 bytes
    if len(data) < len(constants.DEPARTURE_MAGIC) + 2 or magic not in (
        constants.DEPARTURE_MAGIC,
        constants.HOLDING_MAGIC,
    ):
        raise BadNotice("magic")
    n_macs, n_ips = data[len(magic)], data[len(magic) + 1]
    if n_macs > constants.DEPARTURE_MACS_PER_FRAME or n_ips > constants.DEPARTURE_IPS_PER_FRAME:
        raise BadNotice("count")
    at = len(magic) + 2
    macs: list[Key] = []
    for _ in range(n_macs):
        if at + 8 > len(data):
            raise BadNotice("short")
        mac = data[at + 2 : at + 8]
        if ethernet.is_group(mac):
            raise BadNotice("group MAC")
        macs.append((int.from_bytes(data[at : at + 2], "big"), mac))
        at += 8
    ips: list[Key] = []
    for _ in range(n_ips):
        if at + 3 > len(data) or data[at + 2] not in (4, 16) or at + 3 + data[at + 2] > len(data):
            raise BadNotice("address")
        size = data[at + 2]
        ips.append((int.from_bytes(data[at : at + 2], "big"), data[at + 3 : at + 3 + size]))
        at += 3 + size
    # Ethernet pads short frames with zeros: anything after the entries must be padding.
    if any(data[at:]):
        raise BadNotice("trailing bytes")
    if any(vlan > constants.VLAN_MAX for vlan, _ in macs + ips):
        raise BadNotice("vlan")
    return Notice(tuple(macs), tuple(ips), magic == constants.HOLDING_MAGIC)
