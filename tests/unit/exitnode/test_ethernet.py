"""The tunnel-frame header codec the switch relies on (hardware.ethernet)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from hardware import ethernet

A = "02:00:00:00:00:0a"
B = "02:00:00:00:00:0b"
MAX = 1500 + 18


def tf(pkt: object, hdr: bytes = ethernet.NO_OFFLOAD) -> bytes:
    return hdr + bytes(pkt)  # type: ignore[call-overload]


def test_untagged_frame() -> None:
    h = ethernet.parse(tf(Ether(src=A, dst=B) / IP() / TCP()), MAX)
    assert (h.src, h.dst, h.vlan, h.ethertype, h.gso) == (
        bytes.fromhex("02000000000a"),
        bytes.fromhex("02000000000b"),
        0,
        0x0800,
        False,
    )


def test_tagged_frame_reports_vlan_and_inner_ethertype() -> None:
    h = ethernet.parse(tf(Ether(src=A, dst=B) / Dot1Q(vlan=42) / ARP()), MAX)
    assert (h.vlan, h.ethertype) == (42, 0x0806)


def test_priority_tag_is_untagged() -> None:
    assert ethernet.parse(tf(Ether(src=A, dst=B) / Dot1Q(vlan=0, prio=5) / ARP()), MAX).vlan == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (ethernet.NO_OFFLOAD + b"\x01" * 13, "short"),
        (b"\x00" * 5, "short"),
        (tf(Ether(src=A, dst=B, type=0x8100) / b"\x00\x05"), "bad_vlan"),  # truncated tag
        (tf(Ether(src=A, dst=B) / Dot1Q(vlan=4095) / ARP()), "bad_vlan"),
        (tf(Ether(src=A, dst=B) / Dot1AD(vlan=5) / Dot1Q(vlan=6) / ARP()), "unknown_tpid"),
        (tf(Ether(src=A, dst=B) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / ARP()), "bad_vlan"),
        (tf(Ether(src=A, dst=B) / (b"x" * 1505)), "oversized"),
        (tf(Ether(src=A, dst=B) / ARP(), ethernet.offload_header(gso_type=9)), "bad_offload"),
        (tf(Ether(src=A, dst=B) / ARP(), ethernet.offload_header(flags=0x80)), "bad_offload"),
        (tf(Ether(src=A, dst=B) / ARP(), ethernet.offload_header(gso_type=1)), "bad_offload"),
        (
            tf(Ether(src=A, dst=B) / ARP(), ethernet.offload_header(flags=1, csum_start=60)),
            "bad_offload",
        ),
    ],
)
def test_malformed_frames_name_their_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(ethernet.FrameError) as info:
        ethernet.parse(frame, MAX)
    assert info.value.reason == reason


def test_gso_super_frame_may_exceed_mtu_up_to_64k() -> None:
    hdr = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM,
        gso_type=ethernet.GSO_TCPV4 | ethernet.GSO_ECN,
        hdr_len=54,
        gso_size=1448,
        csum_start=34,
        csum_offset=16,
    )
    big = tf(Ether(src=A, dst=B) / IP() / TCP() / (b"x" * 60000), hdr)
    assert ethernet.parse(big, MAX).gso
    too_big = hdr + bytes(ethernet.MAX_GSO_FRAME + 1)
    with pytest.raises(ethernet.FrameError, match="oversized"):
        ethernet.parse(too_big, MAX)


def test_offload_header_round_trip() -> None:
    hdr = ethernet.offload_header(
        flags=1, gso_type=4, hdr_len=86, gso_size=1428, csum_start=54, csum_offset=16
    )
    assert len(hdr) == ethernet.OFFLOAD_HEADER_LEN
    assert ethernet.OFFLOAD_HEADER.unpack(hdr) == (1, 4, 86, 1428, 54, 16)


def test_internet_checksum_rfc1071_example() -> None:
    assert ethernet.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert ethernet.internet_checksum(b"\x00\x01\xf2") == (~(0x0001 + 0xF200)) & 0xFFFF


def test_service_tags_are_read_only_when_configured() -> None:
    qinq = tf(Ether(src=A, dst=B) / Dot1AD(vlan=5) / Dot1Q(vlan=6) / ARP())
    h = ethernet.parse(qinq, MAX, frozenset({ethernet.TPID_8021Q, ethernet.TPID_8021AD}))
    # The service VLAN is the frame's; the customer tag is carried, its ARP still read.
    assert (h.vlan, h.ethertype, h.l3) == (5, 0x0806, ethernet.OFFLOAD_HEADER_LEN + 22)
