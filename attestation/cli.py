"""``shadowmesh attest enroll | quote | golden | verify``: attestation for operators.

enroll  create an AK in this node's TPM, check the EK certificate chain against the
        maker CA(s), prove the AK is in that TPM (credential activation), write the
        AK key file and the enrolment record a verifier keeps
quote   measure this node (optionally) and write fresh evidence for a nonce
golden  write a golden policy from a known-good node's evidence (checked first)
verify  verify evidence against a policy and an enrolment record; exit 1 if refused
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

from attestation import constants as c
from attestation import enrol, measure, policy, verifier
from attestation import evidence as ev
from attestation.errors import AttestationError
from attestation.quote import Attester
from hardware.tpm import device_tcti


def _hex32(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise argparse.ArgumentTypeError("expected 64 hex digits")
    return raw


def _enroll(ns: argparse.Namespace) -> int:
    anchors = enrol.load_certificates(ns.ca)
    intermediates = enrol.load_certificates(ns.intermediate)
    ak, record = enrol.enrol(ns.tcti, anchors, intermediates, datetime.datetime.now(datetime.UTC))
    ak.save(ns.ak_out)
    ns.record_out.write_text(record.dump())
    print(f"enrolled: AK {record.ak_public.hex()[:32]}..., EK cert sha256 "
          f"{record.ek_certificate_sha256.hex()}")  # fmt: skip
    return 0


def _quote(ns: argparse.Namespace) -> int:
    software = ns.software or list(measure.installed_software())
    manifest = measure.build_manifest(software, ns.config, ns.node_id)
    nonce = ns.nonce or secrets.token_bytes(c.NONCE_SIZE)
    with Attester(ns.tcti, enrol.AkKey.load(ns.ak), manifest) as attester:
        if ns.measure:
            attester.measure()
        data = attester.evidence(nonce, ns.node_id, time.time())
    ns.out.write_bytes(data)
    print(f"nonce {nonce.hex()}: {len(data)} bytes of evidence in {ns.out}")
    return 0


def _golden(ns: argparse.Namespace) -> int:
    data = ns.evidence.read_bytes()
    e = ev.decode(data)
    record = enrol.Enrolment.parse(ns.enrolment.read_text())
    candidate = policy.GoldenPolicy(
        pcrs=tuple((i, v) for i, v in e.pcrs if i != c.MEASUREMENT_PCR),
        manifest=tuple((m.name, m.digest) for m in e.manifest if m.name != c.NODE_ID_ENTRY),
        max_age_s=ns.max_age,
    )
    verdict = verifier.verify(
        data, nonce=e.nonce, node_id=e.node_id, trusted_ak=record.ak_public,
        policy=candidate, previous=None, now=time.time(),
    )  # fmt: skip
    if not verdict.ok:
        print("refusing to take a golden policy from evidence that does not verify:")
        for reason in verdict.reasons:
            print(f"  {reason}")
        return 1
    ns.out.write_text(policy.dump(candidate))
    print(f"golden policy with {len(candidate.pcrs)} PCRs and "
          f"{len(candidate.manifest)} manifest entries written to {ns.out}")  # fmt: skip
    return 0


def _verify(ns: argparse.Namespace) -> int:
    previous = None
    if ns.state is not None and ns.state.exists():
        doc = json.loads(ns.state.read_text())
        previous = verifier.CounterState(doc["clock"], doc["reset_count"], doc["restart_count"])
    verdict = verifier.verify(
        ns.evidence.read_bytes(),
        nonce=ns.nonce,
        node_id=ns.node_id,
        trusted_ak=enrol.Enrolment.parse(ns.enrolment.read_text()).ak_public,
        policy=policy.parse(ns.policy.read_bytes()),
        previous=previous,
        now=time.time(),
    )
    if not verdict.ok:
        print("REFUSED")
        for reason in verdict.reasons:
            print(f"  {reason}")
        return 1
    if ns.state is not None and verdict.state is not None:
        s = verdict.state
        ns.state.write_text(json.dumps({"clock": s.clock, "reset_count": s.reset_count,
                                        "restart_count": s.restart_count}))  # fmt: skip
    print("OK")
    return 0


def _run(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(ns: argparse.Namespace) -> int:
        try:
            return func(ns)
        except (AttestationError, OSError, ValueError, KeyError) as exc:
            print(f"shadowmesh attest: {exc}", file=sys.stderr)
            return 1

    return wrapper


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    tcti_help = "TCTI (default device:/dev/tpmrm0)"

    p = sub.add_parser("enroll", help="create and enrol an AK")
    p.add_argument("--tcti", default=device_tcti(), help=tcti_help)
    p.add_argument("--ca", type=Path, action="append", required=True,
                   help="trusted EK CA certificate (PEM); repeat")  # fmt: skip
    p.add_argument("--intermediate", type=Path, action="append", default=[],
                   help="intermediate CA certificate (PEM); repeat")  # fmt: skip
    p.add_argument("--ak-out", type=Path, required=True)
    p.add_argument("--record-out", type=Path, required=True)
    p.set_defaults(func=_run(_enroll))

    p = sub.add_parser("quote", help="write fresh evidence")
    p.add_argument("--tcti", default=device_tcti(), help=tcti_help)
    p.add_argument("--ak", type=Path, required=True)
    p.add_argument("--node-id", type=_hex32, required=True)
    p.add_argument("--nonce", type=_hex32, help="64 hex digits (default: random)")
    p.add_argument("--config", type=Path)
    p.add_argument("--software", type=Path, action="append")
    p.add_argument("--measure", action="store_true", help="reset and extend PCR 23 first")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run(_quote))

    p = sub.add_parser("golden", help="write a golden policy from a known-good node")
    p.add_argument("--evidence", type=Path, required=True)
    p.add_argument("--enrolment", type=Path, required=True)
    p.add_argument("--max-age", type=float, default=c.DEFAULT_MAX_AGE_S)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run(_golden))

    p = sub.add_parser("verify", help="verify evidence")
    p.add_argument("--evidence", type=Path, required=True)
    p.add_argument("--policy", type=Path, required=True)
    p.add_argument("--enrolment", type=Path, required=True)
    p.add_argument("--nonce", type=_hex32, required=True)
    p.add_argument("--node-id", type=_hex32, required=True)
    p.add_argument("--state", type=Path, help="counter state file, read and updated")
    p.set_defaults(func=_run(_verify))
