"""Software GRO's cost per frame, in process: ``hardware.gro.Coalescer`` merging batches of
44 full-sized TCP segments of one flow (what the client reads from its TAP when a LAN host
sends plain 1500-byte frames), as the nodes merge them (checksums left to offload, the
start-up heap frozen).

    python bench/gro_merge.py [--batches 2000]
    valgrind --tool=callgrind python bench/gro_merge.py --batches 100   # and 300

Timing depends on the machine; for a figure that does not, run it under callgrind with two
values of ``--batches``: the difference of the instruction counts divided by 44 x the
difference of the batch counts is the cost per frame, start-up cancelled. Ends with one
line of JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from hardware import ethernet, gro

SEGMENTS = 44  # 44 x 1448 bytes fill one 64 KiB super-frame
MSS = 1448


def batch() -> list[bytes]:
    """One flow's segments as a TAP with vnet_hdr hands them over: checksum left to offload."""
    head = ethernet.offload_header(flags=ethernet.NEEDS_CSUM, csum_start=34, csum_offset=16)
    out = []
    for i in range(SEGMENTS):
        options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
        tcp = TCP(sport=40000, dport=5201, seq=1000 + i * MSS, ack=1, flags="A", window=500)
        tcp.options = options
        packet = (
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src="10.77.0.1", dst="10.77.0.2", id=100 + i, flags="DF")
            / tcp
            / (bytes([i]) * MSS)
        )
        out.append(head + bytes(packet))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    frames = batch()
    merger = gro.Coalescer()
    gc.collect()
    gc.freeze()  # as the nodes do after start-up
    start = time.perf_counter()
    for _ in range(args.batches):
        for frame in frames:
            merger.push(frame)
        merged = merger.take()
    elapsed = time.perf_counter() - start
    assert len(merged) == 1 and len(merged[0]) > SEGMENTS * MSS
    per_frame_us = elapsed / (args.batches * SEGMENTS) * 1e6
    print(json.dumps({"batches": args.batches, "segments": SEGMENTS,
                      "us_per_frame": round(per_frame_us, 3)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
