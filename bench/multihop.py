"""Circuits through 1, 3 and 5 relaying exits on loopback: throughput, idle RTT, build time.

Run (as root for the TCP part): ``python -m bench.multihop [--offload] [--layouts nodes,one]
[--node-cpu 0.25] [--megabytes 20] [--builds 20] [--pings 50] [--tcp-seconds 5]
[--hops 1,3,5] [--profile DIR]``.

``--profile DIR`` samples the circuit process (and its exits' processes) with
``py-spy record --native`` while iperf3 runs, one collapsed-stack file per layout and hop
count in DIR (``<layout>/hops<n>.txt``): where the CPU of each relayed frame goes.
``cpu_us_per_64k``: CPU time (user + system, from /proc) of the circuit process(es) during
the iperf3 run per 64 KiB carried (bytes estimated as the rate times the run, the omitted
first second included): a cost that the machine's other load changes far less than
throughput.

TCP part (root, namespaces; ``--tcp-seconds 0`` skips it): lan-a and lan-b hosts joined by
``python -m lab.circuitlab`` (real TAPs) through circuits of n = 1, 3, 5 relaying exits;
iperf3 with one stream gives ``tcp1_gbps``, ping the RTT, and the same ping over a plain
veth between the two LAN bridges the baseline for ``added_rtt_ms``. Once per layout:

* ``nodes`` (first by default, so its figures are the top-level ones): the client and each
  exit in its own process, each held to ``--node-cpu`` of one core by the kernel
  (``hardware.cpubudget``), as if every node ran on its own machine, all of equal speed: a
  node cannot borrow the core another left idle. Throughput is then set by the busiest
  node, as across real machines; ``node_throttled_s`` says, per node (client first), how
  long the kernel held it back for want of budget during the iperf3 run, and
  ``node_cpu_us_per_64k`` what each node spent per 64 KiB carried.
* ``one``: the client and all exits share ONE process and event loop (one core): a 5-hop
  circuit pays for five relays on the client's core, which exits on their own machines do
  not, so its ratio is the whole circuit's CPU per byte at 1 hop over that at 3 or 5 hops.
* ``processes``: one process per node, no budget (the machine's 2 cores shared by all).

Frame part (always in one process, in-memory TAPs):

* ``frame_gbps``: one stream of 1514-byte frames (as tunnel frames) from the client through
  the circuit into the tail's in-memory TAP; ``--megabytes`` per hop count.
* ``frame_rtt_ms``: median over ``--pings`` of an idle round trip client -> tail's LAN ->
  client (one 98-byte frame each way), in process.
* ``build_ms``: median and p95 of ``--builds`` circuit builds (tunnel to hop 1, then one
  hybrid exchange per hop, each hop's CREATED checked), each circuit closed before the
  next, with relays that close a next-hop link with its last circuit (cold: every extend
  opens a link); ``build_ms_*_links_kept``: the same builds with relays that keep an idle
  link for the circuits to come (``exitnode.constants.NEXT_LINK_IDLE_S``, the default).
  Evidence is the lab's stand-in: a real TPM quote adds the exit's quote time per hop
  (``bench/attestation.py``).

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.l2 import IPERF_PORT, iperf_gbps, ping_rtt_ms
from exitnode.constants import NEXT_LINK_IDLE_S
from hardware import netns
from hardware.cpubudget import CpuBudget
from hardware.netns import Lab
from l2bridge.client.circuit import CircuitLink, build
from lab import topology
from lab.circuitlab import RelayExit, dialer, fake_checker, hop_of, start_exits

A, B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
FRAME = 1514
BATCH = 64


def frame(src: bytes, dst: bytes, size: int, tag: bytes = b"") -> bytes:
    body = (tag + bytes(size))[: size - 14]
    return bytes(10) + dst + src + b"\x88\xb5" + body  # 10-byte virtio-net header


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, round(p * (len(s) - 1))))]


async def circuit(exits: list[RelayExit]) -> CircuitLink:
    return await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)


async def throughput(cl: CircuitLink, tail: RelayExit, megabytes: int) -> float:
    total = megabytes * 1_000_000 // FRAME
    payload = frame(A, B, FRAME)
    delivered = 0

    async def drain() -> None:
        nonlocal delivered
        while delivered < total:
            delivered += len(tail.lan_frames())
            await asyncio.sleep(0.001)

    reader = asyncio.ensure_future(drain())
    start = time.perf_counter()
    sent = 0
    while sent < total:
        n = min(BATCH, total - sent)
        await cl.send_frames([payload] * n)
        sent += n
    with contextlib.suppress(TimeoutError):  # frames dropped on the way: count what arrived
        await asyncio.wait_for(reader, 120)
    seconds = time.perf_counter() - start
    return delivered * FRAME * 8 / seconds / 1e9


async def idle_rtt(cl: CircuitLink, tail: RelayExit, pings: int) -> float:
    samples = []
    for i in range(pings):
        tag = i.to_bytes(4, "big")
        start = time.perf_counter()
        await cl.send_frames([frame(A, B, 98, tag)])
        while not any(f[14:18] == tag for f in tail.lan_frames()):
            await asyncio.sleep(0)
        tail.tap.inject(frame(B, A, 98, tag)[10:])
        while True:
            got = await cl.recv_frames()
            if any(bytes(f[24:28]) == tag for f in got):
                break
        samples.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)
    return statistics.median(samples) * 1000


async def builds(exits: list[RelayExit], count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        cl = await circuit(exits)
        out.append((time.perf_counter() - start) * 1000)
        await cl.close()
    return out


async def run(megabytes: int, count: int, pings: int) -> dict[str, object]:
    gbps: dict[str, float] = {}
    rtt: dict[str, float] = {}
    build_ms: dict[str, dict[str, float]] = {}
    warm_ms: dict[str, dict[str, float]] = {}
    hop_ms: dict[str, list[float]] = {}
    for n in (1, 3, 5):
        # Cold builds first: each relay's link to its next hop closes with its circuit.
        exits = await start_exits(n, next_link_idle_s=0)
        try:
            cl = await circuit(exits)
            hop_ms[str(n)] = [round(ms, 2) for ms in cl.hop_ms]
            tail = exits[-1]
            # The tail's switch learns where A is, so the echo is unicast.
            await cl.send_frames([frame(A, B, 98)])
            await asyncio.sleep(0.2)
            tail.tap.delivered()
            rtt[str(n)] = round(await idle_rtt(cl, tail, pings), 3)
            gbps[str(n)] = round(await throughput(cl, tail, megabytes), 4)
            await cl.close()
            if n > 1:
                samples = await builds(exits, count)
                build_ms[str(n)] = {
                    "median": round(statistics.median(samples), 1),
                    "p95": round(pct(samples, 0.95), 1),
                }
                # Then as deployed: relays keep an idle link for the circuits to come.
                for x in exits:
                    assert x.relay is not None
                    x.relay.next_link_idle_s = NEXT_LINK_IDLE_S
                samples = await builds(exits, count)
                warm_ms[str(n)] = {
                    "median": round(statistics.median(samples), 1),
                    "p95": round(pct(samples, 0.95), 1),
                }
        finally:
            for x in exits:
                await x.kill()
    return {
        "bench": "multihop",
        "frame_where": "client and all hops in one process and event loop (one core), loopback",
        "frame_gbps": gbps,
        "frame_rtt_ms": rtt,
        "frame_ratio_3hop": round(gbps["3"] / gbps["1"], 3) if gbps.get("1") else None,
        "frame_ratio_5hop": round(gbps["5"] / gbps["1"], 3) if gbps.get("1") else None,
        "build_ms_p95": {k: v["p95"] for k, v in build_ms.items()},
        "build_ms_median": {k: v["median"] for k, v in build_ms.items()},
        "build_ms_p95_links_kept": {k: v["p95"] for k, v in warm_ms.items()},
        "build_ms_median_links_kept": {k: v["median"] for k, v in warm_ms.items()},
        "hop_add_ms_first_build": hop_ms,
        "evidence": "lab stand-in (no TPM quote per hop)",
        "megabytes": megabytes,
        "builds": count,
        "pings": pings,
        "cpus": os.cpu_count(),
    }


def process_tree(pid: int) -> dict[int, float]:
    """``pid`` and its live descendants (``/proc``), each with its user + system CPU seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    tree: dict[int, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        tree[p] = cpu.get(p, 0.0)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return tree


def tcp_figures(
    seconds: float,
    offload: bool,
    processes: bool,
    counts: tuple[int, ...] = (1, 3, 5),
    *,
    profile: Path | None = None,
    node_cpu: float | None = None,
) -> dict[str, object]:
    """iperf3 (1 stream) and ping between two LANs joined by circuits of ``counts`` hops.

    ``node_cpu`` (with ``processes``): every node, the client and each exit, held to that
    share of one core (``hardware.cpubudget``), as if each ran on its own machine of equal
    speed."""
    gbps: dict[str, float] = {}
    added: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    throttled: dict[str, list[float]] = {}
    node_cpu_us: dict[str, list[float]] = {}
    for n in counts:
        with Lab() as lab, contextlib.ExitStack() as budgets:
            lan_a, mesh, lan_b = (lab.namespace(p) for p in ("lana", "mesh", "lanb"))
            for ns in (lan_a, mesh, lan_b):
                topology.quiet(ns)
            lab.veth(lan_a, "eth0", mesh, "lana0")
            lab.veth(lan_b, "eth0", mesh, "lanb0")
            for bridge, port in (("bra", "lana0"), ("brb", "lanb0")):
                netns.bridge(mesh, bridge)
                netns.attach(mesh, port, bridge)
            lan_a.ip("addr", "add", f"{topology.HOST_A}/24", "dev", "eth0")
            lan_b.ip("addr", "add", f"{topology.HOST_B}/24", "dev", "eth0")
            topo = topology.Topology(lan_a, mesh, mesh, lan_b, 1500)
            # Baseline: the two bridges joined by a plain veth.
            lab.veth(mesh, "da", mesh, "db")
            netns.attach(mesh, "da", "bra")
            netns.attach(mesh, "db", "brb")
            direct = ping_rtt_ms(topo)
            mesh.ip("link", "del", "da")
            proc = lab.spawn(
                mesh,
                [sys.executable, "-m", "lab.circuitlab", "--exits", str(n), "--hops", str(n),
                 "--exit-bridge", "brb", "--client-bridge", "bra",
                 *(["--offload"] if offload else []),
                 *(["--processes"] if processes else [])],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            json.loads(proc.stdout.readline())  # the first {"path": ...}: circuit up
            if not netns.wait_for(lambda a=lan_a: topology.ping(a, topology.HOST_B, 1) == 1, 30):
                raise RuntimeError(f"no path through {n} hops")
            nodes: list[CpuBudget] = []
            if node_cpu is not None:
                # The client process first, then its exits in the order they were started.
                for i, pid in enumerate(sorted(process_tree(proc.pid))):
                    budget = budgets.enter_context(CpuBudget(f"smbench-node{i}", node_cpu))
                    budget.add(pid)
                    nodes.append(budget)
                if len(nodes) != n + 1:
                    raise RuntimeError(f"{len(nodes)} node processes for {n} hops")
            added[str(n)] = round(ping_rtt_ms(topo) - direct, 3)
            lab.spawn(lan_b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
            time.sleep(0.5)
            spy = None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(
                    ["py-spy", "record", "--native", "--format", "raw",
                     "--rate", "200", "--duration", str(max(1, int(seconds))),
                     "--output", str(profile / f"hops{n}.txt"), "--pid", str(proc.pid),
                     *(["--subprocesses"] if processes else [])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            tree0 = process_tree(proc.pid)
            held0 = [b.throttled_s() for b in nodes]
            gbps[str(n)] = iperf_gbps(topo, 1, seconds)
            tree1 = process_tree(proc.pid)
            if nodes:
                throttled[str(n)] = [
                    round(b.throttled_s() - h, 2) for b, h in zip(nodes, held0, strict=True)
                ]
            # iperf3 ran seconds + 1 (the omitted first second): bytes ~ rate x that time.
            carried = gbps[str(n)] * 1e9 / 8 * (seconds + 1) / 65536
            if carried:
                used = {pid: tree1.get(pid, cpu) - cpu for pid, cpu in tree0.items()}
                cpu_us[str(n)] = round(sum(used.values()) / carried * 1e6, 1)
                if nodes:  # per node, the client first: which one sets the pace
                    node_cpu_us[str(n)] = [
                        round(used[pid] / carried * 1e6, 1) for pid in sorted(used)
                    ]
            if spy is not None:
                spy.wait(timeout=seconds + 30)
            lab.stop(proc)
            proc.stdout.close()
    return {
        "tcp1_gbps": gbps,
        "added_rtt_ms": added,
        "cpu_us_per_64k": cpu_us,
        "ratio_3hop": round(gbps["3"] / gbps["1"], 3) if gbps.get("1") and "3" in gbps else None,
        "ratio_5hop": round(gbps["5"] / gbps["1"], 3) if gbps.get("1") and "5" in gbps else None,
        "node_throttled_s": throttled,
        "node_cpu_us_per_64k": node_cpu_us,
    }


LAYOUTS = {
    "nodes": "each node (the client, every exit) its own process held to --node-cpu of a core:"
    " one machine per node, all of equal speed",
    "one": "the client and all exits in one process and event loop (one core): the whole"
    " circuit's CPU per byte",
    "processes": "each node its own process, no budget: the machine's cores shared by all",
}
# Six nodes (a 5-hop circuit and its client) at 0.25 of a core take 1.5 of this machine's 2
# cores, leaving the rest to the LAN hosts' iperf3 and the kernel's forwarding.
NODE_CPU = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=20, help="0: skip the frame part")
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--tcp-seconds", type=float, default=5.0, help="0: skip the TCP part")
    parser.add_argument(
        "--offload", action="store_true", help="TCP part: TAPs with offloads (GSO), as exits"
    )
    parser.add_argument(
        "--layouts",
        default="nodes,one",
        help="TCP part: where the nodes run, comma-separated, the first gives the top-level"
        " figures: " + "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items()),
    )
    parser.add_argument(
        "--node-cpu",
        type=float,
        default=NODE_CPU,
        help=f"TCP part, layout nodes: each node's share of one core ({NODE_CPU})",
    )
    parser.add_argument(
        "--hops", default="1,3,5", help="TCP part: circuit lengths, comma-separated (1,3,5)"
    )
    parser.add_argument(
        "--profile", type=Path, help="TCP part: py-spy collapsed stacks per length into DIR"
    )
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    if unknown := [x for x in layouts if x not in LAYOUTS]:
        parser.error(f"unknown layouts {unknown}: choose from {', '.join(LAYOUTS)}")
    counts = tuple(int(h) for h in args.hops.split(","))
    result: dict[str, object] = {}
    if args.tcp_seconds > 0 and os.geteuid() == 0:
        by_layout: dict[str, dict[str, object]] = {}
        for layout in layouts:
            budget = args.node_cpu if layout == "nodes" else None
            by_layout[layout] = tcp_figures(
                args.tcp_seconds, args.offload, layout != "one", counts,
                profile=args.profile / layout if args.profile else None, node_cpu=budget,
            )  # fmt: skip
            by_layout[layout].update(layout=layout, where=LAYOUTS[layout], node_cpu=budget)
        result.update(by_layout[layouts[0]], tcp_offload=args.offload, tcp_by_layout=by_layout)
    else:
        result.update(tcp1_gbps=None, added_rtt_ms=None, ratio_3hop=None, ratio_5hop=None)
    if args.megabytes > 0:  # 0: the TCP part only
        result.update(asyncio.run(run(args.megabytes, args.builds, args.pings)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
