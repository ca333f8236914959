"""Software receive offload: runs of plain TCP and UDP frames become GSO super-frames.

A TAP hands us one 1500-byte frame per read whenever the traffic was not a TSO super-frame
to begin with: TCP from a bridged NIC without GRO, any UDP (QUIC, iperf3 ``-u``, media).
Every frame then pays the tunnel's per-frame cost (record, AEAD call, WebSocket frame,
switch, TAP write). As Linux's own GRO does, and as wireguard-go does in front of its TUN,
this module merges consecutive segments of one flow from a read batch into one super-frame
whose virtio-net header tells the receiving kernel to cut it back into the same packets
(``GSO_TCPV4``/``GSO_TCPV6`` at the MSS, ``GSO_UDP_L4`` at the datagram size). The far
end's TAP must accept super-frames: coalescing is for tunnels whose ends run with
``vnet_hdr`` (the default), which already carry the kernel's own TSO super-frames.

What merges (anything else passes through untouched, in order):

* untagged IPv4 without options or fragments, or IPv6 without extension headers;
* TCP: same addresses, ports, ack, window, options (timestamps included) and IP fields,
  flags exactly ACK (a PSH ends a run: it is kept on the last segment), consecutive
  sequence numbers, equal payloads but for a shorter last one;
* UDP: same addresses and ports, equal payloads but for a shorter last one;
* IPv4 IDs that count up by one, or any IDs with DF set (RFC 6864: an atomic datagram's ID
  means nothing; the kernel numbers the segments it cuts from the first one's);
* checksums that are right (computed here, the IPv4 header's too, unless the kernel said
  the frame is valid or left its checksum to offload): merging writes fresh ones, which
  must never turn a corrupted segment into a valid one.

Frames of other mergeable flows in between do not break a run; a frame that cannot be
merged at all closes every open run, so no packet is overtaken by one of its own flow.
Sans-I/O: frames in, frames out (``coalesce``, or ``Coalescer`` while reading).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from hardware import ethernet

BASE = ethernet.OFFLOAD_HEADER_LEN
L3 = BASE + ethernet.ETH_HEADER_LEN  # untagged frames only
MAX_IP_PACKET = 65535
MAX_SEGMENTS = 64  # the kernel's UDP GSO allows 128; 64 x 1448 already fills a TCP packet
MAX_CUT = 1024  # segments ``segment`` makes of one super-frame (TCP's smallest MSS: 745)

TCP = ethernet.TCP
UDP = ethernet.UDP
TCP_ACK = 0x10
TCP_PSH = 0x08
IPV4_DF = 0x4000
IPV4_MF_OFFSET = 0x3FFF
TCP_HEADER_MIN = 20
UDP_HEADER_LEN = 8
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_CSUM_AT = struct.Struct("<HH")  # csum_start, csum_offset in the offload header
_IPV4 = struct.Struct("!2xHHH1xB")  # total length, ID, flags/fragment, protocol
_IPV6 = struct.Struct("!HB")  # payload length, next header
_TCP = struct.Struct("!4xI4xBB4xH")  # sequence, data offset, flags, urgent pointer
_UDP = struct.Struct("!4xHH")  # length, checksum
_ETHERTYPE_IPV4 = ethernet.ETHERTYPE_IPV4.to_bytes(2, "big")
_ETHERTYPE_IPV6 = ethernet.ETHERTYPE_IPV6.to_bytes(2, "big")
IP = L3 - BASE  # the IP header's offset in a frame without its offload header
_PLAIN = bytes(BASE)
_VALID = ethernet.offload_header(flags=ethernet.DATA_VALID)

Buffer = bytes | bytearray | memoryview


class _Seg(NamedTuple):
    """What one mergeable segment is (offsets count from the tunnel frame's start)."""

    flow: bytes  # addresses and ports
    key: int  # the headers (offload header included), fields that may change zeroed
    mask: int  # what ``key`` keeps of ``int.from_bytes(frame[:payload_at])``
    l4: int
    payload_at: int
    size: int  # payload bytes
    tcp: bool
    v6: bool
    seq: int
    ip_id: int
    df: bool
    psh: bool
    verify: bool  # the checksum is for us to check (nobody vouched for it)


class _Run:
    """Segments of one flow waiting to become one frame."""

    __slots__ = (
        "closed", "df", "first", "key", "l4", "last", "mask", "next_id", "next_seq",
        "payload_at", "payloads", "seg", "size", "tcp", "total", "v6", "verify",
    )  # fmt: skip

    def __init__(self, frame: bytes, seg: _Seg) -> None:
        self.seg = seg  # the first segment's (``_emit`` reads it)
        self.first = self.last = frame
        self.payloads = [memoryview(frame)[seg.payload_at : seg.payload_at + seg.size]]
        self.total = self.size = seg.size
        self.next_seq = (seg.seq + seg.size) & 0xFFFFFFFF
        self.next_id = (seg.ip_id + 1) & 0xFFFF
        self.closed = seg.psh
        # What ``Coalescer.push`` reads for every frame, in slots: faster than the tuple's.
        self.key, self.mask, self.payload_at, self.l4 = seg.key, seg.mask, seg.payload_at, seg.l4
        self.tcp, self.v6, self.df, self.verify = seg.tcp, seg.v6, seg.df, seg.verify

    def joins(self, seg: _Seg) -> bool:
        if self.closed or seg.key != self.key or seg.size > self.size:
            return False
        if self.tcp and seg.seq != self.next_seq:
            return False
        if not self.v6 and not seg.df and seg.ip_id != self.next_id:
            return False
        return self.payload_at - L3 + self.total + seg.size <= MAX_IP_PACKET

    def add(self, frame: bytes, size: int, seq: int, ip_id: int, psh: bool) -> None:
        self.last = frame
        at = self.payload_at
        self.payloads.append(memoryview(frame)[at : at + size])
        self.total += size
        self.next_seq = (seq + size) & 0xFFFFFFFF
        self.next_id = (ip_id + 1) & 0xFFFF
        if size < self.size or psh or len(self.payloads) >= MAX_SEGMENTS:
            self.closed = True


class Coalescer:
    """Merges frames as they are read: ``push`` each, then ``take`` the batch."""

    __slots__ = ("_first", "_last", "_out", "_runs")

    def __init__(self) -> None:
        self._out: list[bytes | _Run] = []
        self._runs: dict[bytes, _Run] = {}  # the open run of each flow
        self._last: _Run | None = None  # the run the previous frame went to
        # A batch's first frame waits unparsed: a lone frame (an idle ping) costs nothing.
        self._first: bytes | None = None

    def push(self, frame: bytes) -> None:
        run = self._last
        if run is not None and not run.closed:
            # The fast path, taken by most frames of a bulk flow: ``frame`` is the next
            # segment of the run the previous frame went to (same headers but for the
            # fields that may change, checked here). Written out in this method: a frame
            # costs two Python calls (this and ``_Run.add``), not four. Anything else
            # takes ``_push``.
            at = run.payload_at
            n = len(frame)
            if n > at and int.from_bytes(frame[:at], "big") & run.mask == run.key:
                l4 = run.l4
                if run.v6:
                    end = l4 + (frame[L3 + 4] << 8 | frame[L3 + 5])
                    ip_id = 0
                else:
                    end = L3 + (frame[L3 + 2] << 8 | frame[L3 + 3])
                    ip_id = frame[L3 + 4] << 8 | frame[L3 + 5]
                    if not run.df and ip_id != run.next_id:
                        end = 0
                    elif run.verify and int.from_bytes(frame[L3:l4], "big") % 0xFFFF:
                        end = 0  # a bad header checksum (unless the kernel vouched for it)
                size = end - at
                fits = at - L3 + run.total + size <= MAX_IP_PACKET
                if 0 < size <= run.size and end <= n and fits:
                    if run.tcp:
                        seq = _U32.unpack_from(frame, l4 + 4)[0]
                        flags = frame[l4 + 13]
                        psh = bool(flags & TCP_PSH)
                        ok = seq == run.next_seq and flags & ~TCP_PSH == TCP_ACK
                    else:
                        length, checksum = _UDP.unpack_from(frame, l4)
                        seq, psh = 0, False
                        ok = length == end - l4 and (checksum or not run.v6)
                    if ok and (
                        not run.verify
                        or _checksum_ok(frame, l4, end, TCP if run.tcp else UDP, run.v6)
                    ):
                        run.add(frame, size, seq, ip_id, psh)
                        return
            self._push(frame)
            return
        if self._first is not None:
            first, self._first = self._first, None
            self._push(first)
        elif not self._out:
            self._first = frame
            return
        self._push(frame)

    def _push(self, frame: bytes) -> None:
        seg = _segment(frame)
        if seg is None:
            # Whatever it is, nothing queued before it may now overtake it.
            self._runs.clear()
            self._last = None
            self._out.append(frame)
            return
        run = self._runs.get(seg.flow)
        if run is not None and run.joins(seg):
            run.add(frame, seg.size, seg.seq, seg.ip_id, seg.psh)
        else:
            run = self._runs[seg.flow] = _Run(frame, seg)
            self._out.append(run)
        self._last = run

    def take(self) -> list[bytes]:
        """The frames pushed since the last ``take``, each run as one frame."""
        if self._first is not None:
            first, self._first = self._first, None
            return [first]
        out = [_emit(item) if isinstance(item, _Run) else item for item in self._out]
        self._out = []
        self._runs.clear()
        self._last = None
        return out


def coalesce(frames: Sequence[bytes]) -> list[bytes]:
    """``frames`` with each mergeable run replaced by one super-frame (same order per flow)."""
    if len(frames) < 2:
        return list(frames)
    merger = Coalescer()
    for frame in frames:
        merger.push(frame)
    return merger.take()


def _mask(payload_at: int, l4: int, tcp: bool, v6: bool) -> int:
    """The mask that zeroes what may change along a run in ``frame[:payload_at]``."""
    cached = _MASKS.get((payload_at, l4, tcp, v6))
    if cached is not None:
        return cached
    keep = bytearray(b"\xff" * payload_at)
    if v6:
        keep[L3 + 4 : L3 + 6] = b"\0\0"  # payload length
    else:
        keep[L3 + 2 : L3 + 6] = b"\0\0\0\0"  # total length, ID
        keep[L3 + 10 : L3 + 12] = b"\0\0"  # header checksum
    if tcp:
        keep[l4 + 4 : l4 + 8] = b"\0\0\0\0"  # sequence number
        keep[l4 + 13] = 0  # flags (checked apart: a PSH ends a run)
        keep[l4 + 16 : l4 + 18] = b"\0\0"  # checksum
    else:
        keep[l4 + 4 : l4 + 8] = b"\0\0\0\0"  # length, checksum
    mask = _MASKS[(payload_at, l4, tcp, v6)] = int.from_bytes(keep, "big")
    return mask


_MASKS: dict[tuple[int, int, bool, bool], int] = {}


def _segment(frame: bytes) -> _Seg | None:
    """What ``frame`` is as a mergeable segment, or None."""
    n = len(frame)
    if n < L3 + IPV4_HEADER_LEN + UDP_HEADER_LEN:
        return None
    head = frame[:BASE]
    if head not in (_PLAIN, _VALID) and not _partial_ok(head):
        return None
    ethertype = frame[BASE + 12 : BASE + 14]
    if ethertype == _ETHERTYPE_IPV4:
        if frame[L3] != 0x45:
            return None  # IPv4 options
        total, ip_id, frag, proto = _IPV4.unpack_from(frame, L3)
        if frag & IPV4_MF_OFFSET or total > n - L3 or total < IPV4_HEADER_LEN:
            return None
        if head == _PLAIN and int.from_bytes(frame[L3 : L3 + IPV4_HEADER_LEN], "big") % 0xFFFF:
            return None  # a bad header checksum: the receiver must see it and drop it
        l4 = L3 + IPV4_HEADER_LEN
        end = L3 + total
        v6 = False
        df = bool(frag & IPV4_DF)
        flow = frame[L3 + 12 : l4 + 4]  # addresses and ports
    elif ethertype == _ETHERTYPE_IPV6:
        if n < L3 + IPV6_HEADER_LEN + UDP_HEADER_LEN or frame[L3] >> 4 != 6:
            return None
        length, proto = _IPV6.unpack_from(frame, L3 + 4)
        l4 = L3 + IPV6_HEADER_LEN
        end = l4 + length
        if end > n:
            return None
        v6 = True
        ip_id, df = 0, True
        flow = frame[L3 + 8 : l4 + 4]
    else:
        return None
    if proto == TCP:
        if end - l4 < TCP_HEADER_MIN:
            return None
        seq, offset, flags, urgent = _TCP.unpack_from(frame, l4)
        payload_at = l4 + (offset >> 4) * 4
        size = end - payload_at
        if payload_at < l4 + TCP_HEADER_MIN or size <= 0 or flags & ~TCP_PSH != TCP_ACK:
            return None
        if urgent:
            return None
        psh = bool(flags & TCP_PSH)
    elif proto == UDP:
        payload_at = l4 + UDP_HEADER_LEN
        size = end - payload_at
        length, checksum = _UDP.unpack_from(frame, l4)
        if size <= 0 or length != end - l4 or (v6 and not checksum):
            return None  # (IPv6 UDP must carry a checksum)
        seq, psh = 0, False
    else:
        return None
    if head == _PLAIN:
        if not _checksum_ok(frame, l4, end, proto, v6):
            return None
    elif head != _VALID:
        start, at = _CSUM_AT.unpack_from(head, 6)
        wanted = ethernet.TCP_CSUM_OFFSET if proto == TCP else ethernet.UDP_CSUM_OFFSET
        if start != l4 - BASE or at != wanted:
            return None
    tcp = proto == TCP
    mask = _mask(payload_at, l4, tcp, v6)
    key = int.from_bytes(frame[:payload_at], "big") & mask
    return _Seg(flow, key, mask, l4, payload_at, size, tcp, v6, seq, ip_id, df, psh, head == _PLAIN)


def _partial_ok(head: bytes) -> bool:
    """A frame whose checksum the sending kernel left to offload, at the usual place."""
    flags, gso_type, _hdr, gso_size, _start, offset = ethernet.OFFLOAD_HEADER.unpack(head)
    return (
        flags == ethernet.NEEDS_CSUM
        and gso_type == ethernet.GSO_NONE
        and not gso_size
        and offset in ethernet.CSUM_OFFSETS
    )


def _pseudo_sum(frame: Buffer, proto: int, length: int, v6: bool) -> int:
    """The pseudo-header's words as one integer (to be summed mod 0xffff)."""
    if v6:
        addresses = int.from_bytes(frame[L3 + 8 : L3 + 40], "big")
    else:
        addresses = int.from_bytes(frame[L3 + 12 : L3 + 20], "big")
    return addresses + proto + (length >> 16) + (length & 0xFFFF)


def _checksum_ok(frame: Buffer, l4: int, end: int, proto: int, v6: bool) -> bool:
    if proto == UDP and not v6 and not (frame[l4 + 6] or frame[l4 + 7]):
        return True  # IPv4 UDP without a checksum: nothing to verify, nothing lost
    data = int.from_bytes(frame[l4:end], "big")
    if (end - l4) & 1:
        data <<= 8
    total = data + _pseudo_sum(frame, proto, end - l4, v6)
    # The one's-complement sum is the value mod 0xffff (2**16 = 1): a valid segment's
    # words, its checksum included, sum to "negative zero".
    return total % 0xFFFF == 0


def _fold(value: int) -> int:
    folded = value % 0xFFFF
    return 0xFFFF if folded == 0 and value else folded


def _emit(run: _Run) -> bytes:
    """One segment: itself; several: the super-frame the receiving kernel cuts back."""
    first, seg = run.first, run.seg
    if len(run.payloads) == 1:
        return first
    at = seg.payload_at
    hdr = bytearray(first[BASE:at])
    ip = IP
    l4 = seg.l4 - BASE
    l4_len = at - seg.l4 + run.total
    tcp = seg.tcp
    if seg.v6:
        _U16.pack_into(hdr, ip + 4, l4_len)
        gso_type = ethernet.GSO_TCPV6 if tcp else ethernet.GSO_UDP_L4
    else:
        _U16.pack_into(hdr, ip + 2, IPV4_HEADER_LEN + l4_len)
        _U16.pack_into(hdr, ip + 10, 0)
        _U16.pack_into(hdr, ip + 10, ethernet.internet_checksum(hdr[ip:l4]))
        gso_type = ethernet.GSO_TCPV4 if tcp else ethernet.GSO_UDP_L4
    if tcp:
        hdr[l4 + 13] = run.last[seg.l4 + 13]  # the last segment's flags (its PSH)
        csum_offset = ethernet.TCP_CSUM_OFFSET
    else:
        _U16.pack_into(hdr, l4 + 4, l4_len)
        csum_offset = ethernet.UDP_CSUM_OFFSET
    # "Fill in the checksum": the field holds the pseudo-header sum, not complemented.
    proto = TCP if tcp else UDP
    _U16.pack_into(hdr, l4 + csum_offset, _fold(_pseudo_sum(first, proto, l4_len, seg.v6)))
    offload = ethernet.offload_header(
        flags=ethernet.NEEDS_CSUM,
        gso_type=gso_type,
        hdr_len=at - BASE,
        gso_size=seg.size,
        csum_start=l4,
        csum_offset=csum_offset,
    )
    return b"".join([offload, hdr, *run.payloads])


def segment(frame: Buffer) -> list[bytes]:
    """Cut a TCP or UDP super-frame into plain frames with whole checksums, as TSO/USO do.

    For a TAP that cannot take the super-frame (a plain TAP, or a kernel without UDP
    segmentation): the frames it would have produced, each with an all-zero offload header.
    Raises ``ethernet.FrameError("bad_offload")`` for a super-frame that does not describe
    its own headers (checked by ``ethernet.parse`` before, so only a bug gets here).
    """
    n = len(frame)
    if n < L3 + IPV4_HEADER_LEN + UDP_HEADER_LEN:
        raise ethernet.FrameError("bad_offload")
    flags, gso_type, _hdr, size, start, offset = ethernet.OFFLOAD_HEADER.unpack_from(frame, 0)
    kind = gso_type & ~ethernet.GSO_ECN
    ethertype = bytes(frame[BASE + 12 : BASE + 14])
    v6 = ethertype == _ETHERTYPE_IPV6
    l4 = BASE + start
    if (
        kind not in (ethernet.GSO_TCPV4, ethernet.GSO_TCPV6, ethernet.GSO_UDP_L4)
        or not flags & ethernet.NEEDS_CSUM
        or not size
        or l4 != (L3 + IPV6_HEADER_LEN if v6 else L3 + IPV4_HEADER_LEN)
        or (not v6 and (ethertype != _ETHERTYPE_IPV4 or frame[L3] != 0x45))
        or (v6 and frame[L3 + 6] != (UDP if kind == ethernet.GSO_UDP_L4 else TCP))
        or (not v6 and frame[L3 + 9] != (UDP if kind == ethernet.GSO_UDP_L4 else TCP))
    ):
        raise ethernet.FrameError("bad_offload")
    tcp = kind != ethernet.GSO_UDP_L4
    if n < l4 + (TCP_HEADER_MIN if tcp else UDP_HEADER_LEN):
        raise ethernet.FrameError("bad_offload")
    payload_at = l4 + ((frame[l4 + 12] >> 4) * 4 if tcp else UDP_HEADER_LEN)
    if (
        payload_at < l4 + (TCP_HEADER_MIN if tcp else UDP_HEADER_LEN)
        or payload_at >= n
        or offset != (ethernet.TCP_CSUM_OFFSET if tcp else ethernet.UDP_CSUM_OFFSET)
        or (n - payload_at + size - 1) // size > MAX_CUT
    ):
        raise ethernet.FrameError("bad_offload")
    header = bytes(frame[BASE:payload_at])
    ip, at = IP, l4 - BASE
    seq = _U32.unpack_from(frame, l4 + 4)[0] if tcp else 0
    ip_id = 0 if v6 else frame[L3 + 4] << 8 | frame[L3 + 5]
    last_flags = frame[l4 + 13] if tcp else 0
    out: list[bytes] = []
    pos = payload_at
    while pos < n:
        chunk = frame[pos : pos + size]
        pos += len(chunk)
        h = bytearray(header)
        l4_len = len(h) - at + len(chunk)
        if v6:
            _U16.pack_into(h, ip + 4, l4_len)
        else:
            _U16.pack_into(h, ip + 2, IPV4_HEADER_LEN + l4_len)
            _U16.pack_into(h, ip + 4, ip_id)
            _U16.pack_into(h, ip + 10, 0)
            _U16.pack_into(h, ip + 10, ethernet.internet_checksum(h[ip:at]))
            ip_id = (ip_id + 1) & 0xFFFF
        if tcp:
            _U32.pack_into(h, at + 4, seq)
            seq = (seq + len(chunk)) & 0xFFFFFFFF
            # FIN and PSH belong to the last segment, CWR to the first
            h[at + 13] = last_flags if pos >= n else last_flags & ~(TCP_PSH | 0x01)
            if out:
                h[at + 13] &= ~0x80
        else:
            _U16.pack_into(h, at + 4, l4_len)
        _U16.pack_into(h, at + offset, 0)
        pseudo = _pseudo_sum(frame, TCP if tcp else UDP, l4_len, v6)
        data = int.from_bytes(bytes(h[at:]) + bytes(chunk), "big") << (8 * (l4_len & 1))
        check = (~_fold(data + pseudo)) & 0xFFFF
        if not tcp and check == 0:
            check = 0xFFFF  # UDP sends a computed zero as all ones
        _U16.pack_into(h, at + offset, check)
        out.append(_PLAIN + bytes(h) + bytes(chunk))
    return out
