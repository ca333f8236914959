"""Layer-2 tunnel benchmark: direct veth vs ShadowMesh vs OpenVPN 2.6 TAP over TCP.

Run as root: ``python bench/l2.py [--seconds 5] [--mode offload|plain|jumbo] [--profile DIR]``.

One topology (lab.topology: lan-a, client, exit, lan-b). Each contender joins the
client's and the exit's bridges in turn, and the same measurements run host to host
(10.77.0.1 -> 10.77.0.2): ping RTT (idle) and iperf3 TCP with 1 and 4 streams.

- direct:     a plain veth between the two bridges (the floor of the path);
- openvpn:    OpenVPN 2.6 p2p, ``--dev tap``, TCP, TLS with pinned self-signed
              certificates, data cipher AES-256-GCM;
- shadowmesh: ``shadowmesh exit`` + ``shadowmesh client`` over their WebSocket on TCP.

Prints each figure as it goes, then exactly one line of JSON with every figure, the
ratios ShadowMesh / OpenVPN and the RTT each tunnel adds over the direct path.
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import l2_openvpn, l2_shadowmesh  # noqa: E402
from hardware import netns  # noqa: E402
from hardware.netns import Lab  # noqa: E402
from lab import topology  # noqa: E402

PING_COUNT = 50
PING_INTERVAL_S = 0.02
IPERF_PORT = 5201
UP_TIMEOUT_S = 30.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ping_rtt_ms(topo: topology.Topology) -> float:
    """Mean RTT in ms of an idle path (after a warm-up that resolves ARP)."""
    topology.ping(topo.lan_a, topology.HOST_B, count=3, interval=0.05)
    out = topo.lan_a.run(
        ["ping", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL_S), "-q", topology.HOST_B],
        timeout=PING_COUNT * 1.0 + 10,
    )
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not match:
        raise RuntimeError(f"ping: no rtt in {out!r}")
    return float(match.group(1))


def iperf_gbps(topo: topology.Topology, streams: int, seconds: float) -> float:
    out = topo.lan_a.run(
        [
            "iperf3",
            "-c",
            topology.HOST_B,
            "-p",
            str(IPERF_PORT),
            "-J",
            "-t",
            str(seconds),
            "-P",
            str(streams),
            "-O",
            "1",
        ],
        timeout=seconds + 30,
    )
    result = json.loads(out)
    return round(result["end"]["sum_received"]["bits_per_second"] / 1e9, 3)


def measure(name: str, topo: topology.Topology, seconds: float) -> dict[str, float]:
    figures = {
        "rtt_ms": round(ping_rtt_ms(topo), 4),
        "tcp1_gbps": iperf_gbps(topo, 1, seconds),
        "tcp4_gbps": iperf_gbps(topo, 4, seconds),
    }
    log(f"{name:>10}: {figures}")
    return figures


def wait_up(topo: topology.Topology, what: str) -> None:
    if not netns.wait_for(
        lambda: topology.ping(topo.lan_a, topology.HOST_B, count=1) == 1, UP_TIMEOUT_S, 0.2
    ):
        raise RuntimeError(f"{what}: lan-a cannot reach lan-b")


@contextmanager
def direct(lab: Lab, topo: topology.Topology) -> Iterator[None]:
    lab.veth(topo.client, "dir0", topo.exit, "dir0", mtu=topo.mtu)
    netns.attach(topo.client, "dir0", topology.BRIDGE)
    netns.attach(topo.exit, "dir0", topology.BRIDGE)
    try:
        yield
    finally:
        # Deleting one end removes the pair and flushes what the bridges learned on it.
        topo.client.ip("link", "del", "dir0", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--mode", choices=["offload", "plain", "jumbo"], default="offload")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of both nodes here")
    parser.add_argument("--skip-openvpn", action="store_true")
    args = parser.parse_args()
    mtu = 9000 if args.mode == "jumbo" else 1500
    results: dict[str, object] = {"mode": args.mode, "seconds": args.seconds, "mtu": mtu}
    contenders: list[tuple[str, Callable[..., object]]] = [("direct", direct)]
    if not args.skip_openvpn:
        contenders.append(("openvpn", l2_openvpn.tunnel))
    contenders.append(("shadowmesh", l2_shadowmesh.tunnel))
    with tempfile.TemporaryDirectory(prefix="bench-l2-") as tmp, Lab() as lab:
        topo = topology.build(lab, mtu)
        iperf = lab.spawn(topo.lan_b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        time.sleep(0.3)
        for name, runner in contenders:
            kwargs: dict[str, object] = {}
            if name == "shadowmesh":
                kwargs = {"mode": args.mode, "profile": args.profile}
            with runner(lab, topo, Path(tmp), **kwargs) if name != "direct" else runner(lab, topo):
                wait_up(topo, name)
                results[name] = measure(name, topo, args.seconds)
        lab.stop(iperf)
    if args.profile is not None:
        results["profile"] = {}
        for role in ("client", "exit"):
            path = args.profile / f"{role}.collapsed"
            if path.exists():
                top = l2_shadowmesh.summarize(path)
                results["profile"][role] = top  # type: ignore[index]
                log(f"profile {role}: " + ", ".join(f"{n} {p}%" for n, p in top))
    base = results["direct"]
    assert isinstance(base, dict)
    for name in ("openvpn", "shadowmesh"):
        fig = results.get(name)
        if isinstance(fig, dict):
            fig["added_rtt_ms"] = round(fig["rtt_ms"] - base["rtt_ms"], 4)
    sm, ov = results.get("shadowmesh"), results.get("openvpn")
    if isinstance(sm, dict) and isinstance(ov, dict):
        results["ratio_throughput"] = round(sm["tcp1_gbps"] / ov["tcp1_gbps"], 2)
        results["ratio_throughput_4"] = round(sm["tcp4_gbps"] / ov["tcp4_gbps"], 2)
        results["added_rtt_ms"] = {
            "shadowmesh": sm["added_rtt_ms"],
            "openvpn": ov["added_rtt_ms"],
        }
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.SubprocessError, netns.NetnsError) as exc:
        log(f"bench/l2: {exc}")
        sys.exit(1)
