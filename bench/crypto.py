"""Cryptographic core benchmarks: key exchange steps, full handshake, hybrid sign/verify, seal/open.

    python bench/crypto.py [--quick]

Figures are medians over repeated runs (this machine is shared; medians resist
noise), in milliseconds, and MB/s (10**6 bytes/s) for seal/open.  A readable
table goes to stderr; the last stdout line is one JSON object with every figure.
Targets (the README's figures table): each key exchange step < 1 ms, the whole
hybrid exchange < 0.5 ms (our goal), hybrid sign < 2 ms, hybrid verify < 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2bridge.constants import Cipher, Mode
from l2bridge.crypto.pq import cpu_has_aes, default_backend
from l2bridge.identity.keys import AdminKey, Authorizer, HybridSigningKey
from l2bridge.protocol import kex
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.keyslots import derive
from l2bridge.protocol.records import RecvKey, SendKey, parse_header

SIZES = (64, 1500, 9000, 65536)


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up
    samples = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t)
    return statistics.median(samples) / 1e6


def kex_steps(mode: Mode, runs: int) -> dict[str, float]:
    backend = default_backend()
    eph = kex.initiate(mode, backend)
    x, k = eph.x25519_public, eph.kem_public
    salt = os.urandom(48)
    steps = {
        "client_keygen_ms": median_ms(lambda: kex.initiate(mode, backend), runs),
        "server_encapsulate_ms": median_ms(lambda: kex.respond(mode, backend, x, k), runs),
        "key_schedule_ms": median_ms(lambda: derive(bytes(64), salt, b"info", True), runs),
    }
    # complete() forgets its private keys: time it once on each of `runs` fresh exchanges.
    samples = []
    for _ in range(runs):
        fresh = kex.initiate(mode, backend)
        rx, rct, _ = kex.respond(mode, backend, fresh.x25519_public, fresh.kem_public)
        t = time.perf_counter_ns()
        kex.complete(fresh, rx, rct)
        samples.append(time.perf_counter_ns() - t)
    steps["client_decapsulate_ms"] = statistics.median(samples) / 1e6
    steps["total_ms"] = (
        steps["client_keygen_ms"] + steps["server_encapsulate_ms"]
        + steps["client_decapsulate_ms"] + 2 * steps["key_schedule_ms"]
    )  # fmt: skip
    return steps


def full_handshake(mode: Mode, runs: int) -> dict[str, float]:
    client, exit_key = HybridSigningKey.generate(), HybridSigningKey.generate()
    admin = AdminKey(HybridSigningKey.generate())
    now = time.time()
    cert = admin.issue(client.public, "bench", "org", int(now) - 60, int(now) + 3600)
    server = ServerHandshake(exit_key, Authorizer([admin.public]), modes=[mode])
    t_hello, t_server, t_client, t_finish, t_total = [], [], [], [], []
    for _ in range(runs + 1):
        t0 = time.perf_counter_ns()
        hs = ClientHandshake(client, certificate=cert, mode=mode, pinned_node_id=exit_key.node_id)
        hello = hs.hello()
        t1 = time.perf_counter_ns()
        exit_session, reply = server.receive(hello, now)
        t2 = time.perf_counter_ns()
        _, finish = hs.receive(reply, now)
        t3 = time.perf_counter_ns()
        exit_session.receive(finish, now)
        t4 = time.perf_counter_ns()
        for acc, a, b in ((t_hello, t0, t1), (t_server, t1, t2), (t_client, t2, t3),
                          (t_finish, t3, t4), (t_total, t0, t4)):  # fmt: skip
            acc.append((b - a) / 1e6)
    med = {k: statistics.median(v[1:]) for k, v in (
        ("client_hello_ms", t_hello), ("server_reply_ms", t_server),
        ("client_finish_ms", t_client), ("server_verify_finish_ms", t_finish),
        ("total_ms", t_total),
    )}  # fmt: skip
    med["client_hello_bytes"] = float(len(hello))
    med["server_hello_bytes"] = float(len(reply))
    return med


def signatures(runs: int) -> dict[str, float]:
    key = HybridSigningKey.generate()
    msg = os.urandom(48)  # a transcript hash
    out: dict[str, float] = {}
    for name, mode in (
        ("hybrid", Mode.HYBRID),
        ("ed25519", Mode.CLASSICAL),
        ("mldsa87", Mode.PQC_ONLY),
    ):
        sig = key.sign(b"bench", msg, mode)
        out[f"{name}_sign_ms"] = median_ms(lambda m=mode: key.sign(b"bench", msg, m), runs)
        out[f"{name}_verify_ms"] = median_ms(
            lambda m=mode, s=sig: key.public.verify(b"bench", msg, s, m), runs
        )
    return out


def seal_open(cipher: Cipher, budget_s: float) -> dict[str, float]:
    """Seal then open each record at once (as a tunnel does), timing each side apart."""
    key, iv = os.urandom(32), os.urandom(12)
    out: dict[str, float] = {}
    clock = time.perf_counter_ns
    for size in SIZES:
        send = SendKey(cipher, bytearray(key), bytearray(iv), 1, 0.0)
        recv = RecvKey(cipher, bytearray(key), bytearray(iv), 1, 0.0)
        frames = [os.urandom(size)]
        n = max(200, min(20_000, int(budget_s * 1e9 / (size * 2 + 20_000))))
        seal_ns = open_ns = 0
        for _ in range(n):
            t0 = clock()
            record = send.seal_frames(frames)
            t1 = clock()
            recv.open(record, parse_header(record)[2])
            t2 = clock()
            seal_ns += t1 - t0
            open_ns += t2 - t1
        out[f"seal_{size}_us"] = seal_ns / n / 1e3
        out[f"seal_{size}_MBps"] = size * n / seal_ns * 1e3
        out[f"open_{size}_us"] = open_ns / n / 1e3
        out[f"open_{size}_MBps"] = size * n / open_ns * 1e3
    return out


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    args = ap.parse_args()
    runs = 15 if args.quick else 100
    hs_runs = 5 if args.quick else 30
    budget = 0.05 if args.quick else 0.5

    result: dict[str, object] = {"aes_ni": cpu_has_aes(), "runs": runs}
    result["kex"] = {m.name.lower(): kex_steps(m, runs) for m in Mode}
    result["handshake"] = {m.name.lower(): full_handshake(m, hs_runs) for m in Mode}
    result["signatures"] = signatures(runs)
    result["records"] = {c.name.lower(): seal_open(c, budget) for c in Cipher}
    hybrid_kex = result["kex"]["hybrid"]  # type: ignore[index]
    sigs = result["signatures"]
    result["targets"] = {
        "kex_each_step_under_1ms": all(
            hybrid_kex[k] < 1.0
            for k in ("client_keygen_ms", "server_encapsulate_ms", "client_decapsulate_ms")
        ),
        "kex_total_under_0_5ms": hybrid_kex["total_ms"] < 0.5,
        "hybrid_sign_under_2ms": sigs["hybrid_sign_ms"] < 2.0,  # type: ignore[index]
        "hybrid_verify_under_1ms": sigs["hybrid_verify_ms"] < 1.0,  # type: ignore[index]
    }
    for section, values in result.items():
        print(f"{section}: {values}", file=sys.stderr)
    print(json.dumps(_rounded(result), sort_keys=True, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
