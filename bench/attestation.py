"""Attestation timings against a real swtpm: enrolment, quote (evidence), verify.

The IMA harness's ``Kernel`` boots the swtpm (event log, PCRs 0-9) and measures the
installed ShadowMesh packages into PCR 10 and the IMA list; the exit's ``Attester`` quotes
PCRs 0-10 with both logs. Prints one line of JSON. Bounded: QUOTES quotes and VERIFIES
verifications.
    python3 bench/attestation.py
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestation import constants as c
from attestation import enrol, release, verifier
from attestation.eventlog import BootPolicy
from attestation.policy import GoldenPolicy
from attestation.quote import Attester
from attestation.tpm import Tpm
from hardware.tpm import Swtpm
from lab.imaharness import EVENT_LOG, IMA_LIST, LAB_CMDLINE, Kernel

QUOTES = 100
VERIFIES = 500


def _ms(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1] * 1000, 3),
    }


def main() -> None:
    node_id = hashlib.sha256(b"bench exit").digest()
    t0 = time.perf_counter()
    with Swtpm() as tpm:
        setup_s = time.perf_counter() - t0
        anchors = enrol.load_certificates([tpm.root_ca])
        inter = enrol.load_certificates([tpm.intermediate_ca])
        t0 = time.perf_counter()
        ak, record = enrol.enrol(tpm.tcti, anchors, inter, datetime.datetime.now(datetime.UTC))
        enrol_s = time.perf_counter() - t0
        logs = Path(tempfile.mkdtemp(prefix="bench-ima-"))
        files = [p for root in release.package_roots() for p in sorted(root.rglob("*.py*"))]
        with Tpm(tpm.tcti) as kernel_tpm:
            kernel = Kernel(kernel_tpm, logs)
            kernel.boot(LAB_CMDLINE)
            t0 = time.perf_counter()
            for path in files:
                fd = os.open(path, os.O_RDONLY)
                try:
                    kernel.measure_fd(fd)
                finally:
                    os.close(fd)
            measure_s = time.perf_counter() - t0
        attester = Attester(tpm.tcti, ak, ima_list=logs / IMA_LIST, event_log=logs / EVENT_LOG)
        with attester:
            values = dict(attester.read_pcrs())
            golden = GoldenPolicy(
                BootPolicy(tuple((i, values[i]) for i in range(10)), c.DEFAULT_CMDLINE_REQUIRES),
                release.build(files),
            )
            quotes, samples = [], []
            for _ in range(QUOTES):
                nonce = os.urandom(32)
                t0 = time.perf_counter()
                data = attester.evidence(nonce, node_id, time.time())
                quotes.append(time.perf_counter() - t0)
                samples.append((nonce, data))
    verifies = []
    for i in range(VERIFIES):
        nonce, data = samples[i % len(samples)]
        t0 = time.perf_counter()
        verdict = verifier.verify(
            data, nonce=nonce, node_id=node_id, trusted_ak=record.ak_public,
            policy=golden, previous=None, now=time.time(),
        )  # fmt: skip
        verifies.append(time.perf_counter() - t0)
        assert verdict.ok, verdict.reasons
    print(
        json.dumps(
            {
                "bench": "attestation",
                "tpm": "swtpm 0.7 (software TPM)",
                "swtpm_manufacture_s": round(setup_s, 3),
                "enrol_ms": round(enrol_s * 1000, 2),
                "kernel_measure_ms_per_file": round(measure_s * 1000 / len(files), 3),
                "ima_entries": kernel.measured,
                "quote": _ms(quotes) | {"n": QUOTES},
                "verify": _ms(verifies) | {"n": VERIFIES},
                "evidence_bytes": len(samples[0][1]),
            }
        )
    )


if __name__ == "__main__":
    main()
