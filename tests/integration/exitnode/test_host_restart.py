"""A restarted exit keeps its LAN's gateway MAC and announces it at once.

In namespaces of our own: the exit's host plumbing (real TAP, bridge, gateway address and
masquerade, ``host_once``) and a LAN host on a veth port of the same bridge. The exit is
started, killed with SIGKILL (bridge left behind, TAP gone) and started again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hardware.announce import format_mac, stable_mac
from hardware.netns import Lab, Namespace

pytestmark = pytest.mark.integration

NODE_ID = hashlib.sha256(b"exit one").digest()
GATEWAY = bytes([10, 77, 0, 254])

# Runs in the LAN namespace: print the sender MAC of the first gratuitous ARP for GATEWAY.
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("host0", 0))
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
gateway = bytes([10, 77, 0, 254])
while True:
    frame = s.recv(2048)
    arp = frame[14:42]
    if arp[6:8] == b"\\x00\\x01" and arp[14:18] == gateway and arp[24:28] == gateway:
        print(frame[6:12].hex(), arp[8:14].hex(), flush=True)
        break
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def start_exit(lab: Lab, ns: Namespace) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    proc = lab.spawn(
        ns, [sys.executable, "-m", "tests.integration.exitnode.host_once", NODE_ID.hex()],
        stdout=subprocess.PIPE, stderr=None,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "host_once did not start"
    return proc, json.loads(line)


def listen(lab: Lab, lan: Namespace) -> subprocess.Popen[bytes]:
    proc = lab.spawn(lan, [sys.executable, "-c", LISTEN, "20"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_restart_keeps_the_mac_and_sends_a_gratuitous_arp(lab: Lab) -> None:
    exit_ns, lan = lab.namespace("smx"), lab.namespace("sml")
    lab.veth(exit_ns, "lan0", lan, "host0")
    exit_ns.ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
    exit_ns.ip("link", "set", "lan0", "master", "br0")
    exit_ns.ip("link", "set", "br0", "up")
    lan.ip("addr", "add", "10.77.0.1/24", "dev", "host0")
    expected = format_mac(stable_mac(NODE_ID))

    seen: list[dict[str, object]] = []
    for _ in range(2):
        listener = listen(lab, lan)
        proc, info = start_exit(lab, exit_ns)
        seen.append(info)
        out, _ = listener.communicate(timeout=30)
        eth_source, sender = out.decode().split()
        assert eth_source == sender == expected.replace(":", "")
        # The LAN host resolves the gateway to the same MAC as before.
        lan.run(["ping", "-c", "1", "-W", "2", "10.77.0.254"])
        neigh = lan.ip("-j", "neigh", "show", "10.77.0.254", "dev", "host0")
        assert json.loads(neigh)[0]["lladdr"] == expected
        lab.stop(proc, 9)  # a crash: nothing undone, the TAP disappears with the process
        for p in (proc, listener):
            assert p.stdout is not None
            p.stdout.close()
    # Two announcements: the gateway's ARP and an NA for the bridge's IPv6 link-local.
    assert seen[0] == seen[1] == {"tap": expected, "bridge": expected, "announced": 2}
