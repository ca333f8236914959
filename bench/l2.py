"""Layer-2 tunnel benchmark: direct veth vs ShadowMesh vs OpenVPN 2.6 TAP, like for like.

Run as root: ``python bench/l2.py [--seconds 4] [--udp-seconds 2] [--udp-senders N]
[--profile DIR] [--floor]``.

One topology (lab.topology: lan-a, client, exit, lan-b). Each contender joins the
client's and the exit's bridges in turn, and the same measurements run host to host
(10.77.0.1 -> 10.77.0.2): ping RTT (idle: every 20 ms; hot: every 2 ms), iperf3 TCP
with 1 and 4 streams, and UDP (iperf3 ``-u``, 1400-byte datagrams: the highest offered
rate whose loss stays under 1 %, found by a bounded search):

- direct:         a plain veth between the two bridges (the floor of the path); its UDP
                  figure is the most this harness can carry at all (iperf3's sender is
                  one thread), so ``ratio_udp_ceiling`` (direct / OpenVPN) is the highest
                  ``ratio_udp`` any tunnel could show here, and ``udp_share_of_direct``
                  how much of it ShadowMesh kept; ``direct-plain-senders`` (with the gro
                  mode) does the same for ``ratio_throughput_plain``
                  (``ratio_throughput_plain_ceiling``, ``plain_share_of_direct``);
- openvpn-tcp/udp: OpenVPN 2.6 p2p, ``--dev tap``, TLS with pinned self-signed
                  certificates, AES-256-GCM, over TCP and over UDP (its best TAP
                  configurations; each ratio uses the better of the two for that figure);
- shadowmesh-offload: ``shadowmesh exit`` + ``shadowmesh client`` with the default
                  config: TAPs with vnet_hdr and TSO, TCP crossing as 64 KiB super-frames,
                  each TAP in its bridge through the merging port (``network.gro: auto``,
                  which is ``kernel`` here: hardware.gro_port);
- shadowmesh-gro:  the default config again, but the LAN hosts send plain 1500-byte
                  frames (TSO/GSO off: what a bridged NIC without GRO gives, and what
                  UDP always is): Linux's GRO in each node's merging port merges them, and
                  the nodes' software GRO (hardware.gro) what is left;
- shadowmesh-kernel-gro: the gro run with Linux's GRO switched on on the bridges' LAN
                  ports, as a physical NIC has it by default (and as the client switches
                  it on for network.lan_interfaces): the kernel merges before the TAP;
- shadowmesh-plain: TAPs without vnet_hdr: every 1500-byte frame crosses on its own, no
                  merging (the per-frame cost itself, like for like with OpenVPN);
- shadowmesh-gro-software: the gro run's traffic and ports with ``network.gro:
                  software`` (the default before the merging port was): each TAP joins its
                  bridge directly and only the nodes' software GRO merges, as where the
                  port cannot be built;
- shadowmesh-offload-software: the offload run's traffic (hosts with TSO) with
                  ``network.gro: software``: what the port costs TSO traffic;
- shadowmesh-gro-rps, shadowmesh-offload-rps: the gro and offload runs with
                  ``network.rps: true`` on both nodes (the kernel's work on the frames
                  they write spread over the CPUs);
- python-floor (``--floor``): bench/l2_floor.py, the least a Python tunnel does per frame
                  (uvloop, a TAP read, AES-GCM, a TCP write; nothing else): its figures,
                  under ``python_floor`` in the JSON, say what Python itself costs here.

Then the exit's capacity: 1 and then 4 clients (each a ``shadowmesh client`` in its own
namespace, plain TAPs by default) through one exit, iperf3 TCP from each at once
(bench/l2_aggregate.py); and 4 clients again through an exit with ``--aggregate-workers``
worker processes (``network.workers``, default 2): exit_aggregate_gbps_workers. On this
machine's two cores, shared with the clients and iperf3, no exit could show the issue's
"4 clients at least 1.6x one client on 2 cores" (the machine is the limit); so
``--aggregate-exit-core`` (default 0.3) runs the same with each of the exit's processes held
by the kernel to that fraction of a core, standing in for an exit with two cores of its own
(bench/l2_aggregate.py): 1 and 4 clients with the workers, and 4 with one process, in
exit_aggregate_gbps_budget and its ratios ratio_aggregate_budget (4 clients / 1, the
issue's goal) and ratio_workers_budget (4 clients: workers / one process).

Prints each figure as it goes, then exactly one line of JSON with every figure and
ratio_throughput_plain (plain frames on the wire, default config: the gro run),
ratio_throughput_plain_nogro (the plain run), ratio_throughput_offload, ratio_udp (best
mode) and ratio_udp_nogro (ShadowMesh / best OpenVPN, 1 stream), added_rtt_ms
{shadowmesh, shadowmesh_gro, shadowmesh_plain, openvpn} and exit_aggregate_gbps {1, 4}.
With the gro mode, OpenVPN also carries that same traffic (openvpn-tcp/udp-plain-senders,
TCP figures only) and ratio_throughput_plain compares the two; ratio_throughput_plain_tso
compares with OpenVPN's runs where the hosts keep TSO on (its TAP has no offloads, so its
kernel cuts the frames either way, which costs the sending host less CPU). With the
kernel-gro mode, OpenVPN carries that traffic with the same LAN ports' GRO on
(openvpn-tcp/udp-kernel-gro, TCP figures only; its TAP takes no super-frames, so its
kernel cuts what GRO merged): ratio_throughput_plain_kernel_gro compares the two. That is
a mode OpenVPN lacks (a TAP that takes merged frames), so it never replaces
ratio_throughput_plain. With the gro-software mode, ratio_throughput_plain_gro_software
compares the gro run's traffic carried with ``network.gro: software`` against the same
OpenVPN runs as ratio_throughput_plain (same traffic, same ports), and the offload-software
mode gives ratio_throughput_offload_software. The gro-rps and offload-rps modes give
ratio_throughput_plain_rps, ratio_throughput_offload_rps, ratio_udp_rps and
ratio_udp_senders_rps the same way.

With ``--udp-senders N`` each contender's UDP search runs again with the load split over N
iperf3 senders at once (udp_senders_gbps): one sender is the harness's limit here, and
with several the ceiling rises (ratio_udp_senders_ceiling, the direct path over OpenVPN)
and each tunnel's own limit shows; ratio_udp_senders compares ShadowMesh's best mode with
the better OpenVPN transport under the same load. ratio_udp stays the one-sender figure.

Each tunnel's figures include the CPU seconds its processes use per Gbit carried:
tcp1_cpu_s_per_gbit in the 1-stream TCP run, udp_cpu_s_per_gbit in one more UDP trial
at UDP_CPU_MBPS (a rate every tunnel here carries: the UDP search's own figure is often the
load generator's limit, so the cost is what compares).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import l2_aggregate, l2_floor, l2_openvpn, l2_shadowmesh  # noqa: E402
from hardware import netns  # noqa: E402
from hardware.netns import Lab  # noqa: E402
from lab import topology  # noqa: E402

PING_COUNT = 50
PING_INTERVAL_S = 0.02
PING_HOT_INTERVAL_S = 0.002
IPERF_PORT = 5201
UP_TIMEOUT_S = 30.0
UDP_DATAGRAM = 1400
UDP_MAX_LOSS_PERCENT = 1.0
# The offered rate of the UDP trial that measures the tunnel's CPU per Gbit: below what
# any tunnel here carries without loss (OpenVPN's UDP figure has been 0.36-0.74 Gbit/s).
UDP_CPU_MBPS = 300
UDP_START_MBPS = 200.0
UDP_MAX_MBPS = 6400.0  # the search never offers more than this
UDP_BISECTIONS = 3
# Socket buffers of both iperf3 ends (SO_SNDBUF/SO_RCVBUF): on a shared machine the
# receiving iperf3 is sometimes off the CPU for tens of ms, and its default ~200 KiB buffer
# would then drop datagrams the tunnel had delivered.
UDP_SOCKET_BUFFER = "4M"
MODES = (
    "offload", "gro", "kernel-gro", "plain", "gro-software", "offload-software", "gro-rps",
    "offload-rps",
)  # fmt: skip


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ping_rtt_ms(topo: topology.Topology, interval: float = PING_INTERVAL_S) -> float:
    """Mean RTT in ms of an idle path (after a warm-up that resolves ARP)."""
    topology.ping(topo.lan_a, topology.HOST_B, count=3, interval=0.05)
    out = topo.lan_a.run(
        ["ping", "-c", str(PING_COUNT), "-i", str(interval), "-q", topology.HOST_B],
        timeout=PING_COUNT * 1.0 + 10,
    )
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not match:
        raise RuntimeError(f"ping: no rtt in {out!r}")
    return float(match.group(1))


def iperf_gbps(topo: topology.Topology, streams: int, seconds: float) -> float:
    return iperf_tcp(topo, streams, seconds)[0]


def iperf_tcp(topo: topology.Topology, streams: int, seconds: float) -> tuple[float, int]:
    """(Gbit/s received, segments the senders retransmitted: loss or reordering)."""
    out = topo.lan_a.run(
        [
            "iperf3", "-c", topology.HOST_B, "-p", str(IPERF_PORT), "-J",
            "-t", str(seconds), "-P", str(streams), "-O", "1",
        ],
        timeout=seconds + 30,
    )  # fmt: skip
    result = json.loads(out)
    end = result["end"]
    retransmits = int(end.get("sum_sent", {}).get("retransmits", 0))
    return round(float(end["sum_received"]["bits_per_second"]) / 1e9, 3), retransmits


def udp_trial(
    topo: topology.Topology, mbps: float, seconds: float, senders: int = 1
) -> tuple[float, float]:
    """Offer ``mbps`` of 1400-byte datagrams, split over ``senders`` iperf3 clients run at
    once (each to its own server port); (received Gbit/s, loss %) over all of them."""
    cmds = [
        [
            *topo.lan_a.prefix(), "iperf3", "-c", topology.HOST_B, "-p", str(IPERF_PORT + i),
            "-J", "-u", "-l", str(UDP_DATAGRAM), "-b", f"{mbps / senders:.0f}M",
            "-t", str(seconds), "-w", UDP_SOCKET_BUFFER,
        ]
        for i in range(senders)
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"iperf3 -u: exit {proc.returncode}: {err.strip()[-200:]}")
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return udp_result(outs)


def udp_result(outs: list[str]) -> tuple[float, float]:
    """(received Gbit/s, loss %) over the JSON reports of iperf3 UDP clients run at once."""
    bps = sent_packets = lost_packets = 0.0
    for out in outs:
        end = json.loads(out)["end"]
        received = end.get("sum_received") or end["sum"]
        sent = end.get("sum_sent") or end["sum"]
        packets = sent.get("packets") or end["sum"].get("packets", 0)
        one_lost = end["sum"].get("lost_percent", 100.0)
        if packets and "packets" in received and "sum_received" in end:
            one_lost = max(one_lost, 100.0 * (1 - received["packets"] / packets))
        bps += received["bits_per_second"]
        # Loss over all senders: each one's share weighed by what it sent.
        weight = packets or 1
        sent_packets += weight
        lost_packets += weight * one_lost / 100.0
    return bps / 1e9, 100.0 * lost_packets / sent_packets


def udp_gbps(topo: topology.Topology, seconds: float, senders: int = 1) -> float:
    """Highest received rate among offered rates with < 1 % loss (doubling, then bisection),
    the load split over ``senders`` iperf3 clients.

    At most log2(UDP_MAX_MBPS / UDP_START_MBPS) + 1 + UDP_BISECTIONS trials."""
    best = 0.0
    good, bad = 0.0, 0.0
    rate = UDP_START_MBPS
    while rate <= UDP_MAX_MBPS:
        got, loss = udp_trial(topo, rate, seconds, senders)
        if loss >= UDP_MAX_LOSS_PERCENT:
            bad = rate
            break
        good, best = rate, max(best, got)
        rate *= 2
    if bad:
        for _ in range(UDP_BISECTIONS):
            rate = (good + bad) / 2
            got, loss = udp_trial(topo, rate, seconds, senders)
            if loss >= UDP_MAX_LOSS_PERCENT:
                bad = rate
            else:
                good, best = rate, max(best, got)
    return round(best, 3)


def measure(
    name: str,
    topo: topology.Topology,
    seconds: float,
    udp_seconds: float | None,
    pids: list[int] | None,
    *,
    udp_senders: int = 1,
) -> dict[str, float]:
    """RTT, TCP 1 and 4 streams, UDP; with ``pids``, the tunnel's CPU seconds per Gbit
    carried in the 1-stream run (less at the mercy of a shared machine than throughput)."""
    figures = {
        "rtt_ms": round(ping_rtt_ms(topo), 4),
        # The same path kept warm (a ping every 2 ms): the difference is what a cold frame
        # pays for sleeping processes, caches and wake-ups.
        "rtt_hot_ms": round(ping_rtt_ms(topo, PING_HOT_INTERVAL_S), 4),
    }
    before = l2_aggregate.cpu_seconds(pids) if pids else 0.0
    figures["tcp1_gbps"], figures["tcp1_retransmits"] = iperf_tcp(topo, 1, seconds)
    if pids and figures["tcp1_gbps"]:
        used = l2_aggregate.cpu_seconds(pids) - before
        figures["tcp1_cpu_s_per_gbit"] = round(used / (figures["tcp1_gbps"] * seconds), 3)
    figures["tcp4_gbps"], figures["tcp4_retransmits"] = iperf_tcp(topo, 4, seconds)
    if udp_seconds:
        figures["udp_gbps"] = udp_gbps(topo, udp_seconds)
        if udp_senders > 1:
            # iperf3's one sending thread limits the 1-sender figure: the same search with
            # the load split over several senders at once.
            figures["udp_senders_gbps"] = udp_gbps(topo, udp_seconds, udp_senders)
        if pids:
            # The UDP figure is often the load generator's limit, not the tunnel's (see
            # udp_ceiling_gbps): at one rate every tunnel carries, the CPU it costs compares.
            before = l2_aggregate.cpu_seconds(pids)
            got, _loss = udp_trial(topo, UDP_CPU_MBPS, udp_seconds)
            used = l2_aggregate.cpu_seconds(pids) - before
            if got:
                figures["udp_cpu_s_per_gbit"] = round(used / (got * udp_seconds), 3)
    log(f"{name:>18}: {figures}")
    return figures


def wait_up(topo: topology.Topology, what: str) -> None:
    if not netns.wait_for(
        lambda: topology.ping(topo.lan_a, topology.HOST_B, count=1) == 1, UP_TIMEOUT_S, 0.2
    ):
        raise RuntimeError(f"{what}: lan-a cannot reach lan-b")


@contextmanager
def direct(lab: Lab, topo: topology.Topology, _tmp: Path) -> Iterator[list[int]]:
    lab.veth(topo.client, "dir0", topo.exit, "dir0", mtu=topo.mtu)
    netns.attach(topo.client, "dir0", topology.BRIDGE)
    netns.attach(topo.exit, "dir0", topology.BRIDGE)
    try:
        yield []
    finally:
        # Deleting one end removes the pair and flushes what the bridges learned on it.
        topo.client.ip("link", "del", "dir0", check=False)


Runner = Callable[[Lab, topology.Topology, Path], AbstractContextManager[list[int]]]


def contenders(args: argparse.Namespace) -> list[tuple[str, Runner, bool]]:
    """(name, tunnel, with UDP) in the order they run."""
    # The direct path's UDP figure is the harness's ceiling: what iperf3 sends and receives
    # here with no tunnel at all.
    out: list[tuple[str, Runner, bool]] = [("direct", direct, True)]
    plain_senders = any(m in args.modes for m in ("gro", "gro-software", "gro-rps"))
    if plain_senders:
        # The gro run's traffic (hosts without TSO) with no tunnel: its TCP ceiling.
        out.append(("direct-plain-senders", partial(_plain_senders, direct), False))
    if not args.skip_openvpn:
        for proto in ("tcp", "udp"):
            out.append((f"openvpn-{proto}", partial(l2_openvpn.tunnel, proto=proto), True))
        if plain_senders:
            # The gro run's traffic through OpenVPN too, over both its transports (TCP
            # figures only: datagrams are never segmented late, so UDP is the same traffic
            # either way).
            for proto in ("tcp", "udp"):
                runner = partial(_plain_senders, partial(l2_openvpn.tunnel, proto=proto))
                out.append((f"openvpn-{proto}-plain-senders", runner, False))
        if "kernel-gro" in args.modes:
            # The kernel-gro run's traffic and LAN ports through OpenVPN (TCP figures only).
            for proto in ("tcp", "udp"):
                tunnel = partial(_kernel_gro, partial(l2_openvpn.tunnel, proto=proto))
                out.append((f"openvpn-{proto}-kernel-gro", partial(_plain_senders, tunnel), False))
    if args.floor:
        # The least a Python tunnel does per frame (bench/l2_floor.py): the floor under
        # ShadowMesh's per-frame cost and added latency on this machine.
        out.append(("python-floor", l2_floor.tunnel, True))
    for mode in args.modes:
        runner = partial(l2_shadowmesh.tunnel, mode=mode, profile=_profile_dir(args, mode))
        if mode == "kernel-gro":
            runner = partial(_kernel_gro, runner)
        if mode in ("gro", "kernel-gro", "gro-software", "gro-rps"):
            runner = partial(_plain_senders, runner)
        out.append((f"shadowmesh-{mode}", runner, True))
    return out


@contextmanager
def _plain_senders(
    runner: Runner, lab: Lab, topo: topology.Topology, tmp: Path
) -> Iterator[list[int]]:
    """``runner`` with the LAN hosts sending plain 1500-byte frames (TSO/GSO off)."""
    topology.plain_senders(topo, True)
    try:
        with runner(lab, topo, tmp) as pids:
            yield pids
    finally:
        topology.plain_senders(topo, False)


@contextmanager
def _kernel_gro(
    runner: Runner, lab: Lab, topo: topology.Topology, tmp: Path
) -> Iterator[list[int]]:
    """``runner`` with Linux's GRO on the bridges' LAN ports (NAPI on the veths), as a
    physical NIC has by default: plain frames reach the TAP already merged."""
    for ns in (topo.client, topo.exit):
        ns.run(["ethtool", "-K", "lan0", "gro", "on"])
    try:
        with runner(lab, topo, tmp) as pids:
            yield pids
    finally:
        for ns in (topo.client, topo.exit):
            ns.run(["ethtool", "-K", "lan0", "gro", "off"])


def _profile_dir(args: argparse.Namespace, mode: str) -> Path | None:
    return None if args.profile is None else args.profile / mode


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summarize(results: dict[str, Any]) -> None:
    """Ratios against the better OpenVPN transport for each figure, and added RTTs."""
    base = results["direct"]
    for name, fig in list(results.items()):
        if isinstance(fig, dict) and "rtt_ms" in fig and name != "direct":
            fig["added_rtt_ms"] = round(fig["rtt_ms"] - base["rtt_ms"], 4)
            fig["added_rtt_hot_ms"] = round(fig["rtt_hot_ms"] - base["rtt_hot_ms"], 4)
    ovs = [results[n] for n in ("openvpn-tcp", "openvpn-udp") if n in results]

    def best_ov(key: str) -> float | None:
        return max((f[key] for f in ovs if key in f), default=None)

    plain = results.get("shadowmesh-plain", {})
    offload = results.get("shadowmesh-offload", {})
    gro = results.get("shadowmesh-gro", {})
    results["openvpn_best"] = {
        "tcp1_gbps": best_ov("tcp1_gbps"),
        "tcp4_gbps": best_ov("tcp4_gbps"),
        "udp_gbps": best_ov("udp_gbps"),
        "udp_senders_gbps": best_ov("udp_senders_gbps"),
        "added_rtt_ms": min((f["added_rtt_ms"] for f in ovs), default=None),
    }
    best = results["openvpn_best"]
    same = [
        results[n]
        for n in ("openvpn-tcp-plain-senders", "openvpn-udp-plain-senders")
        if n in results
    ]
    results["openvpn_best_plain_senders"] = {
        key: max((f[key] for f in same), default=None) for key in ("tcp1_gbps", "tcp4_gbps")
    }
    same_best = results["openvpn_best_plain_senders"]
    merged = [
        results[n] for n in ("openvpn-tcp-kernel-gro", "openvpn-udp-kernel-gro") if n in results
    ]
    results["openvpn_best_kernel_gro"] = {
        key: max((f[key] for f in merged), default=None) for key in ("tcp1_gbps", "tcp4_gbps")
    }
    kgro = results.get("shadowmesh-kernel-gro", {})
    kgro_best = results["openvpn_best_kernel_gro"]
    results["ratio_throughput_plain_kernel_gro"] = _ratio(
        kgro.get("tcp1_gbps"), kgro_best["tcp1_gbps"]
    )
    results["ratio_throughput_plain_kernel_gro_4"] = _ratio(
        kgro.get("tcp4_gbps"), kgro_best["tcp4_gbps"]
    )
    # Plain frames on the wire: the gro run against OpenVPN carrying the same traffic (LAN
    # hosts without TSO); the _tso figures compare with OpenVPN's runs with the hosts' TSO
    # on, which leave the sending host more CPU.
    results["ratio_throughput_plain"] = _ratio(gro.get("tcp1_gbps"), same_best["tcp1_gbps"])
    results["ratio_throughput_plain_4"] = _ratio(gro.get("tcp4_gbps"), same_best["tcp4_gbps"])
    results["ratio_throughput_plain_tso"] = _ratio(gro.get("tcp1_gbps"), best["tcp1_gbps"])
    results["ratio_throughput_plain_tso_4"] = _ratio(gro.get("tcp4_gbps"), best["tcp4_gbps"])
    results["ratio_throughput_plain_nogro"] = _ratio(plain.get("tcp1_gbps"), best["tcp1_gbps"])
    results["ratio_throughput_plain_nogro_4"] = _ratio(plain.get("tcp4_gbps"), best["tcp4_gbps"])
    results["ratio_throughput_offload"] = _ratio(offload.get("tcp1_gbps"), best["tcp1_gbps"])
    results["ratio_throughput_offload_4"] = _ratio(offload.get("tcp4_gbps"), best["tcp4_gbps"])
    sm_udp = max(f.get("udp_gbps", 0.0) for f in (plain, offload, gro)) or None
    results["ratio_udp"] = _ratio(sm_udp, best["udp_gbps"])
    # What this harness can show at most: the same load with no tunnel against OpenVPN, and
    # how much of that path the tunnel kept. A ceiling under a goal means the goal cannot
    # be shown on this machine, whatever the tunnel does.
    results["udp_ceiling_gbps"] = base.get("udp_gbps")
    results["ratio_udp_ceiling"] = _ratio(base.get("udp_gbps"), best["udp_gbps"])
    results["udp_share_of_direct"] = _ratio(sm_udp, base.get("udp_gbps"))
    # The same with the load split over several senders (--udp-senders): the harness's
    # ceiling rises with them, and each tunnel's own limit shows.
    sm_senders = max(f.get("udp_senders_gbps", 0.0) for f in (plain, offload, gro)) or None
    results["ratio_udp_senders"] = _ratio(sm_senders, best["udp_senders_gbps"])
    results["ratio_udp_senders_ceiling"] = _ratio(
        base.get("udp_senders_gbps"), best["udp_senders_gbps"]
    )
    plain_direct = results.get("direct-plain-senders", {})
    results["ratio_throughput_plain_ceiling"] = _ratio(
        plain_direct.get("tcp1_gbps"), same_best["tcp1_gbps"]
    )
    results["plain_share_of_direct"] = _ratio(gro.get("tcp1_gbps"), plain_direct.get("tcp1_gbps"))
    results["ratio_udp_nogro"] = _ratio(plain.get("udp_gbps"), best["udp_gbps"])
    # network.gro: software (where the merging port cannot be built): the gro run's traffic
    # against the same OpenVPN runs, and the offload run's traffic against the same as offload.
    gro_software = results.get("shadowmesh-gro-software", {})
    offload_software = results.get("shadowmesh-offload-software", {})
    _variant_ratios(
        results,
        ("plain_gro_software", gro_software, same_best),
        ("offload_software", offload_software, best),
    )
    results["ratio_udp_gro_software"] = _ratio(gro_software.get("udp_gbps"), best["udp_gbps"])
    # network.rps: true on both nodes: the gro and offload runs' traffic again.
    gro_rps = results.get("shadowmesh-gro-rps", {})
    offload_rps = results.get("shadowmesh-offload-rps", {})
    _variant_ratios(results, ("plain_rps", gro_rps, same_best), ("offload_rps", offload_rps, best))
    rps_udp = max(f.get("udp_gbps", 0.0) for f in (gro_rps, offload_rps)) or None
    results["ratio_udp_rps"] = _ratio(rps_udp, best["udp_gbps"])
    rps_senders = max(f.get("udp_senders_gbps", 0.0) for f in (gro_rps, offload_rps)) or None
    results["ratio_udp_senders_rps"] = _ratio(rps_senders, best["udp_senders_gbps"])
    floor = results.get("python-floor")
    if floor is not None:
        results["python_floor"] = {
            "added_rtt_ms": floor.get("added_rtt_ms"),
            "added_rtt_hot_ms": floor.get("added_rtt_hot_ms"),
            "ratio_throughput": _ratio(floor.get("tcp1_gbps"), best["tcp1_gbps"]),
            "ratio_throughput_4": _ratio(floor.get("tcp4_gbps"), best["tcp4_gbps"]),
            "ratio_udp": _ratio(floor.get("udp_gbps"), best["udp_gbps"]),
        }
    results["added_rtt_ms"] = {
        "shadowmesh": offload.get("added_rtt_ms"),
        "shadowmesh_gro": gro.get("added_rtt_ms"),
        "shadowmesh_plain": plain.get("added_rtt_ms"),
        "shadowmesh_gro_software": gro_software.get("added_rtt_ms"),
        "shadowmesh_offload_software": offload_software.get("added_rtt_ms"),
        "shadowmesh_gro_rps": gro_rps.get("added_rtt_ms"),
        "shadowmesh_offload_rps": offload_rps.get("added_rtt_ms"),
        "openvpn": best["added_rtt_ms"],
    }


def _variant_ratios(
    results: dict[str, Any], *runs: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    """TCP ratios of variants of the default config's runs: each run is (name, its figures,
    the OpenVPN figures it compares with: the same traffic's for the gro run's, the best
    for the offload run's)."""
    for name, figures, against in runs:
        results[f"ratio_throughput_{name}"] = _ratio(figures.get("tcp1_gbps"), against["tcp1_gbps"])
        results[f"ratio_throughput_{name}_4"] = _ratio(
            figures.get("tcp4_gbps"), against["tcp4_gbps"]
        )


def budgeted(args: argparse.Namespace) -> dict[str, Any]:
    """The aggregate with each exit process held to ``--aggregate-exit-core`` of a core:
    the fewest and most clients with the workers, the most with one process."""
    few, most = min(args.aggregate_clients), max(args.aggregate_clients)
    gbps: dict[str, float] = {}
    cores: dict[str, dict[str, float]] = {}
    runs = ((few, args.aggregate_workers), (most, args.aggregate_workers), (most, 1))
    for clients, workers in runs:
        key = f"{clients}" if workers > 1 else f"{clients}_one_process"
        with tempfile.TemporaryDirectory(prefix="bench-l2-agb-") as tmp, Lab() as lab:
            got = l2_aggregate.aggregate(
                lab, Path(tmp), clients, mode=args.aggregate_mode, seconds=args.seconds,
                workers=workers, exit_core=args.aggregate_exit_core,
            )  # fmt: skip
        gbps[key] = got.pop("gbps")
        cores[key] = got
        log(f"{'aggregate':>18}: {clients} client(s), {workers} process(es) of "
            f"{args.aggregate_exit_core} core each: {gbps[key]} Gbit/s, {got}")  # fmt: skip
    out: dict[str, Any] = {
        "exit_aggregate_gbps_budget": gbps,
        "exit_aggregate_cores_budget": cores,
        "exit_aggregate_exit_core": args.aggregate_exit_core,
    }
    if gbps[str(few)] > 0:
        out["ratio_aggregate_budget"] = round(gbps[str(most)] / gbps[str(few)], 2)
    if gbps[f"{most}_one_process"] > 0:
        out["ratio_workers_budget"] = round(gbps[str(most)] / gbps[f"{most}_one_process"], 2)
    return out


def _counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per iperf3 TCP run")
    parser.add_argument("--udp-seconds", type=float, default=2.0, help="per UDP trial; 0: none")
    parser.add_argument(
        "--udp-senders", type=int, default=1, choices=range(1, 9), metavar="N",
        help="also search the UDP rate with the load split over N iperf3 senders at once "
        "(udp_senders_gbps, ratio_udp_senders; 1: not)",
    )  # fmt: skip
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=list(MODES),
        help=f"ShadowMesh modes to run (comma-separated, of {','.join(MODES)})",
    )  # fmt: skip
    parser.add_argument("--aggregate-mode", choices=["offload", "plain"], default="plain")
    parser.add_argument(
        "--aggregate-clients", type=_counts, default=[1, 4],
        help="client counts for exit_aggregate_gbps (comma-separated; '' for none)",
    )  # fmt: skip
    parser.add_argument(
        "--aggregate-workers", type=int, default=2,
        help="also run the largest client count with an exit of this many worker processes "
        "(network.workers; 1: not)",
    )  # fmt: skip
    parser.add_argument(
        "--aggregate-exit-core", type=float, default=0.3,
        help="the aggregate again with each exit process held to this fraction of a core "
        "(an exit with cores of its own; 0: not)",
    )  # fmt: skip
    parser.add_argument("--profile", type=Path, help="write py-spy profiles of both nodes here")
    parser.add_argument("--skip-openvpn", action="store_true")
    parser.add_argument(
        "--floor", action="store_true",
        help="also run bench/l2_floor.py: the least a Python tunnel does per frame",
    )  # fmt: skip
    args = parser.parse_args()
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
    results: dict[str, Any] = {"seconds": args.seconds, "mtu": 1500}
    if args.udp_senders > 1:
        results["udp_senders"] = args.udp_senders
    with tempfile.TemporaryDirectory(prefix="bench-l2-") as tmp, Lab() as lab:
        topo = topology.build(lab, 1500)
        servers = [
            lab.spawn(topo.lan_b, ["iperf3", "-s", "-p", str(IPERF_PORT + i)])
            for i in range(args.udp_senders)
        ]
        time.sleep(0.3)
        for name, runner, udp in contenders(args):
            with runner(lab, topo, Path(tmp)) as pids:
                wait_up(topo, name)
                udp_s = args.udp_seconds if udp else None
                # Under py-spy the pids are the profilers', not the nodes'.
                cpu_pids = pids if args.profile is None else None
                results[name] = measure(
                    name, topo, args.seconds, udp_s, cpu_pids, udp_senders=args.udp_senders
                )
        for server in servers:
            lab.stop(server)
    aggregate: dict[str, float] = {}
    cores: dict[str, dict[str, float]] = {}
    for clients in args.aggregate_clients:
        with tempfile.TemporaryDirectory(prefix="bench-l2-agg-") as tmp, Lab() as lab:
            got = l2_aggregate.aggregate(
                lab, Path(tmp), clients, mode=args.aggregate_mode, seconds=args.seconds
            )
        aggregate[str(clients)] = got.pop("gbps")
        cores[str(clients)] = got
        log(f"{'aggregate':>18}: {clients} client(s) {aggregate[str(clients)]} Gbit/s, {got}")
    results["exit_aggregate_gbps"] = aggregate
    results["exit_aggregate_cores"] = cores
    results["exit_aggregate_mode"] = args.aggregate_mode
    if args.aggregate_workers > 1 and args.aggregate_clients:
        # The same run with the exit's work in worker processes (exitnode.workers).
        clients = max(args.aggregate_clients)
        with tempfile.TemporaryDirectory(prefix="bench-l2-agw-") as tmp, Lab() as lab:
            got = l2_aggregate.aggregate(
                lab, Path(tmp), clients, mode=args.aggregate_mode, seconds=args.seconds,
                workers=args.aggregate_workers,
            )  # fmt: skip
        results["exit_aggregate_workers"] = args.aggregate_workers
        results["exit_aggregate_gbps_workers"] = {str(clients): got.pop("gbps")}
        results["exit_aggregate_cores_workers"] = {str(clients): got}
        log(f"{'aggregate':>18}: {clients} client(s), {args.aggregate_workers} workers "
            f"{results['exit_aggregate_gbps_workers'][str(clients)]} Gbit/s, {got}")  # fmt: skip
    if args.aggregate_exit_core > 0 and args.aggregate_workers > 1 and args.aggregate_clients:
        results.update(budgeted(args))
    if args.profile is not None:
        results["profile"] = {}
        for mode in args.modes:
            for role in ("client", "exit"):
                path = args.profile / mode / f"{role}.collapsed"
                if path.exists():
                    top = l2_shadowmesh.summarize(path)
                    results["profile"][f"{mode}-{role}"] = top
                    log(f"profile {mode} {role}: " + ", ".join(f"{n} {p}%" for n, p in top))
    summarize(results)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.SubprocessError, netns.NetnsError) as exc:
        log(f"bench/l2: {exc}")
        sys.exit(1)
