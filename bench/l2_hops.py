"""Where an idle ping's time goes, hop by hop: tcpdump timestamps on each interface.

Run as root: ``python bench/l2_hops.py [--interval 0.2] [--count 20] [--skip-openvpn]
[--floor] [--floor-threads]``.

The bench/l2.py topology with ShadowMesh (plain TAPs) and then OpenVPN (TAP over UDP) in
turn; tcpdump on the client's TAP and WAN and on the exit's WAN and TAP while lan-a pings
lan-b ``--count`` times, ``--interval`` seconds apart (0.2: every process has slept before
each ping; 0.002: kept warm). For each ping, the time between the request or reply showing
on one interface and on the next gives the hops:

- client TAP -> WAN: the client reads the frame, seals it and sends the record (cold);
- exit WAN -> TAP: the exit receives, opens and switches it into its TAP (cold);
- exit TAP -> TAP: lan-b's kernel answers (not the tunnel);
- exit TAP -> WAN: the exit reads the reply and sends it (just awake);
- client WAN -> TAP: the client receives the reply and writes it to its TAP.

``--floor`` measures ``bench/l2_floor.py`` too: the least a Python tunnel does per frame;
``--floor-threads`` the same floor with a blocked thread per direction and no event loop.

Prints the median (min, max) of each hop in microseconds, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import l2, l2_floor, l2_openvpn, l2_shadowmesh  # noqa: E402
from hardware.netns import Lab, Namespace  # noqa: E402
from lab import provision, topology  # noqa: E402

HOPS = (
    "client TAP -> WAN",
    "WAN client -> exit",
    "exit WAN -> TAP",
    "exit TAP -> TAP (lan-b answers)",
    "exit TAP -> WAN",
    "WAN exit -> client",
    "client WAN -> TAP",
)
# The hops a tunnel's processes do (the WAN transits and lan-b's answer are not theirs).
TUNNEL_HOPS = ("client TAP -> WAN", "exit WAN -> TAP", "exit TAP -> WAN", "client WAN -> TAP")
SETTLE_S = 1.0

Runner = Callable[[Lab, topology.Topology, Path], AbstractContextManager[list[int]]]


def _capture(
    lab: Lab, points: list[tuple[Namespace, str, list[str]]], tmp: Path, ping: Callable[[], None]
) -> list[list[float]]:
    """Timestamps of the packets matching each point's filter while ``ping`` runs."""
    running = []
    for i, (ns, dev, match) in enumerate(points):
        path = tmp / f"cap{i}.txt"
        out = path.open("w")
        cmd = ["tcpdump", "-i", dev, "-n", "-tt", "-l", "--immediate-mode", *match]
        proc = lab.spawn(ns, cmd, stdout=out.fileno())
        running.append((proc, out, path))
    time.sleep(SETTLE_S)
    ping()
    time.sleep(SETTLE_S / 2)
    stamps = []
    for proc, out, path in running:
        lab.stop(proc, signal.SIGINT)
        out.close()
        stamps.append([float(line.split()[0]) for line in path.read_text().splitlines() if line])
    return stamps


def _hops(
    tap_c: list[float], wan_c: list[float], wan_x: list[float], tap_x: list[float]
) -> dict[str, list[float]]:
    """Per ping, the hop durations in µs (pings whose packets cannot all be matched skipped)."""

    def first_after(xs: list[float], t: float) -> float | None:
        return next((x for x in xs if x >= t), None)

    def next_after(xs: list[float], t: float) -> float | None:
        i = xs.index(t) + 1
        return xs[i] if i < len(xs) else None

    out: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for i in range(0, len(tap_c) - 1, 2):  # request, reply on the client's TAP
        t1, t8 = tap_c[i], tap_c[i + 1]
        t2 = first_after(wan_c, t1)
        t3 = first_after(wan_x, t2) if t2 is not None else None
        t4 = first_after(tap_x, t3) if t3 is not None else None
        # The reply is the next packet on the exit's TAP after the request.
        t5 = next_after(tap_x, t4) if t4 is not None else None
        t6 = first_after(wan_x, t5) if t5 is not None else None
        t7 = first_after(wan_c, t6) if t6 is not None else None
        times = [t1, t2, t3, t4, t5, t6, t7, t8]
        if any(t is None for t in times) or t7 is None or t7 > t8:
            continue
        for hop, a, b in zip(HOPS, times, times[1:], strict=False):
            assert a is not None and b is not None
            out[hop].append((b - a) * 1e6)
    return out


def measure(
    name: str, runner: Runner, taps: tuple[str, str], wan: list[str], args: argparse.Namespace
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-hops-") as t, Lab() as lab:
        tmp = Path(t)
        topo = topology.build(lab, 1500)
        with runner(lab, topo, tmp):
            l2.wait_up(topo, name)
            topology.ping(topo.lan_a, topology.HOST_B, count=3, interval=0.05)
            icmp = ["icmp"]
            points = [
                (topo.client, taps[0], icmp),
                (topo.client, "wan0", wan),
                (topo.exit, "wan0", wan),
                (topo.exit, taps[1], icmp),
            ]

            def ping() -> None:
                cmd = [
                    "ping",
                    "-c",
                    str(args.count),
                    "-i",
                    str(args.interval),
                    "-q",
                    topology.HOST_B,
                ]
                topo.lan_a.run(cmd, timeout=args.count * (args.interval + 1) + 10)

            hops = _hops(*_capture(lab, points, tmp, ping))
    print(f"{name} (ping every {args.interval} s):", file=sys.stderr)
    medians = {}
    for hop, values in hops.items():
        if values:
            medians[hop] = round(statistics.median(values), 1)
            print(
                f"  {hop:>32}: median {medians[hop]:7.0f} us (min {min(values):.0f}, "
                f"max {max(values):.0f}, n={len(values)})",
                file=sys.stderr,
            )
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--skip-openvpn", action="store_true")
    parser.add_argument(
        "--floor", action="store_true", help="also the least a Python tunnel does (l2_floor)"
    )
    parser.add_argument(
        "--floor-threads",
        action="store_true",
        help="also the floor with a blocked thread per direction instead of an event loop",
    )
    args = parser.parse_args()
    # Records are the WAN packets with data (PSH); bare ACKs are not hops.
    sm_wan = ["tcp", "port", str(provision.EXIT_PORT), "and", "tcp[tcpflags] & tcp-push != 0"]
    results = {
        "interval_s": args.interval,
        "shadowmesh": measure(
            "shadowmesh-plain",
            partial(l2_shadowmesh.tunnel, mode="plain"),
            ("smc0", "smx0"),
            sm_wan,
            args,
        ),
    }
    if not args.skip_openvpn:
        results["openvpn"] = measure(
            "openvpn-udp",
            partial(l2_openvpn.tunnel, proto="udp"),
            (l2_openvpn.TAP, l2_openvpn.TAP),
            ["udp", "port", str(l2_openvpn.PORT)],
            args,
        )
    if args.floor:
        floor_wan = ["tcp", "port", str(l2_floor.PORT), "and", "tcp[tcpflags] & tcp-push != 0"]
        results["python_floor"] = measure(
            "python-floor", l2_floor.tunnel, (l2_floor.TAP, l2_floor.TAP), floor_wan, args
        )
    if args.floor_threads:
        floor_wan = ["tcp", "port", str(l2_floor.PORT), "and", "tcp[tcpflags] & tcp-push != 0"]
        results["python_floor_threads"] = measure(
            "python-floor-threads", partial(l2_floor.tunnel, io="threads"),
            (l2_floor.TAP, l2_floor.TAP), floor_wan, args,
        )  # fmt: skip
    for medians in results.values():
        if isinstance(medians, dict):
            medians["tunnel_hops_us"] = round(sum(medians.get(h, 0.0) for h in TUNNEL_HOPS), 1)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
