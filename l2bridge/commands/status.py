"""``shadowmesh status``: read a running client's or exit's status endpoint."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9477"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"status endpoint of the node (default {DEFAULT_URL})"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON document")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    parser.set_defaults(func=run)


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """Return the node's status document; raises OSError or ValueError with a plain message."""
    with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout) as reply:  # noqa: S310
        doc = json.loads(reply.read(1 << 20))
    if not isinstance(doc, dict) or "role" not in doc:
        raise ValueError("the endpoint did not answer with a ShadowMesh status document")
    return doc


def render(doc: dict[str, Any]) -> str:
    lines = [f"role      {doc['role']}   up {doc.get('uptime_s', 0):.0f} s"]
    for key, value in sorted(doc.get("info", {}).items()):
        lines.append(f"{key:<22}{value}")
    frames, octets = doc.get("frames", {}), doc.get("bytes", {})
    lines.append(
        f"frames    in {frames.get('in', 0)}  out {frames.get('out', 0)}   "
        f"bytes in {octets.get('in', 0)}  out {octets.get('out', 0)}"
    )
    lines.append(f"rekeys    {doc.get('rekeys', 0)}")
    drops = doc.get("drops", {})
    lines.append(
        "drops     " + (", ".join(f"{k}={v}" for k, v in drops.items()) if drops else "none")
    )
    for key, value in sorted(doc.get("gauges", {}).items()):
        lines.append(f"{key:<22}{'unknown' if value is None else value}")
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> int:
    try:
        doc = fetch(ns.url, ns.timeout)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"shadowmesh status: cannot read {ns.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True) if ns.json else render(doc))
    return 0
