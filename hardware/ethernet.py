"""The frame format carried through the tunnel, and the few header fields the switch needs.

A *tunnel frame* is a 10-byte offload header followed by one Ethernet frame. The offload
header is Linux's ``struct virtio_net_hdr`` (little-endian, as a TAP opened with
``IFF_VNET_HDR`` hands it over on x86 and ARM): it says whether the frame is a GSO
super-frame (one TCP segment of up to 64 KiB that the receiving kernel cuts into
MSS-sized packets) and whether a checksum is still to be filled in. Carrying it lets both
ends keep the kernel's offloads, which is where the data path's speed comes from; a TAP
without offloads simply sends an all-zero header.

Parsing is the fast path: ``struct`` and slicing only, no objects per field beyond the
small frozen ``EthernetHeader``. scapy is for tests and diagnostics.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OFFLOAD_HEADER = struct.Struct("<BBHHHH")
OFFLOAD_HEADER_LEN = OFFLOAD_HEADER.size  # 10
NO_OFFLOAD = bytes(OFFLOAD_HEADER_LEN)

# virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
NEEDS_CSUM = 0x01
DATA_VALID = 0x02
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
# Accepted GSO types. GSO_UDP (legacy UDP fragmentation offload, UFO) is refused: Linux
# dropped UFO in 4.14 and a peer has no business asking the exit's kernel to fragment.
KNOWN_GSO_TYPES = frozenset({GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4})
KNOWN_FLAGS = NEEDS_CSUM | DATA_VALID
# Where a partial checksum may be completed, from csum_start: TCP and UDP checksum fields.
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6
CSUM_OFFSETS = frozenset({TCP_CSUM_OFFSET, UDP_CSUM_OFFSET})
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
TCP = 6
UDP = 17

ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
# Tag protocol ids in use for stacked or vendor VLAN tags. A frame whose outer (or inner)
# ethertype is one of these and not accepted as a tag is refused, never switched as an
# "untagged" frame of an odd ethertype: a kernel or a switch downstream may read the tag.
TAG_TPIDS = frozenset({TPID_8021Q, TPID_8021AD, 0x9100, 0x9200, 0x9300})
VLAN_ID_MASK = 0x0FFF
VLAN_ID_RESERVED = 0x0FFF
UNTAGGED = 0  # VLAN id given to untagged and priority-tagged frames

BROADCAST_MAC = b"\xff" * 6

# Largest GSO super-frame: an IP packet of 64 KiB plus Ethernet and one VLAN tag.
MAX_GSO_FRAME = 65535 + ETH_HEADER_LEN + VLAN_TAG_LEN


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    """What the switch needs from one tunnel frame."""

    dst: bytes
    src: bytes
    vlan: int  # 0 = untagged (or priority-tagged)
    ethertype: int
    gso: bool  # a super-frame the receiving kernel segments
    l3: int = 0  # offset in the tunnel frame of the payload after the last tag


class FrameError(ValueError):
    """A frame that cannot be switched; ``reason`` is a short, stable drop-counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(
    frame: bytes | bytearray | memoryview,
    max_plain_frame: int,
    tag_tpids: frozenset[int] = frozenset({TPID_8021Q}),
) -> EthernetHeader:
    """Parse and check the offload header and the Ethernet/VLAN header of a tunnel frame.

    ``max_plain_frame`` is the largest Ethernet frame (header included, no FCS) allowed when
    the frame is not a GSO super-frame: MTU + 14 + 4. ``tag_tpids`` are the tag protocol ids
    read as the frame's VLAN tag (802.1Q always; 802.1ad's 0x88a8 when configured, whose
    inner tag is then payload). Raises ``FrameError`` with reason ``short``, ``oversized``,
    ``bad_offload``, ``bad_vlan`` or ``unknown_tpid``.
    """
    size = len(frame) - OFFLOAD_HEADER_LEN
    if size < ETH_HEADER_LEN:
        raise FrameError("short")
    base = OFFLOAD_HEADER_LEN
    ethertype = int.from_bytes(frame[base + 12 : base + 14], "big")
    vlan = UNTAGGED
    l3 = base + ETH_HEADER_LEN
    if ethertype in TAG_TPIDS:
        if ethertype not in tag_tpids:
            raise FrameError("unknown_tpid")
        if size < ETH_HEADER_LEN + VLAN_TAG_LEN:
            raise FrameError("bad_vlan")
        outer = ethertype
        tci = int.from_bytes(frame[base + 14 : base + 16], "big")
        vlan = tci & VLAN_ID_MASK
        if vlan == VLAN_ID_RESERVED:
            raise FrameError("bad_vlan")
        ethertype = int.from_bytes(frame[base + 16 : base + 18], "big")
        l3 += VLAN_TAG_LEN
        # A second tag is payload only under an 802.1ad service tag; under 802.1Q a stacked
        # tag would make the VLAN allow-list ambiguous.
        if ethertype in TAG_TPIDS:
            if outer == TPID_8021Q or ethertype != TPID_8021Q:
                raise FrameError("bad_vlan" if ethertype in tag_tpids else "unknown_tpid")
            if size < ETH_HEADER_LEN + 2 * VLAN_TAG_LEN:
                raise FrameError("bad_vlan")
            # The customer tag travels inside the service VLAN; what it carries is still
            # read (ARP/ND inspection must not be skipped by adding a tag).
            ethertype = int.from_bytes(frame[base + 20 : base + 22], "big")
            l3 += VLAN_TAG_LEN
            if ethertype in TAG_TPIDS:
                raise FrameError("bad_vlan")
    gso = _check_offload(frame, size, max_plain_frame, ethertype, l3 - base)
    return EthernetHeader(
        dst=bytes(frame[base : base + 6]),
        src=bytes(frame[base + 6 : base + 12]),
        vlan=vlan,
        ethertype=ethertype,
        gso=gso,
        l3=l3,
    )


def _check_offload(
    frame: bytes | bytearray | memoryview,
    size: int,
    max_plain_frame: int,
    ethertype: int,
    l2_len: int,
) -> bool:
    """Validate the virtio_net_hdr against the frame; whether it is a GSO super-frame.

    The exit's kernel trusts these fields when it writes the frame to its TAP (it cuts GSO
    frames and fills checksums where they say), so everything is checked against the frame
    it describes: the kernel's own checks are the last line, not the only one.
    """
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = OFFLOAD_HEADER.unpack_from(
        frame, 0
    )
    kind = gso_type & ~GSO_ECN
    if flags & ~KNOWN_FLAGS or kind not in KNOWN_GSO_TYPES:
        raise FrameError("bad_offload")
    if flags & NEEDS_CSUM and flags & DATA_VALID:
        raise FrameError("bad_offload")  # "fill in the checksum" and "it is verified"
    if hdr_len > size:
        raise FrameError("bad_offload")
    if flags & NEEDS_CSUM:
        if (
            csum_offset not in CSUM_OFFSETS
            or csum_start < l2_len
            or csum_start + csum_offset + 2 > size
        ):
            raise FrameError("bad_offload")
    elif csum_start or csum_offset:
        raise FrameError("bad_offload")
    if kind == GSO_NONE:
        if gso_type & GSO_ECN or gso_size:
            raise FrameError("bad_offload")
        if size > max_plain_frame:
            raise FrameError("oversized")
        return False
    if size > MAX_GSO_FRAME:
        raise FrameError("oversized")
    # A super-frame: the kernel segments it, so it needs a segment size, a partial
    # checksum of its own protocol, headers that fit before the payload, and an L3 that
    # matches its type.
    wanted = UDP_CSUM_OFFSET if kind == GSO_UDP_L4 else TCP_CSUM_OFFSET
    if (
        gso_size == 0
        or gso_size > size
        or not flags & NEEDS_CSUM
        or csum_offset != wanted
        or hdr_len < l2_len
        or (gso_type & GSO_ECN and kind == GSO_UDP_L4)
        or (kind == GSO_TCPV4 and ethertype != ETHERTYPE_IPV4)
        or (kind == GSO_TCPV6 and ethertype != ETHERTYPE_IPV6)
        or (kind == GSO_UDP_L4 and ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6))
        or _l4_start(frame, size, ethertype, l2_len, UDP if kind == GSO_UDP_L4 else TCP)
        != csum_start
    ):
        raise FrameError("bad_offload")
    return True


def _l4_start(
    frame: bytes | bytearray | memoryview, size: int, ethertype: int, l2_len: int, proto: int
) -> int:
    """Where the ``proto`` header of a super-frame starts (from the Ethernet header), or -1.

    A super-frame must be what its GSO type says, right after the IP header: otherwise it
    could carry anything past the switch's ARP/ND inspection (a router advertisement
    labelled "TCP super-frame"), which only looks at frames that are not super-frames.
    """
    at = OFFLOAD_HEADER_LEN + l2_len
    if ethertype == ETHERTYPE_IPV4:
        if size < l2_len + 20 or frame[at] >> 4 != 4 or frame[at + 9] != proto:
            return -1
        if int.from_bytes(frame[at + 6 : at + 8], "big") & 0x3FFF:
            return -1  # a fragment
        return l2_len + (frame[at] & 0x0F) * 4
    if size < l2_len + 40 or frame[at] >> 4 != 6 or frame[at + 6] != proto:
        return -1  # (an extension header in between is refused too)
    return l2_len + 40


def is_group(mac: bytes) -> bool:
    """Broadcast or multicast: the I/G bit of the first octet."""
    return bool(mac[0] & 0x01)


def offload_header(
    *,
    flags: int = 0,
    gso_type: int = GSO_NONE,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    return OFFLOAD_HEADER.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 one's-complement sum, folded and complemented.

    Because 2**16 = 1 (mod 0xffff), the one's-complement sum of the 16-bit words equals the
    whole buffer read as one big-endian integer, modulo 0xffff (with 0xffff for a non-zero
    multiple): CPython does that in C. Only used when an offloaded frame has to be written to
    a TAP that cannot finish it.
    """
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    value = int.from_bytes(raw, "big")
    folded = value % 0xFFFF
    if folded == 0 and value:
        folded = 0xFFFF
    return (~folded) & 0xFFFF


def finish_checksum(frame: bytearray) -> None:
    """Complete a ``NEEDS_CSUM`` tunnel frame in place and clear the flag.

    The sender's kernel stored the pseudo-header sum in the checksum field; the complemented
    sum over everything from ``csum_start`` to the end is the final checksum.
    """
    flags, gso_type, hdr_len, gso_size, start, offset = OFFLOAD_HEADER.unpack_from(frame, 0)
    if not flags & NEEDS_CSUM:
        return
    base = OFFLOAD_HEADER_LEN + start
    csum = internet_checksum(memoryview(frame)[base:])
    if csum == 0 and offset == UDP_CSUM_OFFSET:
        csum = 0xFFFF  # UDP sends a computed zero as all ones (RFC 768)
    struct.pack_into(">H", frame, base + offset, csum)
    OFFLOAD_HEADER.pack_into(
        frame, 0, flags & ~NEEDS_CSUM, gso_type, hdr_len, gso_size, start, offset
    )
