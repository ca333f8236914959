"""The verifier: a pure function from evidence bytes to a verdict.

Checks run in Keylime's order and every failure is collected, not just the first:

1. ``signature``  the AK in the evidence is the enrolled one, a restricted P-256 signing
                  key, and its ECDSA-SHA256 signature over TPMS_ATTEST verifies;
2. ``nonce``      nonce and nodeId are the ones we asked for and the quote's extraData is
                  SHA-256("shadowmesh-attest-v1" || nonce || nodeId);
3. ``pcr-digest`` the reported PCR values are the quoted selection and hash to pcrDigest;
4. ``counters``   TPM clock, reset and restart counters never go backwards;
5. ``pcr-policy`` quoted PCR values equal the golden policy's;
6. ``manifest``   the manifest replays to the measurement PCR, names our nodeId, and its
                  software/configuration digests equal the golden policy's;
7. ``age``        the evidence is neither older than the policy allows nor from the future.

Counter state is passed in and handed back in the verdict (only when everything passed);
nothing is global. There is no switch that skips a check.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from attestation import constants as c
from attestation import evidence as ev
from attestation import tpms
from attestation.errors import EvidenceError
from attestation.policy import GoldenPolicy

FORMAT = "format"
SIGNATURE = "signature"
NONCE = "nonce"
PCR_DIGEST = "pcr-digest"
COUNTERS = "counters"
PCR_POLICY = "pcr-policy"
MANIFEST = "manifest"
AGE = "age"


@dataclass(frozen=True, slots=True)
class CounterState:
    """The TPM clock and counters of the last evidence accepted from one node."""

    clock: int
    reset_count: int
    restart_count: int


@dataclass(frozen=True, slots=True)
class Failure:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Verdict:
    failures: tuple[Failure, ...]
    state: CounterState | None  # to keep for the next verification; None unless ok

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self.failures)


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _check_counters(clock: tpms.ClockInfo, previous: CounterState | None) -> list[str]:
    if previous is None:
        return []
    if clock.reset_count < previous.reset_count:
        return [f"reset count went backwards ({previous.reset_count} -> {clock.reset_count})"]
    if clock.reset_count > previous.reset_count:
        return []  # a reboot: the clock and restart counter may start again lower
    out = []
    if clock.restart_count < previous.restart_count:
        out.append(
            f"restart count went backwards ({previous.restart_count} -> {clock.restart_count})"
        )
    if clock.clock < previous.clock:
        out.append(f"TPM clock went backwards ({previous.clock} -> {clock.clock})")
    return out


def _check_manifest(
    e: ev.Evidence, reported: dict[int, bytes], node_id: bytes, policy: GoldenPolicy
) -> list[str]:
    out = []
    quoted = reported.get(c.MEASUREMENT_PCR)
    if quoted is None:
        out.append(f"PCR {c.MEASUREMENT_PCR} (measurements) is not quoted")
    elif not _same(ev.replay_manifest(e.manifest), quoted):
        out.append(f"PCR {c.MEASUREMENT_PCR} does not match the replayed manifest")
    entries = {m.name: m.digest for m in e.manifest}
    measured_id = entries.pop(c.NODE_ID_ENTRY, None)
    if measured_id is None or not _same(measured_id, node_id):
        out.append("measured nodeId is not the expected nodeId")
    for name, digest in policy.manifest:
        got = entries.pop(name, None)
        if got is None:
            out.append(f"{name} was not measured")
        elif not _same(got, digest):
            out.append(f"{name} differs from golden policy")
    out.extend(f"{name} is not in the golden policy" for name in sorted(entries))
    return out


def verify(
    data: bytes,
    *,
    nonce: bytes,
    node_id: bytes,
    trusted_ak: bytes,
    policy: GoldenPolicy,
    previous: CounterState | None,
    now: float,
) -> Verdict:
    """Verify evidence ``data`` for the ``nonce`` we sent to the node ``node_id``.

    ``trusted_ak`` is the TPMT_PUBLIC of the node's enrolled AK, ``previous`` the counter
    state of its last accepted evidence (None for the first), ``now`` Unix seconds.
    Never raises on bad input: malformed evidence is a ``format`` failure.
    """
    try:
        e = ev.decode(data)
        attest = tpms.parse_attest(e.attest)
    except EvidenceError as exc:
        return Verdict((Failure(FORMAT, str(exc)),), None)
    failures: list[Failure] = []

    def fail(check: str, details: list[str]) -> None:
        failures.extend(Failure(check, d) for d in details)

    # 1. signature
    sig_problems = []
    if not _same(e.ak_public, trusted_ak):
        sig_problems.append("quote was not signed by the enrolled AK")
    try:
        public = tpms.parse_public(e.ak_public)
        signature = tpms.parse_signature(e.signature)
        if not public.is_restricted_signing_key:
            sig_problems.append("AK is not a restricted signing key")
        if not tpms.verify_signature(public, e.attest, signature):
            sig_problems.append("quote signature does not verify")
    except EvidenceError as exc:
        sig_problems.append(str(exc))
    fail(SIGNATURE, sig_problems)

    # 2. nonce and nodeId (qualifying data)
    nonce_problems = []
    if not _same(e.nonce, nonce):
        nonce_problems.append("evidence answers another nonce")
    if not _same(e.node_id, node_id):
        nonce_problems.append("evidence is for another nodeId")
    try:
        expected = ev.qualifying_data(nonce, node_id)
    except EvidenceError as exc:
        nonce_problems.append(str(exc))
    else:
        if not _same(attest.extra_data, expected):
            nonce_problems.append("quote qualifying data does not cover nonce and nodeId")
    fail(NONCE, nonce_problems)

    # 3. PCR digest against the reported values
    reported = dict(e.pcrs)
    if tuple(reported) != attest.pcrs:
        fail(PCR_DIGEST, ["reported PCRs are not the quoted selection"])
    elif not _same(tpms.pcr_digest(tuple(reported.values())), attest.pcr_digest):
        fail(PCR_DIGEST, ["reported PCR values do not match the quoted digest"])

    # 4. TPM clock and counters
    fail(COUNTERS, _check_counters(attest.clock_info, previous))

    # 5. PCR values against the golden policy
    pcr_problems = []
    for index, value in policy.pcrs:
        got = reported.get(index)
        if got is None or index not in attest.pcrs:
            pcr_problems.append(f"PCR {index} is not quoted")
        elif not _same(got, value):
            pcr_problems.append(f"PCR {index} differs from golden policy")
    fail(PCR_POLICY, pcr_problems)

    # 6. software manifest
    fail(MANIFEST, _check_manifest(e, reported, node_id, policy))

    # 7. age
    age = now - e.produced_at_ms / 1000.0
    if age > policy.max_age_s:
        fail(AGE, [f"evidence is {age:.0f} s old (limit {policy.max_age_s:.0f} s)"])
    elif age < -c.MAX_FUTURE_SKEW_S:
        fail(AGE, ["evidence is dated in the future"])

    if failures:
        return Verdict(tuple(failures), None)
    ci = attest.clock_info
    return Verdict((), CounterState(ci.clock, ci.reset_count, ci.restart_count))
