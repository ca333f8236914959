"""The gate's per-device credential check on the CPU (transport.admission), sans-I/O.

What a refused token costs the exit, by the step that refuses it, and what an admitted
one costs, with a table of TABLE_SIZE credentials. Prints one line of JSON. Bounded:
ROUNDS rounds of BATCH checks per figure.
    python3 bench/credentials.py

Figures (CPU µs per check via time.process_time, min/median/max over the rounds):
- refused_malformed_us: not a token spelling;
- refused_unknown_us: a well-formed token whose tag names no credential (a stranger, or a
  fellow client forging for another device's handle);
- refused_mac_us: a genuine token with one MAC bit flipped;
- refused_revoked_us: a revoked credential;
- refused_replay_us: a captured token sent again;
- admitted_us: a fresh valid token (quota charged, nonce cached).
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.token import Credential, MasterKey, mint_token

ROUNDS = 7
BATCH = 2000
TABLE_SIZE = 4000
NODE = b"\x05" * 32
NOW = 1_800_000_000.0


def spread(samples: list[float], scale: float) -> dict[str, float]:
    return {
        "min": round(min(samples) * scale, 2),
        "median": round(statistics.median(samples) * scale, 2),
        "max": round(max(samples) * scale, 2),
    }


def flip_last_bit(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[-1] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode()


def per_check(verifier: TokenVerifier, tokens: list[str], expect_admit: bool) -> float:
    start = time.process_time()
    for token in tokens:
        admitted = verifier.check(token, NOW, "198.51.100.1")
        assert (admitted is not None) is expect_admit
    return (time.process_time() - start) / len(tokens)


def main() -> None:
    master = MasterKey.generate()
    table = CredentialTable()
    creds = [table.issue(master, NODE, os.urandom(32), f"d{i}", NOW)[1] for i in range(TABLE_SIZE)]
    table.revoke(name="d0")
    revoked, live = creds[0], creds[1]
    stranger = Credential.derive(MasterKey.generate(), NODE, os.urandom(16))
    figures: dict[str, list[float]] = {k: [] for k in (
        "refused_malformed_us", "refused_unknown_us", "refused_mac_us", "refused_revoked_us",
        "refused_replay_us", "admitted_us")}  # fmt: skip
    for _ in range(ROUNDS):
        verifier = TokenVerifier(
            master, NODE, table, per_device=10 * BATCH, per_source=10 * BATCH,
            cache_per_window=10 * BATCH,
        )  # fmt: skip
        # Build the tag index (once per window and table change) before timing.
        assert verifier.check(mint_token(live, NOW), NOW) is not None
        fresh = [mint_token(live, NOW) for _ in range(BATCH)]
        figures["admitted_us"].append(per_check(verifier, fresh, True))
        figures["refused_replay_us"].append(per_check(verifier, fresh, False))
        figures["refused_malformed_us"].append(per_check(verifier, ["!" * 64] * BATCH, False))
        unknown = [mint_token(stranger, NOW) for _ in range(BATCH)]
        figures["refused_unknown_us"].append(per_check(verifier, unknown, False))
        bad_mac = [flip_last_bit(mint_token(live, NOW)) for _ in range(BATCH)]
        figures["refused_mac_us"].append(per_check(verifier, bad_mac, False))
        gone = [mint_token(revoked, NOW) for _ in range(BATCH)]
        figures["refused_revoked_us"].append(per_check(verifier, gone, False))
    result: dict[str, object] = {"rounds": ROUNDS, "batch": BATCH, "table_size": TABLE_SIZE}
    result.update({name: spread(samples, 1e6) for name, samples in figures.items()})
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
