"""The verifier: a pure function from evidence bytes to a verdict, in Keylime's order.

Every failure is collected, not just the first:

1. ``signature``  the AK in the evidence is the enrolled one, a restricted P-256 signing
                  key, and its ECDSA-SHA256 signature over TPMS_ATTEST verifies;
2. ``nonce``      nonce and nodeId are the ones we asked for and the quote's extraData is
                  SHA-256("shadowmesh/handshake/v1" || nonce || nodeId);
3. ``pcr-digest`` the reported PCR values are the quoted selection (PCRs 0-10 of the
                  SHA-256 bank) and hash to pcrDigest;
4. ``counters``   TPM clock, reset and restart counters and firmwareVersion never go back;
                  the clock's ``safe`` flag is set (the clock did not lose time);
5. ``boot``       the event log replays to the quoted PCRs 0-9, the booted kernel command
                  line turns IMA on as the policy requires, PCRs have approved values;
6. ``ima``        the IMA list replays to the quoted PCR 10 (boot_aggregate first, equal
                  to SHA-256 of the quoted PCRs 0-9; violations as 0xFF);
7. ``runtime``    every new IMA entry is allowed by the runtime policy (the path is named);
                  a violation entry (file changed while open) is refused;
8. ``age``        judged from the TPM clock signed in the quote against the last accepted
                  quote of this node: it may not lag our clock by more than ``max_age_s``.

Freshness comes first from the nonce: a quote over our fresh nonce cannot predate it.
Node state (counters, the TPM clock seen and when, how far the IMA list was replayed) is
passed in and handed back in the verdict only when everything passed; a re-check then
replays only IMA entries it has not seen. Nothing is global; no switch skips a check.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from attestation import constants as c
from attestation import eventlog, ima, tpms
from attestation import evidence as ev
from attestation.errors import EvidenceError
from attestation.policy import GoldenPolicy

FORMAT = "format"
SIGNATURE = "signature"
NONCE = "nonce"
PCR_DIGEST = "pcr-digest"
COUNTERS = "counters"
BOOT = "boot"
IMA = "ima"
RUNTIME = "runtime"
AGE = "age"
MAX_REASONS_PER_CHECK = 20  # a list of 10,000 unknown files needs no 10,000 lines


@dataclass(frozen=True, slots=True)
class NodeState:
    """What a verifier keeps about one node between verifications."""

    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    seen_at: float  # our clock (Unix s) when that quote was accepted
    ima: ima.ImaState  # how far this boot's list has been replayed
    # This boot's event log, as accepted; replayed again when the exit leaves it out.
    event_log: bytes = b""


@dataclass(frozen=True, slots=True)
class Failure:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Verdict:
    failures: tuple[Failure, ...]
    state: NodeState | None  # to keep for the next verification; None unless ok

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self.failures)


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _check_counters(attest: tpms.QuoteAttest, previous: NodeState | None) -> list[str]:
    clock = attest.clock_info
    out = []
    if not clock.safe:
        out.append("TPM clock is not safe (it may have lost time)")
    if previous is None:
        return out
    if attest.firmware_version < previous.firmware_version:
        out.append(
            f"TPM firmware went back ({previous.firmware_version:#x} -> "
            f"{attest.firmware_version:#x})"
        )
    if clock.reset_count < previous.reset_count:
        out.append(f"reset count went backwards ({previous.reset_count} -> {clock.reset_count})")
    elif clock.reset_count == previous.reset_count:
        # A higher reset count is a reboot: clock and restart count may start lower.
        if clock.restart_count < previous.restart_count:
            out.append(
                f"restart count went backwards ({previous.restart_count} -> {clock.restart_count})"
            )
        if clock.clock < previous.clock:
            out.append(f"TPM clock went backwards ({previous.clock} -> {clock.clock})")
    return out


def _check_age(
    attest: tpms.QuoteAttest, previous: NodeState | None, now: float, max_age: float
) -> list[str]:
    clock = attest.clock_info
    if previous is None or clock.reset_count != previous.reset_count:
        return []  # nothing to compare with; the nonce alone makes the quote fresh
    elapsed = max(0.0, now - previous.seen_at)
    lag_s = elapsed - (clock.clock - previous.clock) / 1000.0
    if lag_s > max_age + c.TPM_CLOCK_DRIFT * elapsed:
        return [f"TPM clock says the quote is {lag_s:.0f} s old (limit {max_age:.0f} s)"]
    return []


def check_ima(
    ima_list: bytes,
    ima_first: int,
    reported: dict[int, bytes],
    start: ima.ImaState,
    policy: GoldenPolicy,
) -> tuple[list[str], list[str], ima.ImaState | None]:
    """Steps 6 and 7 on their own: (IMA problems, runtime problems, state after the list,
    or None if it could not be replayed). ``reported`` are the quoted PCR values."""
    quoted = reported.get(c.IMA_PCR)
    try:
        result = ima.replay(ima_list, ima_first, start)
    except EvidenceError as exc:
        return [f"IMA list: {exc}"], [], None
    problems = list(result.problems)
    runtime: list[str] = []
    entries = result.new_entries
    if start.count == 0:
        boot = [reported.get(i, b"") for i in range(c.BOOT_AGGREGATE_PCRS)]
        if not entries or entries[0].path != c.BOOT_AGGREGATE_PATH:
            problems.append("IMA list does not start with boot_aggregate")
        elif not all(boot) or not _same(entries[0].file_digest, ima.boot_aggregate(tuple(boot))):
            problems.append("boot_aggregate does not match the quoted PCRs 0-9")
        entries = entries[1:]
    if quoted is None or not _same(result.state.pcr10, quoted):
        problems.append(f"PCR {c.IMA_PCR} does not match the IMA list")
    for entry in entries:
        if entry.violation:
            runtime.append(f"{entry.path} was measured while open for write (violation)")
            continue
        reason = policy.runtime.check(entry.path, entry.file_digest)
        if reason is not None:
            runtime.append(reason)
    return problems, runtime, result.state


def _trim(details: list[str]) -> list[str]:
    if len(details) <= MAX_REASONS_PER_CHECK:
        return details
    rest = len(details) - MAX_REASONS_PER_CHECK + 1
    return [*details[: MAX_REASONS_PER_CHECK - 1], f"... and {rest} more"]


def verify(
    data: bytes,
    *,
    nonce: bytes,
    node_id: bytes,
    trusted_ak: bytes,
    policy: GoldenPolicy,
    previous: NodeState | None,
    now: float,
) -> Verdict:
    """Verify evidence ``data`` for the ``nonce`` we sent to the node ``node_id``.

    ``trusted_ak`` is the TPMT_PUBLIC of the node's enrolled AK, ``previous`` the state of
    its last accepted evidence (None for the first), ``now`` Unix seconds. Never raises on
    bad input: malformed evidence is a ``format`` failure.
    """
    try:
        e = ev.decode(data)
        attest = tpms.parse_attest(e.attest)
    except EvidenceError as exc:
        return Verdict((Failure(FORMAT, str(exc)),), None)
    failures: list[Failure] = []

    def fail(check: str, details: list[str]) -> None:
        failures.extend(Failure(check, d) for d in _trim(details))

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
        reported = {}
    elif not _same(tpms.pcr_digest(tuple(reported.values())), attest.pcr_digest):
        fail(PCR_DIGEST, ["reported PCR values do not match the quoted digest"])
        reported = {}
    elif attest.pcrs != c.QUOTE_PCRS:
        fail(PCR_DIGEST, ["quote does not cover PCRs 0-10"])

    # 4. TPM clock, counters and firmware
    fail(COUNTERS, _check_counters(attest, previous))

    # 5. boot: event log against PCRs 0-9 and the boot policy. An exit leaves the log out
    # when we said we have this boot's (``evidence.sends_boot_log``): ours is replayed
    # against this quote's PCRs and judged by today's policy, as a sent one would be.
    same_boot = previous is not None and previous.reset_count == attest.clock_info.reset_count
    boot_log = e.event_log
    if not boot_log and previous is not None and same_boot:
        boot_log = previous.event_log
    if boot_log:
        fail(BOOT, eventlog.check_boot(boot_log, reported, policy.boot))
    else:
        fail(BOOT, ["event log left out, and none kept from an earlier quote of this boot"])

    # 6-7. IMA list against PCR 10, then each entry against the runtime policy
    start = previous.ima if previous is not None and same_boot else ima.INITIAL_STATE
    ima_problems, runtime_problems, ima_state = check_ima(
        e.ima_list, e.ima_first, reported, start, policy
    )
    fail(IMA, ima_problems)
    fail(RUNTIME, runtime_problems)

    # 8. age from the signed TPM clock
    fail(AGE, _check_age(attest, previous, now, policy.max_age_s))

    if failures or ima_state is None:
        return Verdict(tuple(failures), None)
    ci = attest.clock_info
    state = NodeState(
        ci.clock,
        ci.reset_count,
        ci.restart_count,
        attest.firmware_version,
        now,
        ima_state,
        boot_log,
    )
    return Verdict((), state)
