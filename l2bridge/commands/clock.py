"""``shadowmesh clock status``.

``status`` starts the configured sources (from ``--config`` or ``--source KIND:DEVICE``),
listens for ``--duration`` seconds, then prints each source's state, offset, uncertainty
and whether it was selected or outvoted, and the quorum. Exit status 0 when the quorum
was met, 1 when not. The simulators are ``shadowmesh simulate`` (lab.clocksim).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from l2bridge.node.config import load_config
from timing.clock import ClockStatus
from timing.config import TimeSettings, build, settings_from
from timing.errors import ConfigError


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action")
    st = sub.add_parser("status", help="sources, offsets, uncertainty and quorum")
    st.add_argument("--config", type=Path, help="node configuration (YAML)")
    st.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="KIND:DEVICE",
        help="a source instead of the configuration (gpsdo:/dev/ttyUSB1, rubidium:..., system)",
    )
    st.add_argument("--quorum", type=int, help="override consensus_quorum")
    st.add_argument("--fallback", choices=("holdover", "system", "refuse"))
    st.add_argument("--duration", type=float, default=5.0, help="seconds to listen")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=_status)


def _settings(ns: argparse.Namespace) -> TimeSettings:
    if ns.source:
        raw: list[object] = []
        for item in ns.source:
            kind, _, device = item.partition(":")
            raw.append("system" if kind == "system" else {kind: device})
        section: dict[str, object] = {"enabled": True, "sources": raw}
    elif ns.config is not None:
        atomic = load_config(ns.config).atomic_time
        section = {f.name: getattr(atomic, f.name) for f in dataclasses.fields(atomic)}
        section["sources"] = list(atomic.sources)
    else:
        raise ConfigError("sources", "give --config or at least one --source")
    if ns.quorum is not None:
        section["consensus_quorum"] = ns.quorum
    if ns.fallback is not None:
        section["fallback"] = ns.fallback
    return settings_from(section)


def _status(ns: argparse.Namespace) -> int:
    try:
        settings = _settings(ns)
    except Exception as exc:  # config errors of either package; show the message only
        print(f"shadowmesh clock: {exc}", file=sys.stderr)
        return 2
    for warning in settings.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    clock, sources = build(settings)
    for s in sources:
        s.start()
    try:
        time.sleep(max(0.0, ns.duration))
        status = clock.status()
    finally:
        for s in sources:
            s.stop()
    print(json.dumps(dataclasses.asdict(status)) if ns.json else format_status(status))
    return 0 if status.quorum_met else 1


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:+.3f}"


def format_status(st: ClockStatus) -> str:
    lines = [
        f"mode {st.mode}   offset {_ms(st.offset)} ms   uncertainty {_ms(st.uncertainty)} ms",
        f"quorum {st.quorum}: {'met' if st.quorum_met else 'NOT met'} "
        f"({st.agreeing} agreeing of {st.candidates} candidates; {st.message}); "
        f"fallback {st.fallback}",
        "",
        f"{'source':<28} {'state':<13} {'lock':<5} {'offset ms':>11} {'+/- ms':>9} "
        f"{'age s':>6} {'samples':>7}  verdict",
    ]
    for s in st.sources:
        verdict = "selected" if s.selected else "OUTVOTED" if s.falseticker else "-"
        age = "-" if s.age is None else f"{s.age:.1f}"
        rejected = sum(n for _r, n in s.rejected)
        extra = f"  rejected {rejected}" if rejected else ""
        extra += f"  ({s.detail})" if s.detail else ""
        lines.append(
            f"{s.name:<28} {s.state:<13} {'yes' if s.locked else 'no':<5} "
            f"{_ms(s.offset):>11} {_ms(s.uncertainty):>9} {age:>6} {s.samples:>7}  "
            f"{verdict}{extra}"
        )
    return "\n".join(lines)
