"""Circuits through 1, 3 and 5 relaying exits on loopback: throughput, idle RTT, build time.

Run (as root for the TCP part): ``python -m bench.multihop [--offload] [--processes]
[--megabytes 20] [--builds 20] [--pings 50] [--tcp-seconds 5] [--hops 1,3,5]
[--profile DIR]``.

``--profile DIR`` samples the circuit process (and with ``--processes`` its exits) with
``py-spy record --native`` while iperf3 runs, one collapsed-stack file per hop count in DIR
(``hops<n>.txt``): where the CPU of each relayed frame goes. ``cpu_us_per_64k``: CPU
time (user + system, from /proc) of the circuit process(es) during the iperf3 run per
64 KiB carried (bytes estimated as the rate times the run, the omitted first second
included): a cost that the machine's other load changes far less than throughput.

TCP part (root, namespaces; ``--tcp-seconds 0`` skips it): lan-a and lan-b hosts joined by
``python -m lab.circuitlab`` (real TAPs) through circuits of n = 1, 3, 5 relaying exits;
iperf3 with one stream gives ``tcp1_gbps``, ping the RTT, and the same ping over a plain
veth between the two LAN bridges the baseline for ``added_rtt_ms``. By default the client
and all exits share ONE process and event loop (one core): a 5-hop circuit pays for five
relays on the client's core, which exits on their own machines do not, so the figures are a
floor for throughput and a ceiling for latency. ``--processes`` runs each exit in its own
process (the machine's cores are then shared by all of them).

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
            delivered += len(tail.tap.delivered())
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
        while not any(f[14:18] == tag for f in tail.tap.delivered()):
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
        "where": "client and all hops in one process and event loop (one core), loopback",
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


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (``/proc``)."""
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
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return total


def tcp_figures(
    seconds: float,
    offload: bool,
    processes: bool,
    counts: tuple[int, ...] = (1, 3, 5),
    profile: Path | None = None,
) -> dict[str, object]:
    """iperf3 (1 stream) and ping between two LANs joined by circuits of ``counts`` hops."""
    gbps: dict[str, float] = {}
    added: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    for n in counts:
        with Lab() as lab:
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
            cpu0 = tree_cpu_seconds(proc.pid)
            gbps[str(n)] = iperf_gbps(topo, 1, seconds)
            cpu1 = tree_cpu_seconds(proc.pid)
            # iperf3 ran seconds + 1 (the omitted first second): bytes ~ rate x that time.
            carried = gbps[str(n)] * 1e9 / 8 * (seconds + 1) / 65536
            if carried:
                cpu_us[str(n)] = round((cpu1 - cpu0) / carried * 1e6, 1)
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
    }


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
        "--processes", action="store_true", help="TCP part: each exit in its own process"
    )
    parser.add_argument(
        "--hops", default="1,3,5", help="TCP part: circuit lengths, comma-separated (1,3,5)"
    )
    parser.add_argument(
        "--profile", type=Path, help="TCP part: py-spy collapsed stacks per length into DIR"
    )
    args = parser.parse_args()
    counts = tuple(int(h) for h in args.hops.split(","))
    result: dict[str, object] = {}
    if args.tcp_seconds > 0 and os.geteuid() == 0:
        result.update(
            tcp_figures(args.tcp_seconds, args.offload, args.processes, counts, args.profile),
            tcp_offload=args.offload,
            tcp_hop_processes=args.processes,
        )
    else:
        result.update(tcp1_gbps=None, added_rtt_ms=None, ratio_3hop=None, ratio_5hop=None)
    if args.megabytes > 0:  # 0: the TCP part only
        result.update(asyncio.run(run(args.megabytes, args.builds, args.pings)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
