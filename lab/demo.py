"""``shadowmesh demo``: two LANs bridged through attested, registered exits, then torn down.

The full demo (default; steps in ``lab.demo_steps``, network in ``lab.demo_net``):
namespaces for two LANs, each with its client, two exits each with its own swtpm, one
Anvil with the registry, and a simulated GPSDO on a pty disciplining every node's clock.
The operator enrols each exit's AK, takes a golden policy, approves the exits' boot
digests (PCRs 0-9) and the release; an enroller runs the enrolment ceremony with each exit
(EK certificate chain, credential activation, identity signature) and signs its EIP-712
voucher; the exits register and attest on chain; the clients pick the best exit from the
registry, verify its evidence and connect; a ping and a SHA-256-checked file transfer
cross from lan-a to lan-b while keys rotate on the clocks' epoch boundaries. Each exit runs
its own installed copy of the release under the IMA harness (``lab.imaharness``), which
plays measured boot and the kernel's IMA. Then a file of the used exit's installed release
is changed and loaded there: both clients refuse that exit naming the file and fail over to
the other while a TCP transfer keeps running; the registry, which sees only boot PCRs, keeps
the changed exit (runtime is judged by the clients).

``--simple`` runs the first version instead: one client, one exit, no TPM/chain/clocks
(lan-a, client, exit, lan-b namespaces from ``lab.topology``).

Either way the demo is a list of named steps run in order; each says what it showed. A
failed step stops the run (the nodes' last log lines are printed), every step's outcome is
printed in a summary, namespaces and processes are always removed, and the exit status is
non-zero on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware import netns
from hardware.netns import Lab
from lab import provision, topology

TRANSFER_PORT = 5555
UP_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 120.0

# Receiver and sender of the file transfer, run inside lan-b and lan-a.
RECEIVE = """
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn, _ = srv.accept()
with open(sys.argv[2], "wb") as out:
    while chunk := conn.recv(1 << 20):
        out.write(chunk)
"""
SEND = """
import socket, sys, time
for _ in range(100):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
with open(sys.argv[3], "rb") as f:
    s.sendfile(f)
s.close()
"""


@dataclass
class Demo:
    """What the steps share."""

    lab: Lab
    workdir: Path
    mode: str
    size_mib: int
    verbose: bool
    topo: topology.Topology | None = None
    files: provision.Lab | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def mtu(self) -> int:
        return 9000 if self.mode == "jumbo" else 1500

    def node(self, role: str, ns: netns.Namespace, config: Path) -> None:
        out = None if self.verbose else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "l2bridge", role, "--config", str(config)]
        self.processes[role] = self.lab.spawn(ns, cmd, stdout=out, stderr=out)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    run: Callable[[Any], str]  # takes the demo's state; returns what it showed; raises on failure


Result = tuple[str, bool, str, float]  # step name, ok, what it showed, seconds


def step_namespaces(d: Demo) -> str:
    d.topo = topology.build(d.lab, d.mtu)
    return "namespaces " + ", ".join(ns.name for ns in d.topo.namespaces)


def step_keys(d: Demo) -> str:
    d.files = provision.provision(
        d.workdir / "keys", exit_host=topology.EXIT_WAN, mtu=d.mtu, offload=d.mode == "offload"
    )
    return f"admin key, exit identity {d.files.exit_node_id.hex()[:16]}..., client certificate"


def step_exit(d: Demo) -> str:
    assert d.topo is not None and d.files is not None
    d.node("exit", d.topo.exit, d.files.exit_config)
    ns = d.topo.exit
    if not netns.wait_for(lambda: netns.link_exists(ns, "smx0"), UP_TIMEOUT_S, 0.1):
        raise RuntimeError("the exit did not come up")
    return f"exit listening on {topology.EXIT_WAN}:{provision.EXIT_PORT} (mode {d.mode})"


def step_client(d: Demo) -> str:
    assert d.topo is not None and d.files is not None
    d.node("client", d.topo.client, d.files.client_configs["client"])
    topo = d.topo
    up = netns.wait_for(
        lambda: topology.ping(topo.lan_a, topology.HOST_B, count=1) == 1, UP_TIMEOUT_S, 0.2
    )
    if not up:
        raise RuntimeError("lan-a cannot reach lan-b through the tunnel")
    return "client connected; its TAP is in the client's bridge with lan-a"


def step_ping(d: Demo) -> str:
    assert d.topo is not None
    out = d.topo.lan_a.run(["ping", "-c", "5", "-i", "0.2", "-q", topology.HOST_B], timeout=20)
    match = re.search(r"(\d+) received.*?= [\d.]+/([\d.]+)/", out, re.S)
    if not match or match.group(1) != "5":
        raise RuntimeError(f"ping lost packets: {out.strip().splitlines()[-2:]}")
    return f"{topology.HOST_A} -> {topology.HOST_B}: 5/5 replies, avg {match.group(2)} ms"


def step_transfer(d: Demo) -> str:
    assert d.topo is not None
    src, dst = d.workdir / "payload.bin", d.workdir / "received.bin"
    digest = hashlib.sha256()
    with src.open("wb") as f:
        for _ in range(d.size_mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    receiver = d.lab.spawn(
        d.topo.lan_b, [sys.executable, "-c", RECEIVE, str(TRANSFER_PORT), str(dst)]
    )
    started = time.monotonic()
    d.topo.lan_a.run(
        [sys.executable, "-c", SEND, topology.HOST_B, str(TRANSFER_PORT), str(src)],
        timeout=TRANSFER_TIMEOUT_S,
    )
    receiver.wait(timeout=TRANSFER_TIMEOUT_S)
    elapsed = time.monotonic() - started
    got = hashlib.sha256(dst.read_bytes()).hexdigest()
    if got != digest.hexdigest():
        raise RuntimeError("the received file differs (SHA-256 mismatch)")
    rate = d.size_mib * 8 * 1.048576 / max(elapsed, 1e-6)
    return f"{d.size_mib} MiB lan-a -> lan-b in {elapsed:.2f} s ({rate:.0f} Mbit/s), SHA-256 equal"


STEPS: list[Step] = [
    Step("namespaces", step_namespaces),
    Step("keys", step_keys),
    Step("exit", step_exit),
    Step("client", step_client),
    Step("ping", step_ping),
    Step("file transfer", step_transfer),
]


def run(steps: list[Step], demo: object) -> list[Result]:
    results: list[Result] = []
    for step in steps:
        started = time.monotonic()
        try:
            shown = step.run(demo)
            ok = True
        except Exception as exc:  # any failure ends the demo with its reason shown
            shown, ok = f"{type(exc).__name__}: {exc}", False
        results.append((step.name, ok, shown, time.monotonic() - started))
        print(f"[{'ok' if ok else 'FAILED'}] {step.name}: {shown}", flush=True)
        if not ok:
            break
    return results


def run_full(settings: Any, workdir: Path) -> tuple[list[Result], dict[str, Any]]:
    """Run the full demo's steps, then tear everything down. Returns the step results (the
    last one is the teardown) and the figures the steps recorded."""
    from lab import demo_steps  # noqa: PLC0415 - web3 & co. only for the full demo
    from lab.demo_world import World  # noqa: PLC0415

    steps = [Step(name, func) for name, func in demo_steps.STEPS]
    with Lab() as lab:
        world = World(lab, workdir, settings)
        try:
            results = run(steps, world)
            if not all(ok for _, ok, _, _ in results):
                print("\nlast lines of the nodes' logs:\n" + world.tails(), flush=True)
        finally:
            world.facts.pop("paced_transfer", None)
            for name in list(world.nodes):
                world.stop_node(name)
            for cleanup in reversed(world.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
        namespaces = world.mesh.namespaces if world.mesh is not None else ()
    left = [n.name for n in namespaces if n.exists()]
    results.append(("teardown", not left, f"left behind: {left}" if left else "all removed", 0))
    if len(results) != len(steps) + 1:
        results.append(
            ("(not run)", False, ", ".join(n for n, _ in demo_steps.STEPS[len(results) - 1 :]), 0)
        )
    return results, world.facts


def run_simple(ns: argparse.Namespace, workdir: Path) -> list[Result]:
    with Lab() as lab:
        demo = Demo(lab, workdir, ns.mode, ns.size_mib, ns.verbose)
        results = run(STEPS, demo)
    left = [n.name for n in demo.topo.namespaces if n.exists()] if demo.topo else []
    results.append(("teardown", not left, f"left behind: {left}" if left else "all removed", 0))
    if len(results) != len(STEPS) + 1:
        results.append(("(not run)", False, "the steps after the failed one", 0))
    return results


def register(parser: argparse.ArgumentParser) -> None:
    simple = "first version: one client, one exit, no TPM/chain/clocks"
    parser.add_argument("--simple", action="store_true", help=simple)
    parser.add_argument("--mode", choices=["offload", "plain", "jumbo"], default="offload")
    parser.add_argument("--size-mib", type=int, default=20, help="file transfer size")
    rotation = "key rotation interval (full demo)"
    parser.add_argument("--rotation", type=float, default=3.0, metavar="S", help=rotation)
    window = "registry attestation window = the clients' re-check interval (full demo)"
    parser.add_argument("--window", type=int, default=8, metavar="S", help=window)
    parser.add_argument("--verbose", action="store_true", help="show the nodes' logs")
    parser.add_argument(
        "--exit-workers", type=int, default=1, metavar="N",
        help="run each exit as N worker processes (network.workers; full demo)",
    )  # fmt: skip
    parser.set_defaults(func=main)


def summary(results: list[Result], facts: dict[str, Any]) -> None:
    print("\nsummary:")
    for name, ok, shown, secs in results:
        print(f"  {'ok    ' if ok else 'FAILED'} {name:<15} {secs:6.2f} s  {shown}")
    if facts:
        print("figures: " + json.dumps(facts, sort_keys=True, default=str))


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(ns: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("shadowmesh demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    if not 1 <= ns.size_mib <= 4096 or not 1 <= ns.rotation <= 3600 or not 4 <= ns.window <= 3600:
        print(
            "shadowmesh demo: --size-mib 1-4096, --rotation 1-3600, --window 4-3600",
            file=sys.stderr,
        )
        return 2
    # SIGTERM tears down like Ctrl-C: namespaces and processes never outlive the demo.
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shadowmesh-demo-") as tmp:
        facts: dict[str, Any] = {}
        if ns.simple:
            results = run_simple(ns, Path(tmp))
        else:
            from lab.demo_world import Settings  # noqa: PLC0415

            settings = Settings(
                ns.rotation, ns.window, ns.size_mib, ns.mode, ns.verbose, ns.exit_workers
            )
            results, facts = run_full(settings, Path(tmp))
    summary(results, facts)
    failed = [r for r in results if not r[1]]
    print(f"{'FAILED' if failed else 'all steps ok'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0
