"""Software GRO (hardware.gro): what merges, what never does, and the way back."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from hardware import ethernet, gro
from hardware.tap import FakeTap
from l2bridge.node.metrics import Metrics

MSS = 1448
SRC, DST = "02:00:00:00:00:01", "02:00:00:00:00:02"
TS = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]


def frame(pkt: object, head: bytes = ethernet.NO_OFFLOAD) -> bytes:
    return head + bytes(pkt)  # type: ignore[call-overload]


def payload(i: int, size: int = MSS) -> bytes:
    return bytes((i * 7 + j) & 0xFF for j in range(size))


def tcp4(
    i: int,
    *,
    seq0: int = 1000,
    size: int = MSS,
    flags: str = "A",
    ipflags: str | int = "DF",
    **ip: object,
) -> bytes:
    ip.setdefault("id", 100 + i)
    pkt = (
        Ether(src=SRC, dst=DST)
        / IP(src="10.0.0.1", dst="10.0.0.2", flags=ipflags, **ip)
        / TCP(sport=4000, dport=80, seq=seq0 + i * MSS, ack=5, flags=flags, window=900, options=TS)
        / Raw(payload(i, size))
    )
    return frame(pkt)


def tcp6(i: int, *, size: int = MSS, flags: str = "A") -> bytes:
    pkt = (
        Ether(src=SRC, dst=DST)
        / IPv6(src="fd00::1", dst="fd00::2", fl=5)
        / TCP(sport=4000, dport=80, seq=9 + i * MSS, ack=5, flags=flags, window=900, options=TS)
        / Raw(payload(i, size))
    )
    return frame(pkt)


def udp4(i: int, *, size: int = 1400, sport: int = 5000) -> bytes:
    pkt = (
        Ether(src=SRC, dst=DST)
        / IP(src="10.0.0.1", dst="10.0.0.2", id=40 + i, flags="DF")
        / UDP(sport=sport, dport=53)
        / Raw(payload(i, size))
    )
    return frame(pkt)


def udp6(i: int, *, size: int = 1400) -> bytes:
    pkt = Ether(src=SRC, dst=DST) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5, dport=6)
    return frame(pkt / Raw(payload(i, size)))


def arp() -> bytes:
    return frame(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2"))


def checksum_ok(tunnel_frame: bytes) -> bool:
    pkt = Ether(tunnel_frame[ethernet.OFFLOAD_HEADER_LEN :])
    layer = TCP if TCP in pkt else UDP
    got = pkt[layer].chksum
    del pkt[layer].chksum
    return bool(Ether(bytes(pkt))[layer].chksum == got)


def roundtrip(frames: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for f in gro.coalesce(frames):
        out.extend(gro.segment(f) if f[1] != ethernet.GSO_NONE else [f])
    return out


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (tcp4, ethernet.GSO_TCPV4),
        (tcp6, ethernet.GSO_TCPV6),
        (udp4, ethernet.GSO_UDP_L4),
        (udp6, ethernet.GSO_UDP_L4),
    ],
)
def test_a_run_becomes_one_super_frame_that_cuts_back_byte_for_byte(make, kind) -> None:
    frames = [make(i) for i in range(20)] + [make(20, size=300)]  # a shorter last one
    merged = gro.coalesce(frames)
    assert len(merged) == 1
    flags, gso_type, hdr_len, gso_size, start, offset = ethernet.OFFLOAD_HEADER.unpack_from(
        merged[0], 0
    )
    assert (flags, gso_type) == (ethernet.NEEDS_CSUM, kind)
    pkt = Ether(frames[0][10:])
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    assert start == len(pkt) - len(l4)  # the L4 header's offset
    assert offset == (16 if TCP in pkt else 6)
    assert hdr_len == len(pkt) - len(l4.payload)  # every header before the payload
    assert gso_size == len(Ether(frames[0][10:]).lastlayer().load)
    header = ethernet.parse(merged[0], 1518)
    assert header.gso
    # the kernel finishing the checksum gets the right one
    finished = bytearray(merged[0])
    ethernet.finish_checksum(finished)
    assert checksum_ok(bytes(finished))
    # cut back as TSO/USO would: exactly the frames that went in
    assert gro.segment(merged[0]) == frames


def test_psh_ends_a_run_and_stays_on_its_last_segment() -> None:
    frames = [tcp4(i, flags="PA" if i in (4, 9) else "A") for i in range(12)]
    merged = gro.coalesce(frames)
    assert len(merged) == 3
    assert [Ether(f[10:])[TCP].flags for f in merged] == ["PA", "PA", "A"]
    assert roundtrip(frames) == frames


@pytest.mark.parametrize(
    ("odd", "runs"),
    [
        (lambda: tcp4(5, seq0=1001), 3),  # a gap in the sequence
        (lambda: tcp4(5, flags="FA"), 3),
        (lambda: tcp4(5, flags="SA"), 3),
        (lambda: tcp4(5, flags="RA"), 3),
        (lambda: tcp4(5, flags="UA"), 3),
        (lambda: tcp4(5, flags="EA"), 3),  # ECN echo
        (lambda: tcp4(5, tos=3), 3),  # congestion experienced
        (lambda: tcp4(5, ttl=9), 3),
        (lambda: tcp4(5, size=MSS + 1), 3),  # longer than the run's segments
        (lambda: tcp4(5, id=7), 1),  # DF set: the ID means nothing and may jump
    ],
)
def test_a_segment_that_differs_starts_a_new_run_and_order_is_kept(odd, runs) -> None:
    frames = [tcp4(i) for i in range(5)] + [odd()] + [tcp4(i) for i in range(6, 10)]
    merged = gro.coalesce(frames)
    assert len(merged) == runs
    if runs == 1:
        frames[5] = tcp4(5)  # cut back, the IDs count up from the first again
    assert roundtrip(frames) == frames


def test_ipv4_without_df_needs_ids_that_count_up() -> None:
    steady = [tcp4(i, ipflags=0, id=300 + i) for i in range(4)]
    assert len(gro.coalesce(steady)) == 1
    jumpy = [tcp4(i, ipflags=0, id=300 + 2 * i) for i in range(4)]
    assert gro.coalesce(jumpy) == jumpy


def test_a_corrupted_segment_is_never_merged_so_its_checksum_still_fails() -> None:
    frames = [tcp4(i) for i in range(10)]
    bad = bytearray(frames[5])
    bad[-1] ^= 0x40
    frames[5] = bytes(bad)
    merged = gro.coalesce(frames)
    assert frames[5] in merged  # passed through as it came: the receiver drops it
    assert not checksum_ok(frames[5])
    assert [len(Ether(f[10:])[Raw].load) for f in merged] == [5 * MSS, MSS, 4 * MSS]


def test_checksums_the_kernel_vouched_for_or_left_to_offload_are_not_recomputed() -> None:
    valid = ethernet.offload_header(flags=ethernet.DATA_VALID)
    vouched = [valid + f[10:] for f in (tcp4(i) for i in range(4))]
    assert len(gro.coalesce(vouched)) == 1
    partial = ethernet.offload_header(flags=ethernet.NEEDS_CSUM, csum_start=34, csum_offset=16)
    left = [partial + f[10:] for f in (tcp4(i) for i in range(4))]
    assert len(gro.coalesce(left)) == 1
    elsewhere = ethernet.offload_header(flags=ethernet.NEEDS_CSUM, csum_start=30, csum_offset=16)
    odd = [elsewhere + f[10:] for f in (tcp4(i) for i in range(4))]
    assert gro.coalesce(odd) == odd


def test_flows_interleave_without_reordering_any_of_them() -> None:
    rng = random.Random(5)
    a = [tcp4(i) for i in range(30)]
    b = [udp4(i, sport=6000) for i in range(30)]
    c = [udp4(i, sport=6001, size=200 + i) for i in range(10)]  # sizes vary: few merges
    streams = {"a": list(a), "b": list(b), "c": list(c), "x": [arp() for _ in range(3)]}
    mixed: list[bytes] = []
    while any(streams.values()):
        name = rng.choice([k for k, v in streams.items() if v])
        mixed.append(streams[name].pop(0))
    out = roundtrip(mixed)
    assert len(gro.coalesce(mixed)) < len(mixed)
    for flow in (a, b, c):
        assert [f for f in out if f in flow] == flow


def test_a_frame_outside_any_run_holds_back_later_segments() -> None:
    # a pure ACK of the same connection between data segments: nothing may overtake it
    ack = frame(
        Ether(src=SRC, dst=DST)
        / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF")
        / TCP(sport=4000, dport=80, seq=1000 + 3 * MSS, ack=6, flags="A")
    )
    frames = [tcp4(0), tcp4(1), tcp4(2), ack, tcp4(3), tcp4(4)]
    assert roundtrip(frames) == frames


def test_super_frames_stay_within_64k_and_the_segment_limit() -> None:
    frames = [tcp4(i) for i in range(100)]
    merged = gro.coalesce(frames)
    assert all(len(f) - 10 - 14 <= 65535 for f in merged)
    assert len(merged) == 3
    small = [udp4(i, size=100) for i in range(200)]
    assert len(gro.coalesce(small)) == 4  # at most 64 datagrams a super-frame
    assert roundtrip(small) == small


def test_what_is_not_tcp_or_udp_over_plain_ip_passes_untouched() -> None:
    tagged = frame(Ether(src=SRC, dst=DST) / Dot1Q(vlan=5) / IP() / UDP() / b"x")
    fragment = tcp4(0, ipflags="MF")
    frames = [arp(), tagged, fragment, arp(), tagged, tcp4(1, ipflags="MF")]
    assert gro.coalesce(frames) == frames
    assert gro.coalesce([]) == []
    assert gro.coalesce([tcp4(0)]) == [tcp4(0)]


def test_segment_refuses_what_is_not_a_super_frame() -> None:
    with pytest.raises(ethernet.FrameError):
        gro.segment(tcp4(0))
    hdr = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM,
        gso_type=ethernet.GSO_UDP_L4,
        gso_size=100,
        csum_start=34,
        csum_offset=6,
    )
    with pytest.raises(ethernet.FrameError):
        gro.segment(hdr + tcp4(0)[10:])  # says UDP, carries TCP


def test_offload_tap_coalesces_its_reads_and_a_plain_tap_cuts_super_frames() -> None:
    reader = FakeTap(offload=True, mtu=1500, coalesce=True)
    frames = [tcp4(i) for i in range(8)]
    for f in frames:
        reader.inject(f)
    got = reader.read_batch()
    assert len(got) == 1 and reader.stats.coalesced == 7 and reader.stats.frames_read == 8
    metrics = Metrics("client")
    metrics.watch_tap(reader.stats)
    assert b'shadowmesh_tap_frames_coalesced{role="client"} 7.0' in metrics.prometheus_text()
    plain = FakeTap()
    assert plain.write_batch(got) == 8
    assert plain.delivered() == [f[10:] for f in frames]
    assert plain.stats.segmented == 1
    # a plain TAP never coalesces: its peer may not take super-frames
    quiet = FakeTap(coalesce=True)
    for f in frames:
        quiet.inject(f[10:])
    assert len(quiet.read_batch()) == 8
    for tap in (reader, plain, quiet):
        tap.close()


def test_coalescer_merges_as_frames_come_and_starts_afresh_after_take() -> None:
    merger = gro.Coalescer()
    lone = tcp4(0)
    merger.push(lone)
    assert merger.take()[0] is lone  # a lone frame comes back as it was
    for i in range(6):
        merger.push(tcp4(i))
    first = merger.take()
    assert len(first) == 1 and gro.segment(first[0]) == [tcp4(i) for i in range(6)]
    for i in range(6, 9):  # the next batch: a new run, nothing of the old one
        merger.push(tcp4(i))
    assert gro.segment(merger.take()[0]) == [tcp4(i) for i in range(6, 9)]
    assert merger.take() == []


def test_a_merging_tap_counts_its_limits_in_frames_read() -> None:
    tap = FakeTap(offload=True, coalesce=True)
    for i in range(10):
        tap.inject(tcp4(i))
    got = tap.read_batch(max_frames=4)
    assert len(got) == 1 and gro.segment(got[0]) == [tcp4(i) for i in range(4)]
    rest = tap.read_batch()
    assert gro.segment(rest[0]) == [tcp4(i) for i in range(4, 10)]
    assert (tap.stats.frames_read, tap.stats.coalesced) == (10, 8)
    tap.close()
