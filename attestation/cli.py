"""``shadowmesh attest enroll | quote | runtime-policy | golden | verify``: attestation,
for operators.

enroll  create an AK in this node's TPM, check the EK certificate chain against the
        maker CA(s), prove the AK is in that TPM (credential activation), write the
        AK key file and the enrolment record a verifier keeps
quote   write fresh evidence for a nonce: a quote over PCRs 0-10, the boot event log and
        the kernel's IMA list
runtime-policy
        write a Keylime-format runtime policy from this installed release
golden  write a golden policy: the boot PCRs of a known-good node's evidence and a runtime
        policy (the evidence is checked against both first); prints the boot digest over
        PCRs 0-9 that the registry's owner approves
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
from attestation import enrol, policy, release, runtime_policy, tpms, verifier
from attestation import evidence as ev
from attestation.errors import AttestationError
from attestation.eventlog import BootPolicy
from attestation.ima import ImaState
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
    nonce = ns.nonce or secrets.token_bytes(c.NONCE_SIZE)
    ak = enrol.AkKey.load(ns.ak)
    with Attester(ns.tcti, ak, ima_list=ns.ima_list, event_log=ns.event_log) as attester:
        data = attester.evidence(nonce, ns.node_id, time.time(), ns.ima_from)
    ns.out.write_bytes(data)
    print(f"nonce {nonce.hex()}: {len(data)} bytes of evidence in {ns.out}")
    return 0


def _runtime_policy(ns: argparse.Namespace) -> int:
    roots = [*release.default_roots(), *ns.include] if ns.defaults else list(ns.include)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    built = release.build(roots, ns.exclude, ns.release, stamp)
    for item in ns.relocate:
        src, _, dst = item.partition("=")
        built = release.relocate(built, Path(src), dst)
    if ns.merge:
        built = release.merge([built, *(runtime_policy.parse(p.read_bytes()) for p in ns.merge)])
    ns.out.write_text(runtime_policy.dump(built))
    print(f"runtime policy with {len(built.digests)} files and {len(built.excludes)} excludes "
          f"written to {ns.out} (sha256 {built.hash().hex()})")  # fmt: skip
    return 0


def _golden(ns: argparse.Namespace) -> int:
    data = ns.evidence.read_bytes()
    e = ev.decode(data)
    record = enrol.Enrolment.parse(ns.enrolment.read_text())
    candidate = policy.GoldenPolicy(
        boot=BootPolicy(
            tuple((i, v) for i, v in e.pcrs if i < c.BOOT_AGGREGATE_PCRS),
            tuple(ns.cmdline_requires or c.DEFAULT_CMDLINE_REQUIRES),
        ),
        runtime=runtime_policy.parse(ns.runtime_policy.read_bytes()),
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
    print(f"golden policy with {len(candidate.boot.pcrs)} boot PCRs and "
          f"{len(candidate.runtime.digests)} files written to {ns.out}")  # fmt: skip
    digest = boot_digest(e.pcrs)
    last = c.BOOT_AGGREGATE_PCRS - 1
    print(f"boot digest over PCRs 0-{last} (what the registry's quotes cover; its owner "
          f"approves it with `shadowmesh registry approve`): {digest.hex()}")  # fmt: skip
    return 0


def boot_digest(pcrs: tuple[tuple[int, bytes], ...]) -> bytes:
    """The TPM's PCR digest over PCRs 0-9 (SHA-256 bank), as a quote selecting exactly those
    PCRs reports it: the value the registry's owner approves for a node's boot state."""
    values = dict(pcrs)
    wanted = range(c.BOOT_AGGREGATE_PCRS)
    missing = [i for i in wanted if i not in values]
    if missing:
        raise AttestationError(f"evidence lacks boot PCR(s) {missing}: no boot digest")
    return tpms.pcr_digest(tuple(values[i] for i in wanted))


def _load_state(path: Path | None) -> verifier.NodeState | None:
    if path is None or not path.exists():
        return None
    d = json.loads(path.read_text())
    return verifier.NodeState(
        d["clock"], d["reset_count"], d["restart_count"], d["firmware_version"], d["seen_at"],
        ImaState(d["ima_count"], bytes.fromhex(d["ima_pcr10"])),
    )  # fmt: skip


def _save_state(path: Path, s: verifier.NodeState) -> None:
    path.write_text(json.dumps({
        "clock": s.clock, "reset_count": s.reset_count, "restart_count": s.restart_count,
        "firmware_version": s.firmware_version, "seen_at": s.seen_at,
        "ima_count": s.ima.count, "ima_pcr10": s.ima.pcr10.hex(),
    }))  # fmt: skip


def _verify(ns: argparse.Namespace) -> int:
    verdict = verifier.verify(
        ns.evidence.read_bytes(),
        nonce=ns.nonce,
        node_id=ns.node_id,
        trusted_ak=enrol.Enrolment.parse(ns.enrolment.read_text()).ak_public,
        policy=policy.parse(ns.policy.read_bytes()),
        previous=_load_state(ns.state),
        now=time.time(),
    )
    if not verdict.ok:
        print("REFUSED")
        for reason in verdict.reasons:
            print(f"  {reason}")
        return 1
    if ns.state is not None and verdict.state is not None:
        _save_state(ns.state, verdict.state)
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
    p.add_argument("--ima-list", type=Path, default=Path(c.IMA_LIST_PATH),
                   help="the kernel's binary IMA list (default: %(default)s)")  # fmt: skip
    p.add_argument("--event-log", type=Path, default=Path(c.EVENT_LOG_PATH),
                   help="the TCG boot event log (default: %(default)s)")  # fmt: skip
    p.add_argument("--ima-from", type=int, default=0,
                   help="first IMA entry to include (a verifier's saved count)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run(_quote))

    p = sub.add_parser("runtime-policy", help="write a runtime policy for this release")
    p.add_argument("--include", type=Path, action="append", default=[],
                   help="another file or directory the exit loads (its configuration, CA "
                   "certificates); repeat")  # fmt: skip
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="regular expression of paths not checked (per-node state); repeat",
    )
    p.add_argument(
        "--no-defaults",
        dest="defaults",
        action="store_false",
        help="list only --include (not the packages, Python and libraries)",
    )
    p.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="also allow what this runtime policy allows; repeat",
    )
    p.add_argument(
        "--relocate",
        action="append",
        default=[],
        metavar="SRC=DST",
        help="list files found under SRC at DST, where the release is installed",
    )
    p.add_argument("--release", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run(_runtime_policy))

    p = sub.add_parser("golden", help="write a golden policy from a known-good node")
    p.add_argument("--evidence", type=Path, required=True)
    p.add_argument("--enrolment", type=Path, required=True)
    p.add_argument("--runtime-policy", type=Path, required=True)
    p.add_argument("--cmdline-requires", action="append",
                   help="kernel parameter the boot must have; repeat (default: "
                   + " ".join(c.DEFAULT_CMDLINE_REQUIRES) + ")")  # fmt: skip
    p.add_argument("--max-age", type=float, default=c.DEFAULT_MAX_AGE_S)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run(_golden))

    p = sub.add_parser("verify", help="verify evidence")
    p.add_argument("--evidence", type=Path, required=True)
    p.add_argument("--policy", type=Path, required=True)
    p.add_argument("--enrolment", type=Path, required=True)
    p.add_argument("--nonce", type=_hex32, required=True)
    p.add_argument("--node-id", type=_hex32, required=True)
    p.add_argument("--state", type=Path, help="node state file (counters, IMA progress), "
                   "read and updated")  # fmt: skip
    p.set_defaults(func=_run(_verify))
