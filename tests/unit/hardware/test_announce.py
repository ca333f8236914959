"""Announcement frames and the exit's stable MAC."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from hardware.announce import _checksum, garp, parse_mac, stable_mac, unsolicited_na

MAC = bytes.fromhex("020011223344")


def test_stable_mac_is_per_node_locally_administered_unicast() -> None:
    a, b = stable_mac(b"\x01" * 32), stable_mac(b"\x02" * 32)
    assert a == stable_mac(b"\x01" * 32) and a != b
    for mac in (a, b):
        assert len(mac) == 6 and mac[0] & 0x02 and not mac[0] & 0x01


def test_garp_is_a_broadcast_request_for_its_own_address() -> None:
    frame = garp(MAC, ipaddress.IPv4Address("10.77.0.254"))
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC and frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == MAC and frame[28:32] == frame[38:42] == bytes([10, 77, 0, 254])


def test_unsolicited_na_checksums_and_overrides() -> None:
    address = ipaddress.IPv6Address("fd77::fe")
    frame = unsolicited_na(MAC, address, router=True)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[12:14] == b"\x86\xdd"
    ipv6, icmp = frame[14:54], frame[54:]
    assert ipv6[6] == 58 and ipv6[7] == 255  # ICMPv6, hop limit 255 (RFC 4861)
    assert ipv6[8:24] == address.packed
    assert icmp[0] == 136 and struct.unpack("!I", icmp[4:8])[0] == 0xA0000000
    assert icmp[8:24] == address.packed and icmp[24:32] == b"\x02\x01" + MAC
    pseudo = ipv6[8:40] + struct.pack("!I", len(icmp)) + b"\x00\x00\x00\x3a"
    assert _checksum(pseudo + icmp) == 0  # a receiver's check passes


@pytest.mark.parametrize("text", ["", "02:00:00:00:00", "01:00:5e:00:00:01", "zz:00:00:00:00:00"])
def test_parse_mac_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mac(text)
