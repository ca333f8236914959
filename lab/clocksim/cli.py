"""``shadowmesh simulate KIND --link PATH [model options]`` (or ``python -m lab.clocksim``):
run one simulated clock on a pseudo-terminal."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from lab.clocksim.devices import GpsdoSim, Prs10Sim, ScpiSim, Simulator
from lab.clocksim.model import ClockModel, Window

KINDS = {"gpsdo": GpsdoSim, "scpi": ScpiSim, "prs10": Prs10Sim}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=sorted(KINDS), help="device to simulate")
    p.add_argument("--link", required=True, help="symlink to create for the pty slave")
    p.add_argument("--offset", type=float, default=0.0, help="true offset, seconds")
    p.add_argument("--drift", type=float, default=0.0, help="frequency error, s/s")
    p.add_argument("--jitter", type=float, default=0.0, help="per-message jitter, s (1 sigma)")
    p.add_argument("--lock-after", type=float, default=0.0, help="seconds without fix/lock")
    p.add_argument(
        "--outage", action="append", default=[], metavar="START:END", help="silent window"
    )
    p.add_argument(
        "--lie", action="append", default=[], metavar="START:END:AMOUNT", help="lie window"
    )
    p.add_argument("--delay", type=float, default=0.0, help="NMEA delay after the second")
    p.add_argument("--duration", type=float, default=0.0, help="stop after seconds (0: never)")
    p.add_argument("--seed", type=int, default=None)


def build(ns: argparse.Namespace) -> Simulator:
    model = ClockModel(
        offset=ns.offset,
        drift=ns.drift,
        jitter=ns.jitter,
        outages=tuple(Window.parse(w) for w in ns.outage),
        lies=tuple(Window.parse(w) for w in ns.lie),
        lock_after=ns.lock_after,
        seed=ns.seed,
    )
    if ns.kind == "gpsdo":
        return GpsdoSim(ns.link, model, delay=ns.delay)
    sim: Simulator = KINDS[ns.kind](ns.link, model)
    return sim


def run(ns: argparse.Namespace) -> int:
    try:
        sim = build(ns)
    except (ValueError, OSError) as exc:
        print(f"clocksim: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    sim.start()
    print(f"{ns.kind} simulator on {sim.link} -> {sim.pty.slave_name}", flush=True)
    try:
        done.wait(ns.duration if ns.duration > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.clocksim", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))
