"""Can a passive observer tell ShadowMesh from a browser's WebSocket? Classifiers over the
corpus of bench/traffic/corpus.py (see bench/traffic/README.md):

    python bench/classify.py --corpus DIR [--corpus DIR2 ...]

Each TLS connection is one session. Features a censor on the path has: the first 25
packets (size and direction, inter-arrival times), the first 12 bursts (bytes one way
before the other side speaks), packet-size and inter-arrival histograms, up/down byte
ratio, totals, duration, and the JA4 of the ClientHello. Detectors:

- ``forest``: a random forest on all of it;
- ``forest_shape``: the same without JA4;
- ``forest_data``: the shape features of the packets after the first 25 only (the TLS and
  tunnel handshakes left out: what shaping the tunnel's records can change);
- ``chi2``: the chi-square similarity test of Xue et al. (USENIX Security 2024): the
  (direction, size bin) histogram of a session's first 25 packets against the pooled
  histograms of the training browser sessions and training tunnel sessions; the score is
  how much closer it is to the tunnel's;
- ``volume``: two thresholds, the least bytes up and down any training tunnel session sent
  in its first second (bench/traffic/volume.py: the tunnel's handshake, which shaping can
  only pad). Each mode also reports its ``handshake_floor``: how many browser sessions move
  that much both ways in their first second, and the AUC this rule alone keeps against a
  perfect mimic of them (1.0 when none does: no shaping can get below it).

Per shaping mode, browser sessions (negatives) against that mode's tunnel sessions
(positives), 5-fold stratified cross-validation with whole sessions held out (grouped by
session; scores out of fold). ROC AUC, and the true-positive rate at 1e-3 false positives
(with fewer than 1000 negatives that means at zero false positives; the JSON says how
many negatives there were). A mode's ``auc`` / ``tpr_at_fpr_1e-3`` are the strongest
detector's. ``overhead_pct``: bytes on the wire per byte of LAN frames carried, against
the baseline's; ``added_latency_ms``: the interactive workload's median keystroke echo
time (measured in the client's LAN capture, where the user is) against the baseline's.
``ja4_client_matches_chrome``: whether some mode's client sent only ClientHellos whose
JA4 Chromium also sent (each mode says for itself). Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import statistics
import sys
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedGroupKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.traffic import ja4 as ja4lib  # noqa: E402
from bench.traffic import volume  # noqa: E402
from bench.traffic.pcap import Flow, echo_times, frame_sizes, read_flows  # noqa: E402

FIRST = 25
BURSTS = 12
SIZE_BINS = (64, 128, 256, 512, 768, 1024, 1280, 1400, 1449)
IAT_BINS = tuple(10.0**e for e in (-5, -4.5, -4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 1))
CHI_BINS = (100, 200, 400, 700, 1000, 1300, 1449)
FOLDS = 5
ECHO_PORT = 2222  # bench/traffic/workloads.py's interactive server
FPR = 1e-3


@dataclass
class Session:
    label: int  # 1 tunnel, 0 browser
    mode: str
    kind: str
    flow: Flow
    ja4: str
    ja4s: str
    lan_bytes: int = 0
    rtt_ms: tuple[float, ...] = ()

    @property
    def wire_bytes(self) -> int:
        return sum(n for _, _, n in self.flow.packets)


def _hist(values: list[float], bins: tuple[float, ...]) -> list[float]:
    counts = [0] * (len(bins) + 1)
    for v in values:
        counts[bisect.bisect_right(bins, v)] += 1
    total = sum(counts) or 1
    return [c / total for c in counts]


def bursts(pkts: list[tuple[float, int, int]]) -> list[int]:
    out: list[int] = []
    for _, d, n in pkts:
        if out and (out[-1] > 0) == (d > 0):
            out[-1] += d * n
        else:
            out.append(d * n)
    return out


def shape_features(flow: Flow, skip: int = 0) -> list[float]:
    """``skip``: leave out the first packets (the ``forest_data`` detector)."""
    pkts = flow.packets[skip:] or [(flow.syn_time, 1, 0)]
    first = [d * n for _, d, n in pkts[:FIRST]]
    times = [t for t, _, _ in pkts]
    iats = [b - a for a, b in itertools.pairwise(times)]
    first_iat = [math.log10(x + 1e-6) for x in iats[: FIRST - 1]]
    up = [n for _, d, n in pkts if d > 0]
    down = [n for _, d, n in pkts if d < 0]
    b = bursts(pkts)[:BURSTS]
    up_b, down_b = sum(up), sum(down)
    return [
        *first,
        *[0.0] * (FIRST - len(first)),
        *first_iat,
        *[0.0] * (FIRST - 1 - len(first_iat)),
        *b,
        *[0.0] * (BURSTS - len(b)),
        *_hist(up, SIZE_BINS),
        *_hist(down, SIZE_BINS),
        *_hist(iats, IAT_BINS),
        math.log10((up_b + 1) / (down_b + 1)),
        math.log10(up_b + 1),
        math.log10(down_b + 1),
        math.log10(len(up) + 1),
        math.log10(len(down) + 1),
        (times[-1] - times[0]) if times else 0.0,
    ]


FEATURE_NAMES = (
    [f"pkt{i}_signed_size" for i in range(FIRST)]
    + [f"pkt{i + 1}_log_iat" for i in range(FIRST - 1)]
    + [f"burst{i}_signed_bytes" for i in range(BURSTS)]
    + [f"up_size_bin{i}" for i in range(len(SIZE_BINS) + 1)]
    + [f"down_size_bin{i}" for i in range(len(SIZE_BINS) + 1)]
    + [f"iat_bin{i}" for i in range(len(IAT_BINS) + 1)]
    + ["log_up_down_ratio", "log_up_bytes", "log_down_bytes", "log_up_pkts", "log_down_pkts"]
    + ["duration"]
)


def top_features(negatives: list[Session], positives: list[Session], seed: int = 7) -> list[str]:
    """The shape features the forest leans on most (fit on everything; for the report)."""
    data = negatives + positives
    model = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    model.fit(np.array([shape_features(s.flow) for s in data]), [s.label for s in data])
    order = np.argsort(model.feature_importances_)[::-1][:5]
    return [f"{FEATURE_NAMES[i]}:{model.feature_importances_[i]:.2f}" for i in order]


def by_kind(scores: np.ndarray, data: list[Session]) -> dict[str, float]:
    """Mean out-of-fold tunnel score per tunnel workload (which ones stand out)."""
    out: dict[str, list[float]] = defaultdict(list)
    for s, sc in zip(data, scores, strict=True):
        if s.label == 1:
            out[s.kind].append(float(sc))
    return {k: round(statistics.mean(v), 3) for k, v in sorted(out.items())}


def ja4_feature(fingerprint: str) -> float:
    return float(zlib.crc32(fingerprint.encode()) % 1_000_003)


def chi_hist(flow: Flow) -> np.ndarray:
    h = np.zeros(2 * (len(CHI_BINS) + 1))
    for _, d, n in flow.packets[:FIRST]:
        h[(0 if d > 0 else len(CHI_BINS) + 1) + bisect.bisect_right(CHI_BINS, n)] += 1
    return h


def chi2_distance(h: np.ndarray, ref: np.ndarray) -> float:
    """Pearson chi-square of counts ``h`` against the reference distribution ``ref``."""
    expected = ref / max(ref.sum(), 1e-12) * max(h.sum(), 1)
    expected = np.maximum(expected, 0.5)  # no division by an empty bin
    return float(((h - expected) ** 2 / expected).sum())


def fingerprints(flow: Flow) -> tuple[str, str]:
    try:
        client = ja4lib.ja4(ja4lib.parse_hello(ja4lib.first_handshake(flow.client_head))[1])
    except ja4lib.NotAHello:
        client = "none"
    try:
        server = ja4lib.ja4s(ja4lib.parse_hello(ja4lib.first_handshake(flow.server_head))[1])
    except ja4lib.NotAHello:
        server = "none"
    return client, server


def load(corpus: Path) -> list[Session]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    by_pcap: dict[str, list[dict[str, object]]] = defaultdict(list)
    for entry in manifest:
        by_pcap[str(entry["pcap"])].append(entry)
    sessions: list[Session] = []
    for pcap, entries in by_pcap.items():
        port = int(str(entries[0]["port"]))
        lan_name = entries[0].get("lan_pcap")
        lan = frame_sizes(corpus / str(lan_name)) if lan_name else []
        lan_times = [t for t, _ in lan]
        echoes = echo_times(corpus / str(lan_name), ECHO_PORT) if lan_name else []
        echo_at = [t for t, _ in echoes]
        lan_cum = [0, *np.cumsum([n for _, n in lan]).tolist()]
        for flow in read_flows(corpus / pcap, port):
            if len(flow.packets) < 4:
                continue  # no TLS session (a refused or aborted connection)
            entry = next(
                (
                    e
                    for e in entries
                    if float(str(e["start"])) <= flow.syn_time <= float(str(e["end"]))
                ),
                None,
            )
            if entry is None:
                continue
            client, server = fingerprints(flow)
            s = Session(
                1 if entry["label"] == "tunnel" else 0,
                str(entry["mode"]),
                str(entry["kind"]),
                flow,
                client,
                server,
            )
            if lan:
                lo = bisect.bisect_left(lan_times, float(str(entry["start"])))
                hi = bisect.bisect_right(lan_times, float(str(entry["end"])))
                s.lan_bytes = int(lan_cum[hi] - lan_cum[lo])
            if s.kind == "interactive" and echoes:
                lo = bisect.bisect_left(echo_at, float(str(entry["start"])))
                hi = bisect.bisect_right(echo_at, float(str(entry["end"])))
                s.rtt_ms = tuple(1000 * d for _, d in echoes[lo:hi])
            sessions.append(s)
    return sessions


def tpr_at(y: np.ndarray, score: np.ndarray, fpr_max: float = FPR) -> float:
    fpr, tpr, _ = roc_curve(y, score)
    ok = tpr[fpr <= fpr_max]
    return float(ok.max()) if ok.size else 0.0


def evaluate(
    negatives: list[Session], positives: list[Session], seed: int = 7
) -> dict[str, dict[str, object]]:
    data = negatives + positives
    y = np.array([s.label for s in data])
    shape = np.array([shape_features(s.flow) for s in data])
    full = np.column_stack([shape, [ja4_feature(s.ja4) for s in data]])
    hists = np.array([chi_hist(s.flow) for s in data])
    groups = np.arange(len(data))  # one TLS connection = one session, held out whole
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    after = np.array([shape_features(s.flow, skip=FIRST) for s in data])
    early = [volume.early_bytes(s.flow.packets) for s in data]
    names = ("forest", "forest_shape", "forest_data", "chi2", "volume")
    scores = {name: np.zeros(len(data)) for name in names}
    for train, test in folds.split(full, y, groups):
        for name, x in (("forest", full), ("forest_shape", shape), ("forest_data", after)):
            model = RandomForestClassifier(
                n_estimators=200, min_samples_leaf=1, random_state=seed, n_jobs=1
            )
            model.fit(x[train], y[train])
            scores[name][test] = model.predict_proba(x[test])[:, 1]
        ref_browser = hists[train][y[train] == 0].sum(axis=0)
        ref_tunnel = hists[train][y[train] == 1].sum(axis=0)
        for i in test:
            scores["chi2"][i] = chi2_distance(hists[i], ref_browser) - chi2_distance(
                hists[i], ref_tunnel
            )
        rule = volume.VolumeRule.fit(early[i] for i in train if y[i] == 1)
        for i in test:
            scores["volume"][i] = rule.score(*early[i])
    out: dict[str, dict[str, object]] = {
        name: {
            "auc": round(float(roc_auc_score(y, sc)), 4),
            "tpr_at_fpr_1e-3": round(tpr_at(y, sc), 4),
        }
        for name, sc in scores.items()
    }
    out["forest_shape"]["mean_score_by_workload"] = by_kind(scores["forest_shape"], data)
    return out


def wire_per_lan(sessions: list[Session]) -> float | None:
    lan = sum(s.lan_bytes for s in sessions)
    return sum(s.wire_bytes for s in sessions) / lan if lan else None


def median_rtt(sessions: list[Session]) -> float | None:
    rtts = [r for s in sessions if s.kind == "interactive" for r in s.rtt_ms]
    return statistics.median(rtts) if rtts else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, action="append", default=[])
    parser.add_argument(
        "--browser-corpus", type=Path, action="append", default=[],
        help="take only the browser sessions of this corpus",
    )  # fmt: skip
    args = parser.parse_args()
    sessions = [s for c in args.corpus for s in load(c)]
    sessions += [s for c in args.browser_corpus for s in load(c) if s.label == 0]
    browsers = [s for s in sessions if s.label == 0]
    tunnels: dict[str, list[Session]] = defaultdict(list)
    for s in sessions:
        if s.label == 1:
            tunnels[s.mode].append(s)
    if not browsers or "baseline" not in tunnels:
        sys.exit("the corpus needs browser sessions and baseline tunnel sessions")
    base_ratio = wire_per_lan(tunnels["baseline"])
    base_rtt = median_rtt(tunnels["baseline"])
    chrome = Counter(s.ja4 for s in browsers)
    client = Counter(s.ja4 for s in sessions if s.label == 1)
    results: dict[str, object] = {}
    for mode, positives in tunnels.items():
        detectors = evaluate(browsers, positives)
        auc = max(float(str(d["auc"])) for d in detectors.values())
        tpr = max(float(str(d["tpr_at_fpr_1e-3"])) for d in detectors.values())
        ratio, rtt = wire_per_lan(positives), median_rtt(positives)
        results[mode] = {
            "auc": auc,
            "tpr_at_fpr_1e-3": tpr,
            "overhead_pct": round(100 * (ratio / base_ratio - 1), 1)
            if ratio and base_ratio
            else None,
            "added_latency_ms": round(rtt - base_rtt, 2)
            if rtt is not None and base_rtt is not None
            else None,
            "wire_bytes_per_lan_byte": round(ratio, 3) if ratio else None,
            "median_echo_ms": round(rtt, 2) if rtt is not None else None,
            # Shaping may slow a download: LAN bytes a bulk session moved (same length each).
            "bulk_mb_per_session": round(
                statistics.mean([x.lan_bytes for x in positives if x.kind == "bulk"] or [0]) / 1e6,
                1,
            ),
            "detectors": detectors,
            "handshake_floor": volume.floor(
                (volume.early_bytes(s.flow.packets) for s in browsers),
                (volume.early_bytes(s.flow.packets) for s in positives),
            ).as_json(),
            "top_shape_features": top_features(browsers, positives),
            "ja4_matches_chrome": {s.ja4 for s in positives} <= set(chrome),
            "sessions": len(positives),
        }
        print(f"{mode}: {json.dumps(results[mode])}", file=sys.stderr)
    server_tunnel = Counter(s.ja4s for s in sessions if s.label == 1)
    server_nginx = Counter(s.ja4s for s in browsers)
    print(
        json.dumps(
            {
                "modes": results,
                # Some mode's client sends only ClientHellos whose JA4 Chromium also sent.
                "ja4_client_matches_chrome": any(
                    bool(r["ja4_matches_chrome"]) for r in results.values() if isinstance(r, dict)
                ),
                "ja4": {
                    "chromium": dict(chrome.most_common(3)),
                    "client": dict(client.most_common(3)),
                },
                "ja4s": {
                    "nginx": dict(server_nginx.most_common(3)),
                    "exit": dict(server_tunnel.most_common(3)),
                },
                "browser_sessions": len(browsers),
                "browser_kinds": dict(Counter(s.kind for s in browsers)),
            }
        )
    )


if __name__ == "__main__":
    main()
