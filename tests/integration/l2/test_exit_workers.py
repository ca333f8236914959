"""An exit with worker processes (``network.workers: 2``), real nodes in the lab's namespaces.

- Two clients are served by different workers (the supervisor hands each connection to the
  worker with the fewest) and reach each other and the exit's LAN: their frames cross
  between the workers' TAPs in the kernel bridge.
- A worker killed with SIGKILL is started again by the supervisor, and its client comes back
  to it (not to the other worker, which would then carry both).
- A token one worker admitted is a replay at the other (the supervisor's gate ledger): of
  eleven identical upgrade requests, handed to both workers in turn, one is upgraded.
- A device's second tunnel (its old one still standing: nothing told the exit) goes to the
  other worker, the less busy, and ends the first there: one tunnel per device.
- At stop, every worker's TAP and process is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exitnode import workers as workers_module
from hardware import netns
from hardware.netns import Lab, Namespace
from l2bridge.node.credfiles import load_wallet
from l2bridge.transport.headers import browser_headers
from l2bridge.transport.token import mint_token
from lab import provision, topology
from tests.integration.l2 import helpers as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.timeout(240),
]

HOST_C = "10.77.0.3"

# Runs in a namespace: send the same upgrade request over N fresh connections; print the
# status line of each answer.
REPLAY = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
request = sys.stdin.buffer.read()
for _ in range(count):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(request)
    print(s.recv(4096).split(b"\\r\\n", 1)[0].decode(), flush=True)
    s.close()
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


class TwoSites:
    """The lab's topology plus a second client (client2, lan-c), an exit with 2 workers."""

    def __init__(self, lab: Lab, tmp: Path, gro: str = "software") -> None:
        self.lab = lab
        topo = self.topo = topology.build(lab)
        self.client2, self.lan_c = lab.namespace("client2"), lab.namespace("lan-c")
        for ns in (self.client2, self.lan_c):
            topology.quiet(ns)
        lab.veth(self.lan_c, "eth0", self.client2, "lan0")
        lab.veth(self.client2, "wan0", topo.exit, "wan1")
        netns.bridge(self.client2, topology.BRIDGE)
        netns.attach(self.client2, "lan0", topology.BRIDGE)
        self.lan_c.ip("addr", "add", f"{HOST_C}/24", "dev", "eth0")
        topo.exit.ip("addr", "add", "172.31.1.1/30", "dev", "wan1")
        self.client2.ip("addr", "add", "172.31.1.2/30", "dev", "wan0")
        self.files = provision.provision(tmp, exit_host="0.0.0.0", clients=("client", "client2"))
        for name, host in (("client", topology.EXIT_WAN), ("client2", "172.31.1.1")):
            path = self.files.client_configs[name]
            path.write_text(path.read_text().replace("ws://0.0.0.0:", f"ws://{host}:"))
        doc = yaml.safe_load(self.files.exit_config.read_text())
        doc["network"]["workers"] = 2
        doc["network"]["gro"] = gro
        self.files.exit_config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.exit = h.node(lab, topo.exit, "exit", self.files.exit_config)
        self.clients = {
            "client": h.node(lab, topo.client, "client", self.files.client_configs["client"]),
            "client2": self.start("client2"),
        }

    def start(self, name: str) -> subprocess.Popen[bytes]:
        ns = self.topo.client if name == "client" else self.client2
        return h.node(self.lab, ns, "client", self.files.client_configs[name])

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.lab.stop(self.clients[name], sig)
        self.clients[name] = self.start(name)

    def peers(self) -> list[dict[str, object]]:
        try:
            got = h.status(self.topo.exit, "http://127.0.0.1:9470/peers")["peers"]
        except netns.NetnsError:
            return []  # the exit's status server is not up yet
        assert isinstance(got, list)
        return got

    def workers_of(self, device: str) -> list[int]:
        return sorted(int(p["worker"]) for p in self.peers() if p["device"] == device)  # type: ignore[call-overload]

    def wait_peers(self, expect: dict[str, int], timeout: float = 30.0) -> None:
        def ok() -> bool:
            peers = self.peers()
            return all(sum(1 for p in peers if p["device"] == d) == n for d, n in expect.items())

        assert netns.wait_for(ok, timeout, 0.3), f"peers: {self.peers()}"


def reachable(src: Namespace, dst: str, timeout: float = 30.0) -> bool:
    return netns.wait_for(lambda: topology.ping(src, dst, count=1) == 1, timeout, 0.2)


@pytest.mark.parametrize("gro", ["software", "kernel"])
def test_clients_at_two_workers_switch_through_the_bridge_and_a_dead_worker_comes_back(
    lab: Lab, tmp_path: Path, gro: str
) -> None:
    # With gro: kernel each worker's TAP joins the bridge through a merging port of its
    # own: frames between the workers' clients cross two of them, and a killed worker's
    # port, left behind, is replaced when it starts again.
    sites = TwoSites(lab, tmp_path, gro)
    topo = sites.topo
    sites.wait_peers({"client": 1, "client2": 1})
    (first,), (second,) = sites.workers_of("client"), sites.workers_of("client2")
    assert first != second, "both clients were handed to one worker"
    assert reachable(topo.lan_a, HOST_C)  # client to client, across the two workers
    assert reachable(sites.lan_c, topology.HOST_B)  # to the exit's own LAN
    assert topology.ping(topo.lan_a, HOST_C, count=5, interval=0.1) == 5
    status = h.status(topo.exit, h.EXIT_STATUS)
    gauges = status["gauges"]
    assert isinstance(gauges, dict)
    assert gauges["workers_running"] == 2 and gauges["clients"] == 2
    names = json.loads(topo.exit.ip("-j", "link", "show", "master", topology.BRIDGE))
    port = "-out" if gro == "kernel" else ""
    assert {f"smx0-0{port}", f"smx0-1{port}"} <= {link["ifname"] for link in names}

    # Kill the worker serving client2: the supervisor starts it again, client2 reconnects,
    # and waits for it rather than joining client at the other. Past one read of the
    # workers' farewells (every STATS_S), the supervisor knows which stations the dead
    # worker's clients held and tells the other.
    time.sleep(workers_module.STATS_S * 2.5)
    workers = _workers(sites.exit.pid)
    assert len(workers) == 2
    os.kill(workers[f"smx0-{second}"], signal.SIGKILL)
    assert reachable(sites.lan_c, topology.HOST_B, 60.0), "client2 did not come back"
    assert reachable(topo.lan_a, HOST_C)
    assert netns.wait_for(lambda: len(_workers(sites.exit.pid)) == 2, 20, 0.5)
    running = _workers(sites.exit.pid)
    sites.wait_peers({"client": 1, "client2": 1})
    assert (sites.workers_of("client"), sites.workers_of("client2")) == ([first], [second])

    # Stop: every worker and its TAP go.
    lab.stop(sites.exit)
    left = {link["ifname"] for link in json.loads(topo.exit.ip("-j", "link"))}
    assert not {f"smx0-{i}{end}" for i in (0, 1) for end in ("", "-out", "-in")} & left
    assert not any(Path(f"/proc/{pid}").exists() for pid in running.values())


def _workers(supervisor: int) -> dict[str, int]:
    """The supervisor's worker processes by the TAP each has open."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        return {}
    found = {}
    for pid in pids:
        for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
            try:
                text = info.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("iff:"):
                    found[line.split()[1]] = pid
    return found


def test_a_token_one_worker_admitted_is_a_replay_at_the_other(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    files = provision.provision(tmp_path, exit_host=topology.EXIT_WAN)
    doc = yaml.safe_load(files.exit_config.read_text())
    # One worker per core, on an exit allowed two of the machine's CPUs (a machine with
    # one gets its two workers by number).
    cpus = sorted(os.sched_getaffinity(0))
    doc["network"]["workers"] = "auto" if len(cpus) >= 2 else 2
    files.exit_config.write_text(yaml.safe_dump(doc, sort_keys=False))
    two = ",".join(str(cpu) for cpu in cpus[:2])
    lab.spawn(topo.exit, ["taskset", "-c", two, sys.executable, "-m", "l2bridge", "exit",
                          "--config", str(files.exit_config)])  # fmt: skip
    client_doc = yaml.safe_load(files.client_configs["client"].read_text())
    wallet = load_wallet(
        files.client_configs["client"].parent / client_doc["endpoints"]["credential_file"]
    )
    (credential,) = [wallet.for_exit(node) for node in wallet.exits()]
    assert credential is not None
    token = mint_token(credential, time.time())
    headers = browser_headers(
        host=topology.EXIT_WAN, origin=f"http://{topology.EXIT_WAN}",
        key="cHJvYmUta2V5LTE2Ynl0ZQ==", protocol=token,
    )  # fmt: skip
    request = ("\r\n".join([f"GET {doc['endpoints']['path']} HTTP/1.1"]
                           + [f"{k}: {v}" for k, v in headers]) + "\r\n\r\n").encode()  # fmt: skip
    port = int(str(doc["endpoints"]["listen"]).rsplit(":", 1)[1])
    assert netns.wait_for(lambda: _listening(topo.client, port), 30, 0.3)
    time.sleep(2.0)  # both workers listening (the second may start a moment later)
    out = _replay(topo.client, port, request)
    lines = out.splitlines()
    assert len(lines) == 11
    assert sum("101" in line for line in lines) == 1, lines

    def refused() -> object:
        gauges = h.status(topo.exit, h.EXIT_STATUS)["gauges"]
        assert isinstance(gauges, dict)
        return gauges["tokens_refused_replay"]

    # The workers' counters reach the status page within a read (every STATS_S).
    assert netns.wait_for(lambda: refused() == 10, 10, 0.3), refused()
    gauges = h.status(topo.exit, h.EXIT_STATUS)["gauges"]
    assert isinstance(gauges, dict) and gauges["workers_running"] == 2
    # And so do both workers' screenings, summed: one upgraded, ten answered as a web
    # server would answer them.
    connections = h.status(topo.exit, h.EXIT_STATUS)["connections"]
    assert isinstance(connections, dict)
    assert (connections["admitted"], connections["answered as the decoy"]) == (1, 10), connections


def _listening(ns: Namespace, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('{topology.EXIT_WAN}', {port}), 2)"
    try:
        ns.run([sys.executable, "-c", probe], timeout=10)
    except netns.NetnsError:
        return False
    return True


def _replay(ns: Namespace, port: int, request: bytes) -> str:
    done = subprocess.run(
        [*ns.prefix(), sys.executable, "-c", REPLAY, topology.EXIT_WAN, str(port), "11"],
        input=request, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def test_a_second_tunnel_of_a_device_at_the_other_worker_ends_the_first(
    lab: Lab, tmp_path: Path
) -> None:
    # The device opens a second tunnel (a network change: the first still stands at the
    # exit, nothing closed it), handed to the other worker (it has none): the supervisor
    # ends the first there (security.tunnels_per_device: 1). Without it both would stand
    # until the first's liveness ran out, and the first worker's holding notices would keep
    # the device's stations from the second.
    sites = TwoSites(lab, tmp_path)
    topo = sites.topo
    config = sites.files.client_configs["client"]
    lab.stop(sites.clients["client2"])  # so that the other worker serves nobody
    sites.wait_peers({"client": 1, "client2": 0})
    time.sleep(workers_module.STATS_S * 2.5)  # the workers' open connections reported
    (first,) = [p for p in sites.peers() if p["device"] == "client"]
    second = lab.spawn(topo.client, [sys.executable, "-c", HOLD, str(config)],
                       stdout=subprocess.PIPE)  # fmt: skip
    assert second.stdout is not None
    with second.stdout:
        assert second.stdout.readline().strip() == b"up"

    def newer() -> list[dict[str, object]]:
        return [
            p for p in sites.peers()
            if p["device"] == "client" and p["address"] != first["address"]
        ]  # fmt: skip

    assert netns.wait_for(lambda: bool(newer()), 10.0, 0.1)
    others = newer()
    assert others[0]["worker"] != first["worker"], "handed to the busier worker"
    # At once (well inside the first tunnel's 15 s liveness): only the second is left.
    assert netns.wait_for(
        lambda: [p["address"] for p in sites.peers() if p["device"] == "client"]
        == [others[0]["address"]], 5.0, 0.2,
    ), sites.peers()  # fmt: skip
    lab.stop(second)
    # The client, told its tunnel ended, comes back and the LANs meet again.
    assert reachable(topo.lan_a, topology.HOST_B, 30.0)


# Runs in the client's namespace: a second tunnel of the same device, held open a while.
HOLD = """
import asyncio, sys
from pathlib import Path
from l2bridge.client.node import ClientNode
from l2bridge.node.config import load_config

async def main():
    link = await ClientNode(load_config(Path(sys.argv[1])), status=False).connect()
    print("up", flush=True)
    await asyncio.sleep(30)
    await link.close()

asyncio.run(main())
"""
