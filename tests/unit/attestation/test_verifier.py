"""The verifier against a fake TPM + kernel: every check, in Keylime's order, can fail."""

import dataclasses
import hashlib

import pytest

from attestation import constants as c
from attestation import evidence as ev
from attestation import ima, tpms
from attestation import verifier as v
from attestation.fake import FakeAttester

from .conftest import NODE_ID, NOW, load_release

PYC = "/opt/shadowmesh/l2bridge/__pycache__/codec.cpython-311.pyc"


def _verify(data, attester, golden, nonce, *, previous=None, now=NOW + 1, node_id=NODE_ID):
    return v.verify(
        data,
        nonce=nonce,
        node_id=node_id,
        trusted_ak=attester.ak_public,
        policy=golden,
        previous=previous,
        now=now,
    )


def _checks(verdict):
    return [f.check for f in verdict.failures]


def _state(attester, **changes):
    base = v.NodeState(attester.clock, 1, 0, attester.firmware_version, NOW, ima.INITIAL_STATE)
    return dataclasses.replace(base, **changes)


def test_happy_path_returns_state(attester, golden, nonce):
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.ok, verdict.reasons
    s = verdict.state
    assert (s.clock, s.reset_count, s.restart_count) == (attester.clock, 1, 0)
    assert s.ima == ima.ImaState(5, attester.pcrs[c.IMA_PCR])  # boot_aggregate + 4 files


def test_wrong_nonce(attester, golden, nonce):
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, bytes(32))
    assert _checks(verdict) == [v.NONCE, v.NONCE]
    assert verdict.state is None


def test_qualifying_data_is_the_handshake_domain(attester, golden, nonce):
    attest = tpms.parse_attest(ev.decode(attester.evidence(nonce, NODE_ID, NOW)).attest)
    expected = hashlib.sha256(b"shadowmesh/handshake/v1" + nonce + NODE_ID).digest()
    assert attest.extra_data == expected


def test_other_node_id(attester, golden, nonce):
    verdict = _verify(
        attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce, node_id=bytes(32)
    )
    assert _checks(verdict) == [v.NONCE, v.NONCE]


def test_quote_from_another_tpm(attester, golden, nonce):
    impostor = FakeAttester()
    load_release(impostor)
    verdict = _verify(impostor.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == ("signature: quote was not signed by the enrolled AK",)


def test_forged_signature_with_right_ak(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    data = ev.encode(dataclasses.replace(e, signature=FakeAttester().sign(e.attest)))
    assert _verify(data, attester, golden, nonce).reasons == (
        "signature: quote signature does not verify",
    )


def test_unrestricted_ak_is_refused_even_when_trusted(golden, nonce):
    loose = FakeAttester(attributes=c.TPMA_SIGN_ENCRYPT | c.TPMA_FIXED_TPM)
    load_release(loose)
    verdict = _verify(loose.evidence(nonce, NODE_ID, NOW), loose, golden, nonce)
    assert verdict.reasons == ("signature: AK is not a restricted signing key",)


def test_pcr_values_not_matching_quote(attester, golden, nonce):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    pcrs = tuple((i, bytes(32) if i == 3 else val) for i, val in e.pcrs)
    verdict = _verify(ev.encode(dataclasses.replace(e, pcrs=pcrs)), attester, golden, nonce)
    assert verdict.reasons[0] == "pcr-digest: reported PCR values do not match the quoted digest"
    assert v.BOOT in _checks(verdict)  # nothing unauthenticated passes as quoted


def test_quote_must_cover_pcrs_0_to_10(attester, golden, nonce):
    del attester.pcrs[c.IMA_PCR]
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert "pcr-digest: quote does not cover PCRs 0-10" in verdict.reasons
    assert f"ima: PCR {c.IMA_PCR} does not match the IMA list" in verdict.reasons


def test_boot_without_ima_is_refused(golden, nonce):
    plain = FakeAttester(cmdline="root=/dev/vda1 ro")
    load_release(plain)
    verdict = _verify(plain.evidence(nonce, NODE_ID, NOW), plain, golden, nonce)
    assert "boot: kernel command line lacks ima_policy=tcb (booted without IMA as approved)" in (
        verdict.reasons
    )
    assert "boot: PCR 8 differs from the boot policy" in verdict.reasons


def test_changed_file_is_named(attester, golden, nonce):
    attester.load(PYC, b"codec that logs traffic")
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith(f"runtime: {PYC} has digest")


def test_extra_module_and_executable_are_named(attester, golden, nonce):
    attester.load("/usr/lib/python3.11/site-packages/sniffer.py", b"x")
    attester.load("/usr/bin/tcpdump", b"y")
    attester.load("/var/lib/shadowmesh/exit-1/ak.json", b"per node")  # excluded
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == (
        "runtime: /usr/lib/python3.11/site-packages/sniffer.py is not in the runtime policy",
        "runtime: /usr/bin/tcpdump is not in the runtime policy",
    )


def test_violation_entry_is_refused(attester, golden, nonce):
    attester.measure_file(PYC, bytes(32), violation=True)
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == (f"runtime: {PYC} was measured while open for write (violation)",)


def _edit_list(attester, nonce, change):
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    entries = list(ima.parse_list(e.ima_list))
    entries = change(entries)
    raw = b"".join(ima.encode_entry(x.path, x.file_digest, violation=x.violation) for x in entries)
    return ev.encode(dataclasses.replace(e, ima_list=raw))


@pytest.mark.parametrize(
    "change",
    [
        lambda es: es[:-1],  # drop the offending entry
        lambda es: [*es[:-2], es[-1], es[-2]],  # reorder
        lambda es: [
            *es[:-1],
            dataclasses.replace(es[-1], file_digest=hashlib.sha256(b"config").digest()),
        ],
    ],
    ids=["drop", "reorder", "edit"],
)
def test_hiding_the_offending_entry_breaks_pcr10(attester, golden, nonce, change):
    attester.load("/usr/bin/tcpdump", b"sniffer")
    attester.load("/etc/shadowmesh/exit.yaml", b"other config")
    data = _edit_list(attester, nonce, change)
    verdict = _verify(data, attester, golden, nonce)
    assert f"ima: PCR {c.IMA_PCR} does not match the IMA list" in verdict.reasons


def test_list_as_it_was_before_the_change_with_a_fresh_quote(attester, golden, nonce):
    before = ev.decode(attester.evidence(nonce, NODE_ID, NOW)).ima_list
    attester.load(PYC, b"changed")
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    verdict = _verify(ev.encode(dataclasses.replace(e, ima_list=before)), attester, golden, nonce)
    assert verdict.reasons == (f"ima: PCR {c.IMA_PCR} does not match the IMA list",)


def test_boot_aggregate_must_come_first_and_match(attester, golden, nonce):
    data = _edit_list(attester, nonce, lambda es: es[1:])
    verdict = _verify(data, attester, golden, nonce)
    assert "ima: IMA list does not start with boot_aggregate" in verdict.reasons
    other = FakeAttester()
    other.pcrs = dict(attester.pcrs)  # same PCRs, but the list was made on another boot
    other.ima_list = b""
    other.measure_file(c.BOOT_AGGREGATE_PATH, bytes(32))
    load_release(other)
    other.key, other.ak_public = attester.key, attester.ak_public
    verdict = _verify(other.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert "ima: boot_aggregate does not match the quoted PCRs 0-9" in verdict.reasons


def test_incremental_recheck_only_replays_new_entries(attester, golden, nonce):
    first = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    attester.load("/usr/bin/python3.11", b"interpreter")  # an approved file, loaded again
    n = bytes(range(32))
    again = _verify(attester.evidence(n, NODE_ID, NOW), attester, golden, n, previous=first.state)
    assert again.ok and again.state.ima.count == 6
    # Only the new entries need to be sent; entries before the state's count are not.
    tail = attester.evidence(n, NODE_ID, NOW, ima_first=5)
    assert _verify(tail, attester, golden, n, previous=first.state).ok
    gap = attester.evidence(n, NODE_ID, NOW, ima_first=6)
    assert (
        "IMA list starts at entry 6"
        in _verify(gap, attester, golden, n, previous=first.state).reasons[0]
    )
    # Without state, a tail is not enough: the replay must start at boot_aggregate.
    assert not _verify(tail, attester, golden, n).ok


def test_a_reboot_starts_the_list_again(attester, golden, nonce):
    state = _state(attester, reset_count=0, ima=ima.ImaState(99, bytes(32)))
    verdict = _verify(
        attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce, previous=state
    )
    assert verdict.ok, verdict.reasons


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"reset_count": 2}, "counters: reset count went backwards (2 -> 1)"),
        ({"restart_count": 5}, "counters: restart count went backwards (5 -> 0)"),
        ({"clock": 10**9}, "counters: TPM clock went backwards"),
        (
            {"firmware_version": 0x20250101},
            "counters: TPM firmware went back (0x20250101 -> 0x20191023)",
        ),
    ],
)
def test_counters_and_firmware_never_go_back(attester, golden, nonce, changes, reason):
    data = attester.evidence(nonce, NODE_ID, NOW)
    state = _state(attester, **changes)
    if "reset_count" in changes:
        state = dataclasses.replace(state, ima=ima.INITIAL_STATE)
    verdict = _verify(data, attester, golden, nonce, previous=state)
    assert str(verdict.failures[0]).startswith(reason), verdict.reasons


def test_clock_must_be_safe(attester, golden, nonce):
    attester.safe = False
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert verdict.reasons == ("counters: TPM clock is not safe (it may have lost time)",)


def test_replayed_old_evidence(attester, golden, nonce):
    old = attester.evidence(nonce, NODE_ID, NOW)
    state = _verify(old, attester, golden, nonce).state
    fresh = bytes(range(32))
    newer = _verify(attester.evidence(fresh, NODE_ID, NOW), attester, golden, fresh, previous=state)
    assert newer.ok
    assert v.COUNTERS in _checks(_verify(old, attester, golden, nonce, previous=newer.state))
    assert v.NONCE in _checks(_verify(old, attester, golden, bytes(32), previous=newer.state))


def test_age_is_judged_from_the_signed_tpm_clock(attester, golden, nonce):
    data = attester.evidence(nonce, NODE_ID, NOW)
    seen = _state(attester, clock=attester.clock - 1, seen_at=NOW, ima=ima.INITIAL_STATE)
    # Our clock moved 1000 s, the TPM's 1 ms: the quote was made long before it was shown.
    stale = _verify(data, attester, golden, nonce, previous=seen, now=NOW + 1000)
    assert stale.reasons == ("age: TPM clock says the quote is 1000 s old (limit 300 s)",)
    assert _verify(data, attester, golden, nonce, previous=seen, now=NOW + 200).ok


def test_every_failure_is_listed_in_keylime_order(attester, golden, nonce):
    attester.load("/usr/bin/tcpdump", b"x")
    attester.safe = False
    data = attester.evidence(nonce, NODE_ID, NOW)
    e = ev.decode(data)
    data = ev.encode(dataclasses.replace(e, signature=FakeAttester().sign(e.attest)))
    verdict = _verify(data, attester, golden, bytes(32))
    assert _checks(verdict) == [v.SIGNATURE, v.NONCE, v.NONCE, v.COUNTERS, v.RUNTIME]


def test_long_lists_of_problems_are_trimmed(attester, golden, nonce):
    for i in range(50):
        attester.load(f"/opt/extra/{i}.py", b"x")
    verdict = _verify(attester.evidence(nonce, NODE_ID, NOW), attester, golden, nonce)
    assert len(verdict.reasons) == v.MAX_REASONS_PER_CHECK
    assert verdict.reasons[-1] == "runtime: ... and 31 more"


def test_malformed_evidence_is_a_format_failure(attester, golden, nonce):
    assert _checks(_verify(b"garbage", attester, golden, nonce)) == [v.FORMAT]
    e = ev.decode(attester.evidence(nonce, NODE_ID, NOW))
    bad = ev.encode(dataclasses.replace(e, attest=e.attest[:-1]))
    assert _checks(_verify(bad, attester, golden, nonce)) == [v.FORMAT]
    junk = ev.encode(dataclasses.replace(e, ima_list=e.ima_list[:-3]))
    assert _verify(junk, attester, golden, nonce).reasons[0].startswith("ima: IMA list:")
