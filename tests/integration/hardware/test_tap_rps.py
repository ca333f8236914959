"""``network.rps`` on a real TAP (hardware.tap.spread_receive), in a namespace of its own:
the kernel takes the mask, and frames the node writes still reach the LAN's sockets, all of
them, when another CPU does the work."""

from __future__ import annotations

import json
import os
import sys

import pytest

from hardware.netns import Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs"),
]

# Runs inside the namespace: a TAP with network.rps, a UDP socket on its address, and
# datagrams written into the TAP as a tunnel would write them.
SCRIPT = """
import json, os, socket, sys
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from hardware.tap import LinuxTap, TapConfig, cpu_mask

tap = LinuxTap(TapConfig("rps0", rps=True))
os.system("ip addr add 10.233.0.1/24 dev rps0")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(("10.233.0.1", 5000))
sock.settimeout(5)
mac = ":".join(f"{b:02x}" for b in tap.hwaddr)
sent = 0
for port in range(4000, 4016):  # several flows: each hashed to a CPU of the mask
    frames = []
    for i in range(16):
        frame = Ether(dst=mac, src="02:00:00:00:00:02") / IP(src="10.233.0.2", dst="10.233.0.1")
        frame = frame / UDP(sport=port, dport=5000) / (b"%d-%d" % (port, i))
        frames.append(bytes(10) + bytes(frame))  # tunnel frames: an all-zero offload header
    tap.write_batch(frames)
    sent += len(frames)
got = set()
try:
    while len(got) < sent:
        got.add(sock.recv(100))
except TimeoutError:
    pass
rps = open("/sys/class/net/rps0/queues/rx-0/rps_cpus").read().strip()
print(json.dumps({"rps": rps, "want": cpu_mask(sorted(os.sched_getaffinity(0))),
                  "sent": sent, "got": len(got)}))
tap.close()
"""


def test_a_tap_with_rps_steers_its_receive_work_and_loses_nothing() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    with Lab() as lab:
        ns = lab.namespace("rps")
        env = f"PYTHONPATH={root}"
        out = ns.run(["env", env, sys.executable, "-c", SCRIPT], timeout=60)
    result = json.loads(out.strip().splitlines()[-1])

    def value(mask: str) -> int:
        return int(mask.replace(",", ""), 16)

    assert value(result["rps"]) == value(result["want"]) != 0
    assert result["got"] == result["sent"] == 256
