"""``shadowmesh status``: read a running client's or exit's status listener.

    shadowmesh status --config /etc/shadowmesh/exit.yaml   # port and credential from it
    shadowmesh status --url http://127.0.0.1:9470          # or name the listener

Prints counts as integers, ages and sizes readably, the health of each component, the
connected devices (an exit, with the admin credential) and the node's last error.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bridge.errors import L2BridgeError
from l2bridge.node.config import load_config
from l2bridge.node.status import read_token

DEFAULT_URL = "http://127.0.0.1:9470"  # status.listen's default
# Where ``shadowmesh init`` puts the configs: used when neither --config nor --url is given.
DEFAULT_CONFIGS = (Path("/etc/shadowmesh/exit.yaml"), Path("/etc/shadowmesh/client.yaml"))
MAX_ANSWER_BYTES = 1 << 22


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    token: bytes | None


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path,
        help="the node's config, for its listener and credential (default: "
        "/etc/shadowmesh/exit.yaml or client.yaml, if there)",
    )  # fmt: skip
    parser.add_argument("--url", help=f"the status listener (default {DEFAULT_URL})")
    parser.add_argument(
        "--token-file", type=Path, help="admin credential (status.admin_token_file)"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")


def target(ns: argparse.Namespace) -> Target:
    """Where the node listens and its credential, from --url/--token-file or --config."""
    url, token_file = ns.url, ns.token_file
    if ns.config is None and url is None:
        ns.config = next((p for p in DEFAULT_CONFIGS if p.exists()), None)
    if ns.config is not None:
        cfg = load_config(ns.config)
        host, port = cfg.status.listen
        if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
        url = url or f"http://{f'[{host}]' if ':' in host else host}:{port}"
        token_file = token_file or cfg.status.admin_token_file
    return Target(url or DEFAULT_URL, read_token(token_file) if token_file else None)


def request(
    where: Target, path: str, *, method: str = "GET", body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, Any]:  # fmt: skip
    """(HTTP status, JSON or text answer). Raises OSError when the node cannot be reached."""
    req = urllib.request.Request(where.url.rstrip("/") + path, data=body, method=method)  # noqa: S310
    if where.token is not None:
        req.add_header("Authorization", "Bearer " + where.token.decode("ascii"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:  # noqa: S310
            code, raw, ctype = reply.status, reply.read(MAX_ANSWER_BYTES), reply.headers
    except urllib.error.HTTPError as exc:
        with exc:
            code, raw, ctype = exc.code, exc.read(MAX_ANSWER_BYTES), exc.headers
    if "json" in (ctype.get("Content-Type") or ""):
        try:
            return code, json.loads(raw)
        except ValueError:
            pass
    return code, raw.decode("utf-8", "replace")


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """The node's status document; raises OSError or ValueError with a plain message."""
    code, doc = request(Target(url, None), "/status", timeout=timeout)
    if code != 200 or not isinstance(doc, dict) or "role" not in doc:
        raise ValueError("the endpoint did not answer with a ShadowMesh status document")
    return doc


def age(seconds: float | None) -> str:
    """``42s``, ``5m07s``, ``3h05m``, ``2d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _number(value: float | None) -> str:
    if value is None:
        return "unknown"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def render(doc: dict[str, Any], health: dict[str, Any] | None = None,
           peers: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    info = doc.get("info", {})
    lines = [f"role        {doc['role']}   up {age(doc.get('uptime_s', 0))}"]
    for key, value in sorted(info.items()):
        if key != "last_error":
            lines.append(f"{key:<25} {value}")
    if health is not None:
        state = health.get("status", "?")
        parts = ", ".join(
            f"{name} {c['state']}" + (f" ({c['detail']})" if c.get("detail") else "")
            for name, c in health.get("components", {}).items()
        )
        lines.append(f"health      {state}: {parts}")
    frames, octets = doc.get("frames", {}), doc.get("bytes", {})
    lines.append(
        f"frames      in {int(frames.get('in', 0))}  out {int(frames.get('out', 0))}   "
        f"bytes in {size(octets.get('in', 0))}  out {size(octets.get('out', 0))}"
    )
    lines.append(f"rekeys      {int(doc.get('rekeys', 0))}")
    drops = doc.get("drops", {})
    lines.append(
        "drops       " + (", ".join(f"{k}={int(v)}" for k, v in drops.items()) if drops else "none")
    )
    connections = doc.get("connections", {})
    if connections:  # an exit's tunnel port: what became of the connections to it
        lines.append("connections " + ", ".join(f"{k}={int(v)}" for k, v in connections.items()))
    for key, value in sorted(doc.get("gauges", {}).items()):
        lines.append(f"{key:<25} {_number(value)}")
    if peers is not None:
        lines.append(f"peers       {len(peers)}")
        lines.extend("  " + peer_line(p) for p in peers)
    lines.append(f"last error  {info.get('last_error', 'none')}")
    return "\n".join(lines)


def peer_line(p: dict[str, Any]) -> str:
    vlans = p.get("vlans")
    shown = vlans if isinstance(vlans, str) else ",".join(map(str, vlans or [])) or "none"
    return (
        f"{p['device']:<16} {p.get('address') or '-':<22} vlans {shown:<8} "
        f"in {size(p.get('bytes_in', 0)):>10}  out {size(p.get('bytes_out', 0)):>10}  "
        f"up {age(p.get('connected_s')):>6}  handshake {age(p.get('handshake_age_s')):>6}  "
        f"attested {age(p.get('attestation_age_s')):>6}  {p.get('admitted_by', '')}"
    )


def register(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("--json", action="store_true", help="print the raw JSON document")
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    try:
        where = target(ns)
        code, doc = request(where, "/status", timeout=ns.timeout)
        if code == 401:
            raise ValueError("the node wants its admin credential: give --config or --token-file")
        if code != 200 or not isinstance(doc, dict) or "role" not in doc:
            raise ValueError("the endpoint did not answer with a ShadowMesh status document")
        _code, health = request(where, "/health", timeout=ns.timeout)
        peers = None
        if doc["role"] == "exit":
            code, answer = request(where, "/peers", timeout=ns.timeout)
            if code == 200 and isinstance(answer, dict):
                peers = answer.get("peers")
    except (OSError, ValueError, L2BridgeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        shown = ns.url or (ns.config and f"the listener in {ns.config}") or DEFAULT_URL
        print(f"shadowmesh status: cannot read {shown}: {reason}", file=sys.stderr)
        return 1
    if ns.json:
        whole = dict(doc, health=health, peers=peers)
        print(json.dumps(whole, indent=2, sort_keys=True))
    else:
        print(render(doc, health if isinstance(health, dict) else None, peers))
    return 0
