"""Exit capacity with several clients: N client namespaces, one exit, one host behind it.

::

    host-i 10.77.1.1i ── client-i (br0 + TAP, wan0 172.31.1.1i) ─┐
                                                                 wbr0 172.31.1.1 ── exit
    lan-b 10.77.1.2 ── exit (br0 + TAP) ─────────────────────────┘

Each client is a real ``shadowmesh client`` process in its own namespace, the exit a real
``shadowmesh exit``; every host-i runs iperf3 TCP to its own iperf3 server in lan-b at the
same time, and the figure is the sum of what lan-b received. On a machine whose cores also
run the clients and iperf3 this measures the whole system, not the exit alone: the notes
say so next to the figure.

``exit_core``: each of the exit's processes (the one process, or each worker of
``network.workers``; the supervisor shares the first worker's) is held by the kernel to that
fraction of one core (``hardware.cpubudget``). That stands in for an exit with cores of its
own, each that fast, while the clients, iperf3 and the kernel's forwarding keep the rest of
the machine: a process can use one core at a time, a budget of ``exit_core`` each, so an
exit of one process is held to one such core and one of N workers to N of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from hardware import netns
from hardware.cpubudget import CpuBudget
from hardware.netns import Lab, Namespace
from lab import provision, topology

SINK = "10.77.1.2"
EXIT_WAN = "172.31.1.1"
WAN_PREFIX = 24
LAN_PREFIX = 24
BASE_PORT = 5301
UP_TIMEOUT_S = 30.0


def _host_ip(i: int) -> str:
    return f"10.77.1.{11 + i}"


def _client_wan(i: int) -> str:
    return f"172.31.1.{11 + i}"


@contextmanager
def world(
    lab: Lab, tmp: Path, clients: int, *, mode: str, workers: int = 1
) -> Iterator[tuple[list[Namespace], int, list[int]]]:
    """Build the topology with ``clients`` running clients; yields the hosts in front,
    the exit's pid and the clients' pids."""
    exit_ns = lab.namespace("agx")
    sink = lab.namespace("agb")
    topology.quiet(exit_ns)
    topology.quiet(sink)
    lab.veth(sink, "eth0", exit_ns, "lan0")
    netns.bridge(exit_ns, topology.BRIDGE)
    netns.attach(exit_ns, "lan0", topology.BRIDGE)
    netns.bridge(exit_ns, "wbr0")
    exit_ns.ip("addr", "add", f"{EXIT_WAN}/{WAN_PREFIX}", "dev", "wbr0")
    sink.ip("addr", "add", f"{SINK}/{LAN_PREFIX}", "dev", "eth0")
    names = tuple(f"c{i}" for i in range(clients))
    files = provision.provision(
        tmp / f"aggregate-{clients}",
        exit_host=EXIT_WAN,
        clients=names,
        offload=mode == "offload",
        bridge=topology.BRIDGE,
    )
    if workers > 1:  # network.workers: the exit's processes (exitnode.workers)
        doc = yaml.safe_load(files.exit_config.read_text())
        doc["network"]["workers"] = workers
        files.exit_config.write_text(yaml.safe_dump(doc, sort_keys=False))
    hosts: list[Namespace] = []
    client_ns: list[Namespace] = []
    for i in range(clients):
        cns = lab.namespace(f"agc{i}")
        host = lab.namespace(f"agh{i}")
        topology.quiet(cns)
        topology.quiet(host)
        lab.veth(host, "eth0", cns, "lan0")
        netns.bridge(cns, topology.BRIDGE)
        netns.attach(cns, "lan0", topology.BRIDGE)
        lab.veth(cns, "wan0", exit_ns, f"w{i}")
        netns.attach(exit_ns, f"w{i}", "wbr0")
        cns.ip("addr", "add", f"{_client_wan(i)}/{WAN_PREFIX}", "dev", "wan0")
        host.ip("addr", "add", f"{_host_ip(i)}/{LAN_PREFIX}", "dev", "eth0")
        hosts.append(host)
        client_ns.append(cns)
    servers = [lab.spawn(sink, ["iperf3", "-s", "-p", str(BASE_PORT + i)]) for i in range(clients)]
    node = [sys.executable, "-m", "l2bridge.commands.main"]
    exit_proc = lab.spawn(
        exit_ns, [*node, "exit", "--config", str(files.exit_config), "--no-status"]
    )
    procs = [
        lab.spawn(cns, [*node, "client", "--config", str(files.client_configs[n]), "--no-status"])
        for cns, n in zip(client_ns, names, strict=True)
    ]
    try:
        for host in hosts:
            if not netns.wait_for(
                lambda host=host: topology.ping(host, SINK, count=1) == 1, UP_TIMEOUT_S, 0.2
            ):
                raise RuntimeError("aggregate: a client's host cannot reach the sink")
        yield hosts, exit_proc.pid, [proc.pid for proc in procs]
    finally:
        for proc in (*procs, exit_proc):
            try:
                lab.stop(proc, signal.SIGINT)
            except subprocess.SubprocessError:
                lab.stop(proc)
        for server in servers:
            lab.stop(server)


def _workers(pid: int) -> list[int]:
    """The exit's worker processes (children started by multiprocessing's spawn)."""
    found = []
    for child in tree(pid)[1:]:
        with contextlib.suppress(OSError):
            if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return sorted(found)


@contextmanager
def budgets(exit_pid: int, exit_core: float | None) -> Iterator[list[CpuBudget]]:
    """Each exit process held to ``exit_core`` of a core (None: no budgets): the first
    budget has the supervisor (and anything else it runs) and the first worker."""
    if exit_core is None:
        yield []
        return
    workers = _workers(exit_pid)
    held = [CpuBudget(f"agx{i}", exit_core) for i in range(max(1, len(workers)))]
    try:
        for pid in tree(exit_pid):
            if pid not in workers:
                held[0].add(pid)
        for budget, pid in zip(held, workers, strict=False):
            budget.add(pid)
        yield held
    finally:
        for budget in held:
            budget.close()


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (an exit's worker processes)."""
    out = [pid]
    for p in out:
        with contextlib.suppress(OSError):
            out.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far; a process
    gone meanwhile counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, summed over its cores
    (``/proc/stat``; busy: user, nice, system, irq, softirq; idle: idle and iowait; time
    the hypervisor gave to others, steal, is neither)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, (idle + iowait) / tick


def aggregate(
    lab: Lab,
    tmp: Path,
    clients: int,
    *,
    mode: str,
    seconds: float,
    workers: int = 1,
    exit_core: float | None = None,
) -> dict[str, float]:
    """Sum of iperf3 TCP (one stream per client, all at once) received behind the exit,
    and the cores the exit, the clients and the whole machine (everything: iperf3, the
    kernel's forwarding, the nodes) used meanwhile, and the machine's idle cores (CPU
    seconds / wall seconds), and from them the machine's ceiling for this traffic: the
    figure scaled to every core busy at the same cost per bit. No arrangement of the
    exit's work (workers, threads) can carry more than that ceiling on this machine.
    With ``exit_core`` (see the module's text) also the budgets and how long the kernel
    held the exit back for want of them."""
    with (
        world(lab, tmp, clients, mode=mode, workers=workers) as (hosts, exit_pid, client_pids),
        budgets(exit_pid, exit_core) as held,
    ):
        throttled_before = sum(b.throttled_s() for b in held)
        runs = []
        started = time.monotonic()
        exit_pids = tree(exit_pid)  # with workers: the supervisor and its workers
        exit_before, clients_before = cpu_seconds(exit_pids), cpu_seconds(client_pids)
        busy_before, idle_before = machine_seconds()
        for i, host in enumerate(hosts):
            cmd = ["iperf3", "-c", SINK, "-p", str(BASE_PORT + i), "-J", "-t", str(seconds)]
            runs.append(lab.spawn(host, [*cmd, "-O", "1"], stdout=subprocess.PIPE))
        total = 0.0
        for proc in runs:
            try:
                out, _ = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                lab.stop(proc)
                raise RuntimeError("aggregate: iperf3 did not finish") from None
            if proc.returncode != 0:
                raise RuntimeError(f"aggregate: iperf3 failed ({proc.returncode})")
            total += json.loads(out)["end"]["sum_received"]["bits_per_second"]
        wall = time.monotonic() - started
        exit_cores = (cpu_seconds(exit_pids) - exit_before) / wall
        clients_cores = (cpu_seconds(client_pids) - clients_before) / wall
        busy_after, idle_after = machine_seconds()
        throttled = sum(b.throttled_s() for b in held) - throttled_before
    busy = (busy_after - busy_before) / wall
    budget = {}
    if exit_core is not None:
        budget = {
            "exit_core_budget": exit_core,
            "exit_budgets": len(held),
            "exit_throttled_s_per_s": round(throttled / wall, 2),
        }
    return {
        **budget,
        "gbps": round(total / 1e9, 3),
        "exit_cores": round(exit_cores, 2),
        "clients_cores": round(clients_cores, 2),
        "machine_busy_cores": round(busy, 2),
        "machine_idle_cores": round((idle_after - idle_before) / wall, 2),
        # What this traffic would reach with every core of the machine busy at this
        # run's CPU cost per bit (all processes and the kernel): the most any way of
        # spreading the exit's work could give on this machine.
        "machine_ceiling_gbps": round(total / 1e9 * (os.cpu_count() or 1) / busy, 3)
        if busy > 0
        else 0.0,
    }
