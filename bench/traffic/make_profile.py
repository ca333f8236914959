"""Measure Chromium's WebSocket message sizes and gaps from a corpus and write the shaping
profile the nodes ship (l2bridge/node/browser_ws_profile.json):

    python bench/traffic/make_profile.py --corpus DIR [--out FILE]

From each browser session in DIR (bench/traffic/corpus.py) it takes the TLS application
records after the WebSocket upgrade (skipping the client's Finished, the upgrade request
and the 101 answer), converts each record length to the WebSocket payload it carries
(less the TLS 1.3 overhead and the WebSocket header, masked upstream) and keeps per
direction: the first messages one by one, all message sizes and the gaps between a
direction's messages, as quantiles (l2bridge.protocol.shaping.BrowserProfile).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.traffic.pcap import Flow, read_flows  # noqa: E402
from l2bridge.protocol.shaping import BrowserProfile  # noqa: E402

TLS13_OVERHEAD = 17  # content type byte + AEAD tag
FIRST = 6  # messages profiled one by one per direction
QUANTILES = 50
PER_SESSION = 40
SEED = 13
OUT = ROOT / "l2bridge" / "node" / "browser_ws_profile.json"


def ws_payload(record_len: int, upstream: bool) -> int:
    """The WebSocket payload a TLS 1.3 record of ``record_len`` bytes carries."""
    inner = record_len - TLS13_OVERHEAD
    mask = 4 if upstream else 0
    for header, limit in ((2, 125), (4, 65535), (10, 1 << 62)):
        if inner - header - mask <= limit:
            return max(0, inner - header - mask)
    return inner


def messages(flow: Flow) -> dict[int, list[tuple[float, int]]]:
    """Per direction (+1 up, -1 down): (time, payload) of the session's messages.

    Upstream the first two application records are the client's Finished and the upgrade
    request. Downstream, the server's encrypted handshake, session tickets and the 101 all
    come before the page's first message reaches the server (each app answers that first
    message), so the server's messages are those after the client's first message."""
    ups = [(t, n) for t, d, n in flow.records if d > 0][2:]
    if not ups:
        return {1: [], -1: []}
    downs = [(t, n) for t, d, n in flow.records if d < 0 and t > ups[0][0]]
    return {
        1: [(t, ws_payload(n, True)) for t, n in ups],
        -1: [(t, ws_payload(n, False)) for t, n in downs],
    }


def quantiles(values: list[float], n: int = QUANTILES) -> list[float]:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return [
        round(ordered[min(len(ordered) - 1, int(i * (len(ordered) - 1) / (n - 1)))], 4)
        for i in range(n)
    ]


def profile(flows: list[Flow], direction: int) -> dict[str, object]:
    """Each session weighs the same (an upload's thousands of chunk records would
    otherwise be the whole profile): at most PER_SESSION sizes and gaps from each."""
    rng = random.Random(SEED)
    first: list[list[float]] = [[] for _ in range(FIRST)]
    sizes: list[float] = []
    gaps: list[float] = []
    for flow in flows:
        msgs = messages(flow)[direction]
        for i, (_, n) in enumerate(msgs[:FIRST]):
            first[i].append(n)
        ns = [float(n) for _, n in msgs]
        gs = [b[0] - a[0] for a, b in itertools.pairwise(msgs)]
        sizes += rng.sample(ns, min(PER_SESSION, len(ns)))
        gaps += rng.sample(gs, min(PER_SESSION, len(gs)))
    return {
        "first": [quantiles(f, 20) for f in first if f],
        "sizes": quantiles(sizes),
        "gaps": quantiles(gaps),
        "messages": len(sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    sessions = [s for s in manifest if s["label"] == "browser"]
    flows: list[Flow] = []
    for pcap in sorted({str(s["pcap"]) for s in sessions}):
        port = next(int(s["port"]) for s in sessions if s["pcap"] == pcap)
        flows += [f for f in read_flows(args.corpus / pcap, port) if f.packets]
    doc = {
        "source": "bench/traffic/make_profile.py over Chromium WebSocket sessions "
        "(bench/traffic/corpus.py: chat, feed, edit, upload)",
        "sessions": len(flows),
        "up": profile(flows, 1),
        "down": profile(flows, -1),
    }
    BrowserProfile.from_dict(doc["up"])
    BrowserProfile.from_dict(doc["down"])
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        json.dumps(
            {
                "sessions": len(flows),
                "up_messages": doc["up"]["messages"],
                "down_messages": doc["down"]["messages"],
                "out": str(args.out),
            }
        )
    )


if __name__ == "__main__":
    main()
