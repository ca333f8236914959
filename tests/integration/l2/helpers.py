"""Shared pieces of the Layer-2 integration tests: nodes, raw frame I/O, status reads.

Everything runs in namespaces the tests create (hardware.netns.Lab) and is removed by the
fixtures even when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from hardware import netns
from hardware.netns import Lab, Namespace
from lab import provision, topology

UP_TIMEOUT_S = 30.0
EXIT_STATUS = "http://127.0.0.1:9470/status"
CLIENT_STATUS = "http://127.0.0.1:9480/status"

# Runs in a namespace: capture every frame on an interface for a while, print them as hex.
CAPTURE = """
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: the kernel lifts VLAN tags out
s.bind((sys.argv[1], 0))
s.settimeout(0.05)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, anc, _flags, addr = s.recvmsg(70000, 64)
    except TimeoutError:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    for level, kind, aux in anc:
        if level == 263 and kind == 8:
            status, _, _, _, _, tci, tpid = struct.unpack_from("IIIHHHH", aux)
            if status & 0x10:  # TP_STATUS_VLAN_VALID: put the tag back where it was
                tpid = tpid if status & 0x40 else 0x8100
                data = data[:12] + struct.pack(">HH", tpid, tci) + data[12:]
    print(data.hex(), flush=True)
"""
# Runs in a namespace: send each hex frame given on stdin out of an interface.
INJECT = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    if line.strip():
        s.send(bytes.fromhex(line.strip()))
"""
# Runs in a namespace: send N bytes of seeded pseudo-random data over TCP, or receive and
# print the SHA-256 of what arrived.
STREAM_SEND = """
import hashlib, random, socket, sys, time
host, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0  # bytes/s; 0: as fast as it goes
rng = random.Random(seed)
for _ in range(300):
    try:
        s = socket.create_connection((host, port), timeout=30)
        break
    except OSError:
        time.sleep(0.1)
digest = hashlib.sha256()
sent = 0
start = time.monotonic()
while sent < size:
    block = rng.randbytes(min(1 << 20, size - sent))
    digest.update(block)
    s.sendall(block)
    sent += len(block)
    if rate:
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
s.close()
print(digest.hexdigest(), flush=True)
"""
STREAM_RECV = """
import hashlib, socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
conn, _ = srv.accept()
digest = hashlib.sha256()
total = 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""
GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


def node(lab: Lab, ns: Namespace, role: str, config: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "l2bridge", role, "--config", str(config), *extra]
    return lab.spawn(ns, cmd, stderr=None if "-v" in sys.argv else subprocess.DEVNULL)


def status(ns: Namespace, url: str) -> dict[str, object]:
    return json.loads(ns.run([sys.executable, "-c", GET, url], timeout=15))  # type: ignore[no-any-return]


def wait_up(
    topo: topology.Topology, src: Namespace | None = None, dst: str = topology.HOST_B
) -> None:
    src = src or topo.lan_a
    ok = netns.wait_for(lambda: topology.ping(src, dst, count=1) == 1, UP_TIMEOUT_S, 0.2)
    assert ok, f"{src.name} cannot reach {dst} through the tunnel"


def start_pair(
    lab: Lab,
    topo: topology.Topology,
    workdir: Path,
    mode: str,
    *exit_args: str,
    gro: str | None = None,
    rps: bool = False,
) -> provision.Lab:
    files = provision.provision(
        workdir, exit_host=topology.EXIT_WAN, mtu=topo.mtu, offload=mode == "offload", gro=gro,
        rps=rps,
    )  # fmt: skip
    node(lab, topo.exit, "exit", files.exit_config, *exit_args)
    node(lab, topo.client, "client", files.client_configs["client"])
    wait_up(topo)
    return files


class Capture:
    """Frames seen on an interface in a namespace (started before, read after)."""

    def __init__(self, lab: Lab, ns: Namespace, dev: str, seconds: float) -> None:
        self.proc = lab.spawn(
            ns, [sys.executable, "-c", CAPTURE, dev, str(seconds)], stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"

    def frames(self) -> list[bytes]:
        out, _ = self.proc.communicate(timeout=60)
        return [bytes.fromhex(line) for line in out.decode().split()]


def inject(ns: Namespace, dev: str, frames: list[bytes]) -> None:
    data = "".join(f.hex() + "\n" for f in frames)
    subprocess.run(
        [*ns.prefix(), sys.executable, "-c", INJECT, dev],
        input=data.encode(),
        check=True,
        timeout=30,
    )


def transfer(
    lab: Lab, src: Namespace, dst: Namespace, dst_ip: str, size: int, *, seed: int = 1
) -> tuple[str, str]:
    """Send ``size`` bytes src -> dst over TCP; return (sent digest, received digest)."""
    port = "5601"
    recv = lab.spawn(dst, [sys.executable, "-c", STREAM_RECV, port], stdout=subprocess.PIPE)
    assert recv.stdout is not None
    assert recv.stdout.readline().strip() == b"ready"
    sent = src.run(
        [sys.executable, "-c", STREAM_SEND, dst_ip, port, str(size), str(seed)], timeout=240
    )
    out, _ = recv.communicate(timeout=60)
    total, digest = out.decode().split()
    assert int(total) == size
    return sent.strip(), digest


def settle(seconds: float) -> None:
    time.sleep(seconds)


# Runs in the client's namespace: an authenticated client that sends hand-made frames
# straight into the tunnel (bypassing its TAP), as a misbehaving device would.
RAW_CLIENT = """
import asyncio, sys
from pathlib import Path
from l2bridge.client.node import ClientNode
from l2bridge.node.config import load_config

async def main():
    node = ClientNode(load_config(Path(sys.argv[1])), status=False)
    link = await node.connect()
    frames = [bytes.fromhex(line.strip()) for line in sys.stdin if line.strip()]
    await link.send_frames(frames)
    await asyncio.sleep(1.0)
    await link.close()

asyncio.run(main())
"""


def raw_client(ns: Namespace, config: Path, frames: list[bytes]) -> None:
    data = "".join(f.hex() + "\n" for f in frames)
    subprocess.run(
        [*ns.prefix(), sys.executable, "-c", RAW_CLIENT, str(config)],
        input=data.encode(),
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
