"""TCP flows out of a pcap file (Ethernet, IPv4), as a passive observer sees them.

For each connection to ``server_port``: the time of its SYN, every packet with payload as
(time, direction, payload bytes) (+1 client to server, -1 back), the TLS application
data records of each direction as (time, direction, length) from the record headers, and
the first bytes of each direction's stream (for the ClientHello / ServerHello).
Retransmitted bytes are counted once, as sequence numbers say.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HEAD_BYTES = 8192  # kept from the start of each direction's stream
PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


@dataclass
class _Direction:
    next_seq: int | None = None
    head: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)  # a record header cut in two
    remaining: int = 0  # bytes left in the current TLS record


@dataclass
class Flow:
    client: tuple[str, int]
    server: tuple[str, int]
    syn_time: float
    packets: list[tuple[float, int, int]] = field(default_factory=list)
    records: list[tuple[float, int, int]] = field(default_factory=list)
    up: _Direction = field(default_factory=_Direction)
    down: _Direction = field(default_factory=_Direction)
    fin: bool = False

    @property
    def client_head(self) -> bytes:
        return bytes(self.up.head)

    @property
    def server_head(self) -> bytes:
        return bytes(self.down.head)


def _records(flow: Flow, d: _Direction, sign: int, t: float, payload: bytes) -> None:
    pos = 0
    while pos < len(payload):
        if d.remaining:
            step = min(d.remaining, len(payload) - pos)
            d.remaining -= step
            pos += step
            continue
        need = 5 - len(d.pending)
        d.pending += payload[pos : pos + need]
        pos += min(need, len(payload) - pos)
        if len(d.pending) == 5:
            length = struct.unpack(">H", d.pending[3:5])[0]
            if d.pending[0] == 23:  # application data (TLS 1.3: all after the hellos)
                flow.records.append((t, sign, length))
            d.remaining = length
            d.pending = bytearray()


def _pcap_frames(path: Path) -> Iterator[tuple[float, int, bytes]]:
    """(time, length on the wire, captured bytes) of each frame in a pcap file."""
    with path.open("rb") as f:
        header = f.read(24)
        if len(header) < 24 or header[:4] not in PCAP_MAGIC:
            raise ValueError(f"{path}: not a pcap file")
        endian, unit = PCAP_MAGIC[header[:4]]
        rec = struct.Struct(endian + "IIII")
        while True:
            raw = f.read(16)
            if len(raw) < 16:
                return
            sec, frac, incl, orig = rec.unpack(raw)
            yield sec + frac * unit, orig, f.read(incl)


def read_flows(path: Path, server_port: int) -> list[Flow]:
    """Every TCP connection to ``server_port`` in the capture, in SYN order."""
    flows: dict[tuple[str, int, str, int], Flow] = {}
    done: list[Flow] = []
    for t, _orig, frame in _pcap_frames(path):
        if len(frame) < 54 or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 6:
            continue
        total = struct.unpack(">H", frame[16:18])[0]
        src, dst = frame[26:30], frame[30:34]
        tcp = 14 + ihl
        sport, dport, seq = struct.unpack(">HHI", frame[tcp : tcp + 8])
        flags = frame[tcp + 13]
        doff = (frame[tcp + 12] >> 4) * 4
        size = total - ihl - doff
        payload = frame[tcp + doff : tcp + doff + size]
        if dport == server_port:
            key, sign = (_ip(src), sport, _ip(dst), dport), 1
        elif sport == server_port:
            key, sign = (_ip(dst), dport, _ip(src), sport), -1
        else:
            continue
        if flags & 0x02 and not flags & 0x10:  # SYN: a new connection
            if key in flows:
                done.append(flows.pop(key))
            flows[key] = Flow((key[0], key[1]), (key[2], key[3]), t)
            flows[key].up.next_seq = seq + 1
            continue
        flow = flows.get(key)
        if flow is None:
            continue
        d = flow.up if sign > 0 else flow.down
        if flags & 0x02:  # SYN-ACK
            d.next_seq = seq + 1
            continue
        if flags & 0x05:
            flow.fin = True
        if size <= 0 or d.next_seq is None:
            continue
        end = seq + size
        if (end - d.next_seq) & 0xFFFFFFFF >= 0x80000000 or end == d.next_seq:
            continue  # all of it seen before
        skip = (d.next_seq - seq) & 0xFFFFFFFF
        fresh = payload[skip:] if skip < size else b""
        d.next_seq = end & 0xFFFFFFFF
        flow.packets.append((t, sign, size))
        if len(d.head) < HEAD_BYTES:
            d.head += fresh[: HEAD_BYTES - len(d.head)]
        _records(flow, d, sign, t, fresh)
    done.extend(flows.values())
    done.sort(key=lambda fl: fl.syn_time)
    return done


def frame_sizes(path: Path) -> list[tuple[float, int]]:
    """(time, bytes on the wire) of every frame in the capture (the LAN side's load)."""
    out = []
    for t, orig, _frame in _pcap_frames(path):
        out.append((t, orig))
    return out


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def echo_times(path: Path, port: int) -> list[tuple[float, float]]:
    """(time sent, echo delay in s) of each request to TCP ``port`` that carries data: the
    time until the first data back from ``port`` (the interactive workload's keystrokes,
    measured on the LAN side of the tunnel, where the user is)."""
    out: list[tuple[float, float]] = []
    waiting: float | None = None
    for t, _orig, frame in _pcap_frames(path):
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack(">H", frame[16:18])[0]
        tcp = 14 + ihl
        sport, dport = struct.unpack(">HH", frame[tcp : tcp + 4])
        if total - ihl - (frame[tcp + 12] >> 4) * 4 <= 0:
            continue
        if dport == port and waiting is None:
            waiting = t
        elif sport == port and waiting is not None:
            out.append((waiting, t - waiting))
            waiting = None
    return out
