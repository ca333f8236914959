"""The tamper suite: an honest exit passes, every attack of a root attacker is refused.

Real swtpm, the IMA harness (fanotify) and the exit's attestation process; verdicts from
the clients' verifier (``attestation.checker``). Then the verifier's own cost on a
10,000-entry IMA list, in full and incrementally. Prints one line of JSON.
    python3 bench/tamper.py [--honest-runs 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attestation import constants as c  # noqa: E402
from attestation import evidence as ev  # noqa: E402
from attestation import ima, runtime_policy, verifier  # noqa: E402
from attestation.eventlog import BootPolicy  # noqa: E402
from attestation.fake import FakeAttester  # noqa: E402
from attestation.policy import GoldenPolicy  # noqa: E402
from lab import tamper  # noqa: E402

ENTRIES = 10_000
NEW_ENTRIES = 10
REPEATS = 7
NODE_ID = hashlib.sha256(b"bench exit").digest()


def _range(samples: list[float]) -> list[float]:
    return [round(min(samples) * 1000, 2), round(max(samples) * 1000, 2)]


def verifier_cost() -> dict[str, list[float]]:
    """Replay + runtime check of a 10,000-entry list (steps 6-7 of the verifier), and a
    full verification of evidence carrying 10 new entries on top of a checked state."""
    fake = FakeAttester()
    files = {f"/opt/shadowmesh/lib/m{i}.pyc": hashlib.sha256(b"%d" % i).digest()
             for i in range(ENTRIES + NEW_ENTRIES)}  # fmt: skip
    names = list(files)
    for path in names[: ENTRIES - 1]:
        fake.measure_file(path, files[path])
    policy = GoldenPolicy(
        BootPolicy(tuple((i, fake.pcrs[i]) for i in range(10)), c.DEFAULT_CMDLINE_REQUIRES),
        runtime_policy.RuntimePolicy({p: frozenset({d}) for p, d in files.items()}, ()),
    )
    full = []
    state = None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        problems, runtime, state = verifier.check_ima(
            fake.ima_list, 0, fake.pcrs, ima.INITIAL_STATE, policy
        )
        full.append(time.perf_counter() - t0)
        assert not problems and not runtime and state is not None and state.count == ENTRIES
    assert state is not None
    nonce = bytes(32)
    first = verifier.verify(
        fake.evidence(nonce, NODE_ID, 0, ima_first=ENTRIES - 5), nonce=nonce, node_id=NODE_ID,
        trusted_ak=fake.ak_public, policy=policy, now=time.time(),
        previous=verifier.NodeState(0, 1, 0, fake.firmware_version, time.time(), state),
    )  # fmt: skip
    assert first.ok and first.state is not None, first.reasons
    for path in names[ENTRIES - 1 : ENTRIES - 1 + NEW_ENTRIES]:
        fake.measure_file(path, files[path])
    incremental = []
    for _ in range(REPEATS):
        data = fake.evidence(nonce, NODE_ID, 0, ima_first=ENTRIES)
        t0 = time.perf_counter()
        verdict = verifier.verify(data, nonce=nonce, node_id=NODE_ID, trusted_ak=fake.ak_public,
                                  policy=policy, previous=first.state, now=time.time())  # fmt: skip
        incremental.append(time.perf_counter() - t0)
        assert verdict.ok, verdict.reasons
    return {"full": _range(full), "incremental": _range(incremental)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--honest-runs", type=int, default=20)
    ns = parser.parse_args()
    cost = verifier_cost()
    with tempfile.TemporaryDirectory(prefix="tamper-") as work:
        rig = tamper.Rig(Path(work), ROOT)
        try:
            rig.boot()
            golden = rig.learn()
            false_refusals = []
            real_verify = []
            for _ in range(ns.honest_runs):
                reasons = tamper.honest(rig)
                if reasons:
                    false_refusals.append(reasons[0])
            assert rig.exit is not None
            data = rig.exit.quote(bytes(32))
            entries = len(ima.parse_list(ev.decode(data).ima_list))
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                verifier.verify(data, nonce=bytes(32), node_id=tamper.NODE_ID,
                                trusted_ak=rig.ak_public, policy=golden, previous=None,
                                now=time.time())  # fmt: skip
                real_verify.append(time.perf_counter() - t0)
            refused, missed = [], []
            for name, attack in tamper.ATTACKS.items():
                (refused if attack(rig) else missed).append(name)
        finally:
            rig.close()
    print(json.dumps({
        "bench": "tamper",
        "attacks": len(tamper.ATTACKS),
        "refused": len(refused),
        "not_refused": missed,
        "honest_runs": ns.honest_runs,
        "false_refusals": len(false_refusals),
        "false_refusal_reasons": false_refusals[:3],
        "verify_ms_10000_entries": cost["full"],
        "verify_ms_incremental_10_new_of_10000": cost["incremental"],
        "exit_ima_entries": entries,
        "exit_evidence_bytes": len(data),
        "verify_ms_exit_evidence_full": _range(real_verify),
        "ms_ranges": f"[min, max] over {REPEATS} repeats",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
