"""Software GRO (hardware.gro) under random and mutated input.

Whatever a LAN sends: ``coalesce`` never raises, every super-frame it makes is one the
exit's frame checks accept, and cutting the super-frames back gives exactly the frames that
went in (an IPv4 ID aside where DF makes it meaningless). ``segment`` refuses with
``FrameError`` or cuts; it never raises anything else.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hardware import ethernet, gro

MAC = "02:00:00:00:00:07"
HEADS = [
    ethernet.NO_OFFLOAD,
    ethernet.offload_header(flags=ethernet.DATA_VALID),
]


def _flow(kind: int, count: int, size: int, last: int) -> list[bytes]:
    frames = []
    for i in range(count):
        n = last if i == count - 1 else size
        body = Raw(bytes((i + j) & 0xFF for j in range(n)))
        if kind == 0:
            l4 = TCP(sport=1, dport=2, seq=77 + i * size, ack=3, flags="A")
            pkt = (
                Ether(src=MAC, dst=MAC)
                / IP(src="10.0.0.1", dst="10.0.0.2", id=i, flags="DF")
                / l4
                / body
            )
        elif kind == 1:
            pkt = (
                Ether(src=MAC, dst=MAC)
                / IP(src="10.0.0.1", dst="10.0.0.3", id=i)
                / UDP(sport=3)
                / body
            )
        else:
            l4 = TCP(sport=1, dport=2, seq=5 + i * size, flags="A")
            pkt = Ether(src=MAC, dst=MAC) / IPv6(src="fd00::1", dst="fd00::2") / l4 / body
        frames.append(ethernet.NO_OFFLOAD + bytes(pkt))
    return frames


def _normal(frame: bytes) -> bytes:
    """The frame with an IPv4 ID and header checksum zeroed where DF is set."""
    b = bytearray(frame[ethernet.OFFLOAD_HEADER_LEN :])
    if len(b) >= 34 and b[12:14] == b"\x08\x00" and b[14] == 0x45 and b[20] & 0x40:
        b[18:20] = b"\0\0"
        b[24:26] = b"\0\0"
    return bytes(b)


def _back(merged: list[bytes], inputs: list[bytes]) -> list[bytes]:
    """The outputs with each super-frame ``coalesce`` made cut back into frames."""
    passed = {id(f) for f in inputs}
    out: list[bytes] = []
    for f in merged:
        if id(f) in passed:
            out.append(f)
            continue
        ethernet.parse(f, 1518)  # what the exit checks before its kernel sees it
        out.extend(gro.segment(f))
    return out


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    frames: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        size = draw(st.integers(1, 1400))
        frames += _flow(
            draw(st.integers(0, 2)),
            draw(st.integers(1, 12)),
            size,
            draw(st.integers(1, size)),
        )
    order = draw(st.permutations(range(len(frames))))
    frames = [frames[i] for i in sorted(order[: len(order) // 2])] + [
        frames[i] for i in sorted(order[len(order) // 2 :])
    ]
    head = draw(st.sampled_from(HEADS))
    frames = [head + f[ethernet.OFFLOAD_HEADER_LEN :] for f in frames]
    for _ in range(draw(st.integers(0, 3))):
        # a frame damaged on the LAN: the kernel vouched for nothing (an all-zero header)
        i = draw(st.integers(0, len(frames) - 1))
        b = bytearray(ethernet.NO_OFFLOAD + frames[i][ethernet.OFFLOAD_HEADER_LEN :])
        at = draw(st.integers(ethernet.OFFLOAD_HEADER_LEN, len(b) - 1))
        b[at] ^= draw(st.integers(1, 255))
        frames[i] = bytes(b)
    if draw(st.booleans()):
        frames.insert(draw(st.integers(0, len(frames))), draw(st.binary(max_size=120)))
    return frames


@settings(max_examples=400, deadline=None)
@given(batches())
def test_coalesce_then_cut_gives_back_every_frame(frames: list[bytes]) -> None:
    merged = gro.coalesce(frames)
    assert len(merged) <= len(frames)
    back = _back(merged, frames)
    assert sorted(map(_normal, back)) == sorted(map(_normal, frames))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_coalesce_takes_any_bytes(frames: list[bytes]) -> None:
    assert sorted(_back(gro.coalesce(frames), frames)) == sorted(frames)


@settings(max_examples=300, deadline=None)
@given(batches(), st.data())
def test_segment_refuses_or_cuts_any_super_frame(frames: list[bytes], data: st.DataObject) -> None:
    passed = {id(f) for f in frames}
    for f in gro.coalesce(frames):
        if id(f) in passed:
            continue
        b = bytearray(f)
        at = data.draw(st.integers(0, min(len(b), 120) - 1))
        b[at] ^= data.draw(st.integers(1, 255))
        try:
            pieces = gro.segment(bytes(b))
        except ethernet.FrameError:
            continue
        assert all(len(p) <= len(b) for p in pieces)
