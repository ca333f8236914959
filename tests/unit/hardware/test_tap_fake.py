"""The TAP adapter's batching and offload handling, through the in-memory FakeTap."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from hardware import ethernet
from hardware.tap import READ_SIZE, FakeTap, TapConfig, TapError


def arp() -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2"))


def test_plain_read_adds_zero_offload_header_and_batches_until_empty() -> None:
    tap = FakeTap()
    frames = [arp() + bytes([i]) for i in range(5)]
    for f in frames:
        tap.inject(f)
    got = tap.read_batch()
    assert got == [ethernet.NO_OFFLOAD + f for f in frames]
    assert tap.read_batch() == []
    assert tap.stats.frames_read == 5
    tap.close()


def test_read_batch_respects_frame_and_byte_limits() -> None:
    tap = FakeTap()
    for _ in range(10):
        tap.inject(arp())
    assert len(tap.read_batch(max_frames=3)) == 3
    one = len(ethernet.NO_OFFLOAD + arp())
    # Room is always kept for one more frame of the largest size.
    assert len(tap.read_batch(max_bytes=READ_SIZE + 2 * one - 1)) == 2
    assert tap.read_batch(max_bytes=READ_SIZE - 1) == []
    assert len(tap.read_batch()) == 5
    tap.close()


def test_plain_write_strips_header_byte_for_byte() -> None:
    tap = FakeTap()
    f = arp()
    assert tap.write_batch([ethernet.NO_OFFLOAD + f, memoryview(ethernet.NO_OFFLOAD + f)]) == 2
    assert tap.delivered() == [f, f]
    tap.close()


def test_offload_mode_passes_header_through_both_ways() -> None:
    tap = FakeTap(offload=True, mtu=9000)
    hdr = ethernet.offload_header(gso_type=ethernet.GSO_TCPV4, gso_size=1448, hdr_len=66)
    frame = hdr + arp()
    tap.inject(frame)
    assert tap.read_batch() == [frame]
    tap.write_batch([frame])
    assert tap.delivered() == [frame]
    tap.close()


def test_plain_tap_drops_malformed_super_frames_and_short_frames() -> None:
    tap = FakeTap()
    gso = ethernet.offload_header(gso_type=ethernet.GSO_TCPV6, gso_size=1400) + arp()
    assert tap.write_batch([gso, b"\x00" * 12]) == 0
    assert tap.delivered() == []
    assert tap.stats.drops == {"bad_offload": 1, "short": 1}
    tap.close()


@pytest.mark.parametrize("l4", ["tcp", "udp"])
def test_plain_tap_finishes_a_partial_checksum(l4: str) -> None:
    payload = b"shadowmesh" * 30
    seg = TCP(sport=1234, dport=80, seq=7) if l4 == "tcp" else UDP(sport=1234, dport=53)
    full = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / seg
        / payload
    )
    wire = bytes(full)  # scapy computed every checksum
    csum_start = 14 + 20
    csum_offset = 16 if l4 == "tcp" else 6
    # What a sending kernel hands over: the pseudo-header sum in place of the checksum.
    ip = full[IP]
    l4_len = len(wire) - csum_start
    proto = 6 if l4 == "tcp" else 17
    pseudo = struct.pack(
        ">4s4sBBH",
        bytes(map(int, ip.src.split("."))),
        bytes(map(int, ip.dst.split("."))),
        0,
        proto,
        l4_len,
    )
    partial = (~ethernet.internet_checksum(pseudo)) & 0xFFFF
    half = bytearray(wire)
    struct.pack_into(">H", half, csum_start + csum_offset, partial)
    hdr = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM, csum_start=csum_start, csum_offset=csum_offset
    )
    tap = FakeTap()
    assert tap.write_batch([hdr + bytes(half)]) == 1
    assert tap.delivered() == [wire]
    tap.close()


def test_config_rejects_bad_names_and_mtus() -> None:
    with pytest.raises(TapError):
        TapConfig(name="x" * 16)
    with pytest.raises(TapError):
        TapConfig(name="tap0", mtu=100)
    assert TapConfig(name="tap0", mtu=9000).mtu == 9000
