"""A TCP transfer between two LANs through a 3-hop circuit survives the death of its middle hop.

Namespaces (hardware.netns.Lab, removed afterwards)::

    lan-a 10.77.0.1 ── bra ── client TAP ═ circuit ═ exits' TAPs ── brb ── lan-b 10.77.0.2
                            (one "mesh" namespace: the client and four relaying exits)

The mesh runs ``python -m lab.circuitlab``: real TAPs, the client's pump and
``CircuitBuilder`` (lab registry, stand-in evidence), four exits with the relay role on the
real WebSocket transport over loopback; the four exits' TAPs are on one bridge to lan-b. With
offloads the TAPs hand over GSO super-frames (up to 64 KiB), each crossing in two cells. The
exits' operators are arranged (see ``lab.circuitlab``) so that the rebuilt circuit keeps its
tail, or (``new-tail``) so that it ends at another exit on the same LAN: that exit's switch has
learned the client's stations on its LAN port (the old tail put them there) and takes them on
its circuit port at once only because the old tail's departure notice freed them
(``exitnode.departures``); without it the transfer would stall for the 300 s MAC ageing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hardware import netns
from hardware.netns import Lab
from lab import topology
from tests.integration.l2 import helpers as h

pytestmark = pytest.mark.integration

SIZE = {False: 40 * 1024 * 1024, True: 160 * 1024 * 1024}
# The sender is paced (bytes/s) so the transfer lasts about 5 s however fast the circuit
# is: the middle hop must die mid-transfer (an unpaced 3-hop circuit now moves 160 MiB in
# under 1.5 s).
RATE = {False: 8 * 1024 * 1024, True: 32 * 1024 * 1024}
PORT = 5601


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def read_json(proc: subprocess.Popen[bytes], key: str, timeout: float = 60.0) -> dict:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, "the mesh process ended"
        doc = json.loads(line)
        if key in doc:
            return doc


@pytest.mark.parametrize(
    ("offload", "processes", "new_tail"),
    [(False, False, False), (True, False, False), (True, True, False), (False, False, True)],
    ids=["plain", "offload", "offload-crash", "new-tail"],
)
def test_tcp_transfer_survives_a_dead_middle_hop(
    lab: Lab, offload: bool, processes: bool, new_tail: bool
) -> None:
    lan_a, mesh, lan_b = lab.namespace("lana"), lab.namespace("mesh"), lab.namespace("lanb")
    for ns in (lan_a, mesh, lan_b):
        topology.quiet(ns)
    lab.veth(lan_a, "eth0", mesh, "lana0")
    lab.veth(lan_b, "eth0", mesh, "lanb0")
    for bridge, port in (("bra", "lana0"), ("brb", "lanb0")):
        netns.bridge(mesh, bridge)
        netns.attach(mesh, port, bridge)
    lan_a.ip("addr", "add", f"{topology.HOST_A}/24", "dev", "eth0")
    lan_b.ip("addr", "add", f"{topology.HOST_B}/24", "dev", "eth0")

    proc = lab.spawn(
        mesh,
        [sys.executable, "-m", "lab.circuitlab", "--exits", "4", "--hops", "3",
         "--exit-bridge", "brb", "--client-bridge", "bra",
         *([] if new_tail else ["--shared-operator"]),
         *(["--offload"] if offload else []), *(["--processes"] if processes else [])],
        stdout=subprocess.PIPE,
        stderr=None if "-v" in sys.argv else subprocess.DEVNULL,
    )  # fmt: skip
    try:
        scenario(
            lab, proc, lan_a, mesh, lan_b, size=SIZE[offload], rate=RATE[offload], new_tail=new_tail
        )
    finally:
        lab.stop(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def scenario(
    lab: Lab,
    proc: subprocess.Popen[bytes],
    lan_a,
    mesh,
    lan_b,
    *,
    size: int,
    rate: int,
    new_tail: bool,
) -> None:
    first = read_json(proc, "path")
    assert len(first["path"]) == 3 and first["rebuilds"] == 0
    h.wait_up(topology.Topology(lan_a, mesh, mesh, lan_b, 1500))

    receiver = lab.spawn(
        lan_b, [sys.executable, "-c", h.STREAM_RECV, str(PORT)], stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"ready"
    sender = lab.spawn(
        lan_a,
        [
            sys.executable,
            "-c",
            h.STREAM_SEND,
            topology.HOST_B,
            str(PORT),
            str(size),
            "7",
            str(rate),
        ],
        stdout=subprocess.PIPE,
    )
    # Mid-transfer, the middle hop of the circuit dies (SIGUSR1 to the mesh process we
    # started: it stops that exit's server and links, or with --processes kills the exit's
    # own process outright, as a crash).
    time.sleep(1.5)
    assert sender.poll() is None, "the transfer ended before the middle hop was killed"
    os.kill(proc.pid, signal.SIGUSR1)
    killed = read_json(proc, "killed")["killed"]
    assert killed == first["path"][1]
    second = read_json(proc, "path")
    assert second["rebuilds"] == 1 and killed not in second["path"]
    assert second["path"][0] == first["path"][0]
    if new_tail:
        # Ranked by nodeId: (1st, 2nd, 3rd), then (1st, 3rd, 4th): the tail moved on the LAN.
        assert second["path"][1] == first["path"][2] and second["path"][2] not in first["path"]
    else:
        # The hop that shares the dead hop's operator was kept out of the first circuit only.
        assert second["path"][2] == first["path"][2] and second["path"][1] not in first["path"]
    sent_digest = sender.communicate(timeout=240)[0].decode().strip()
    got = receiver.communicate(timeout=60)[0].decode().split()
    assert got == [str(size), sent_digest]
