"""Software GRO against the real kernel: super-frames it makes are cut back by Linux.

Two namespaces, each behind a real TAP whose other end this test holds: frames read from
A's TAP are coalesced (hardware.gro) and written into B's offload TAP, whose kernel must
cut them into the packets A's stack sent; B's answers (the kernel's own TSO super-frames)
go back into A's TAP, cut in software when A's TAP is plain. A TCP transfer each way and a
burst of UDP datagrams must arrive whole, and merging must actually have happened.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import threading

import pytest

from hardware import gro
from hardware.netns import Lab, Namespace, unique
from hardware.tap import LinuxTap, TapConfig

pytestmark = pytest.mark.integration

A_IP, B_IP = "10.231.0.1", "10.231.0.2"
TCP_BYTES = 6_000_000
UDP_COUNT, UDP_SIZE = 320, 1400

SERVER = f"""
import hashlib, socket, sys
tcp = socket.create_server(("{B_IP}", 5001))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("{B_IP}", 5002))
udp.settimeout(20)
print("ready", flush=True)
conn, _ = tcp.accept()
got, h = 0, hashlib.sha256()
while got < {TCP_BYTES}:
    data = conn.recv(1 << 16)
    if not data:
        break
    got += len(data)
    h.update(data)
print("tcp", got, h.hexdigest(), flush=True)
reply = bytes(i * 13 & 0xFF for i in range(65536)) * ({TCP_BYTES} // 65536)
conn.sendall(reply)
conn.close()
print("sent", hashlib.sha256(reply).hexdigest(), flush=True)
seen = set()
try:
    while len(seen) < {UDP_COUNT}:
        data, _ = udp.recvfrom(2048)
        i = int.from_bytes(data[:4], "big")
        if len(data) == {UDP_SIZE} and data == i.to_bytes(4, "big") * ({UDP_SIZE} // 4):
            seen.add(i)
except TimeoutError:
    pass
print("udp", len(seen), flush=True)
"""

CLIENT = f"""
import hashlib, socket, time
data = bytes(i * 7 & 0xFF for i in range(65536)) * ({TCP_BYTES} // 65536)
data += bytes({TCP_BYTES} - len(data))
conn = socket.create_connection(("{B_IP}", 5001), timeout=30)
conn.sendall(data)
print("tcp", hashlib.sha256(data).hexdigest(), flush=True)
got, h = 0, hashlib.sha256()
while True:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    got += len(chunk)
    h.update(chunk)
print("back", got, h.hexdigest(), flush=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({UDP_COUNT}):
    udp.sendto(i.to_bytes(4, "big") * ({UDP_SIZE} // 4), ("{B_IP}", 5002))
    if i % 16 == 15:
        time.sleep(0.005)  # bursts of 16: a pump that keeps up loses nothing
"""


class Pump:
    """Moves frames between the two TAPs: A to B coalesced, B to A as they come."""

    def __init__(self, a: LinuxTap, b: LinuxTap) -> None:
        self.a, self.b = a, b
        self.merged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Pump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.a.fileno(), selectors.EVENT_READ, "a")
            sel.register(self.b.fileno(), selectors.EVENT_READ, "b")
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    if key.data == "a":
                        frames = self.a.read_batch()
                        if not self.a.coalesce:  # a plain TAP: coalesce here, as a node would
                            out = gro.coalesce(frames)
                            self.merged += len(frames) - len(out)
                            frames = out
                        self.b.write_batch(frames)
                    else:
                        self.a.write_batch(self.b.read_batch())


def _tap_in(ns: Namespace, tap: LinuxTap, address: str) -> None:
    subprocess.run(["ip", "link", "set", tap.name, "netns", ns.name], check=True)
    ns.ip("addr", "add", f"{address}/24", "dev", tap.name)
    ns.ip("link", "set", tap.name, "up")


@pytest.mark.parametrize("a_offload", [False, True], ids=["plain-tap", "offload-tap"])
def test_kernel_cuts_coalesced_frames_back_into_the_packets_sent(a_offload: bool) -> None:
    with Lab() as lab:
        a, b = lab.namespace("groa"), lab.namespace("grob")
        tap_a = LinuxTap(TapConfig(unique("ga"), offload=a_offload, coalesce=a_offload))
        tap_b = LinuxTap(TapConfig(unique("gb"), offload=True))
        try:
            _tap_in(a, tap_a, A_IP)
            _tap_in(b, tap_b, B_IP)
            if a_offload:
                # A's stack must hand over plain frames (as a bridged NIC without GRO
                # would), their checksums left to offload
                a.run(["ethtool", "-K", tap_a.name, "tso", "off", "gso", "off"])
            with Pump(tap_a, tap_b) as pump:
                server = lab.spawn(
                    b, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=None
                )
                assert server.stdout is not None
                assert server.stdout.readline() == b"ready\n"
                client = subprocess.run(
                    [*a.prefix(), sys.executable, "-c", CLIENT],
                    capture_output=True,
                    timeout=120,
                    check=True,
                )
                out, _ = server.communicate(timeout=60)
            sent = client.stdout.decode().split()
            heard = out.decode().split()
            # A -> B: every byte, in order
            assert heard[0:3] == ["tcp", str(TCP_BYTES), sent[1]]
            # B -> A: the kernel's super-frames, cut in software for a plain TAP
            assert sent[2:5] == ["back", str(TCP_BYTES // 65536 * 65536), heard[4]]
            assert heard[5:7] == ["udp", str(UDP_COUNT)]
            merged = tap_a.stats.coalesced if a_offload else pump.merged
            assert merged > TCP_BYTES // 1448 // 4  # most segments went as super-frames
            if not a_offload:
                assert tap_a.stats.segmented > 0
            assert not tap_b.stats.drops and not tap_a.stats.drops
        finally:
            tap_a.close()
            tap_b.close()
