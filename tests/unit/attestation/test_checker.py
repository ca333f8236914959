import secrets
from dataclasses import replace

import pytest

from attestation import evidence as ev
from attestation import ima, verifier
from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused
from attestation.fake import FakeAttester

from .conftest import FILES, NODE_ID, NOW, load_release


def test_accepts_good_evidence_and_remembers_counters(attester, golden, nonce):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    old = attester.evidence(nonce, NODE_ID, NOW)
    checker(old, nonce, NODE_ID)
    newer_nonce = bytes(range(32))
    checker(attester.evidence(newer_nonce, NODE_ID, NOW), newer_nonce, NODE_ID)
    with pytest.raises(AttestationRefused) as info:
        checker(old, nonce, NODE_ID)  # replay: the TPM clock went backwards
    assert "counters: TPM clock went backwards" in info.value.reasons[0]


def test_refuses_a_changed_file_naming_it_every_time(attester, golden, nonce):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    attester.load("/opt/shadowmesh/l2bridge/__pycache__/codec.cpython-311.pyc", b"logs traffic")
    for _ in range(2):  # the refused entry stays in the list: refused again, not forgotten
        fresh = bytes(32)
        with pytest.raises(AttestationRefused) as info:
            checker(attester.evidence(fresh, NODE_ID, NOW), fresh, NODE_ID)
        assert info.value.reasons[0].startswith(
            "runtime: /opt/shadowmesh/l2bridge/__pycache__/codec.cpython-311.pyc has digest"
        )


def test_refuses_with_every_reason(attester, golden, nonce):
    attester.load("/tmp/evil", b"x")
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    with pytest.raises(AttestationRefused) as info:
        checker(attester.evidence(nonce, NODE_ID, NOW), bytes(32), NODE_ID)
    assert "runtime: /tmp/evil is not in the runtime policy" in info.value.reasons
    assert "nonce: evidence answers another nonce" in info.value.reasons


def test_unknown_node_and_other_ak(attester, golden, nonce):
    checker = EvidenceChecker(golden, lambda node: None, clock=lambda: NOW)
    with pytest.raises(AttestationRefused, match="no enrolled AK"):
        checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    other = FakeAttester()
    checker = EvidenceChecker(golden, {NODE_ID: other.ak_public}, clock=lambda: NOW)
    with pytest.raises(AttestationRefused, match="enrolled AK"):
        checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)


def _ima(evidence: bytes) -> tuple[int, int]:
    """(first IMA entry sent, entries sent)."""
    decoded = ev.decode(evidence)
    return decoded.ima_first, len(ima.parse_list(decoded.ima_list))


def test_since_asks_for_the_new_entries_only_and_they_still_verify(attester, golden):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    assert checker.since(NODE_ID) is None  # never checked this exit: ask for everything
    first = secrets.token_bytes(32)
    checker(attester.evidence(first, NODE_ID, NOW), first, NODE_ID)
    since = checker.since(NODE_ID)
    assert since == ev.Since(attester.reset_count, 1 + len(FILES))
    attester.load("/usr/bin/python3.11", b"interpreter")  # one more measurement
    again = secrets.token_bytes(32)
    evidence = attester.evidence(again, NODE_ID, NOW, since=since)
    assert _ima(evidence) == (since.ima_count, 1)
    full = attester.evidence(again, NODE_ID, NOW)
    assert len(evidence) < len(full)
    checker(evidence, again, NODE_ID)
    assert checker.since(NODE_ID) == ev.Since(attester.reset_count, since.ima_count + 1)


def test_since_from_an_earlier_boot_gets_the_whole_list(attester, golden):
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    first = secrets.token_bytes(32)
    checker(attester.evidence(first, NODE_ID, NOW), first, NODE_ID)
    stale = checker.since(NODE_ID)
    assert stale is not None
    attester.reboot()
    load_release(attester)
    again = secrets.token_bytes(32)
    evidence = attester.evidence(again, NODE_ID, NOW, since=stale)
    assert _ima(evidence) == (0, 1 + len(FILES))  # another boot: from the boot aggregate
    checker(evidence, again, NODE_ID)
    assert checker.since(NODE_ID) == ev.Since(stale.reset_count + 1, 1 + len(FILES))


def test_a_list_cut_anywhere_but_where_the_client_stopped_is_refused(attester, golden):
    """The exit's root decides where the list starts; the client's replay decides whether
    to believe it: skipping a measured file, or claiming an earlier boot's count after a
    reboot, never passes."""
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    first = secrets.token_bytes(32)
    checker(attester.evidence(first, NODE_ID, NOW), first, NODE_ID)
    since = checker.since(NODE_ID)
    assert since is not None
    attester.load("/tmp/evil", b"x")  # not in the policy: the entry a liar wants to hide
    attester.load("/usr/bin/python3.11", b"interpreter")
    nonce = secrets.token_bytes(32)
    hiding = attester.evidence(nonce, NODE_ID, NOW, ima_first=since.ima_count + 1)
    with pytest.raises(AttestationRefused) as info:
        checker(hiding, nonce, NODE_ID)
    assert any(
        "IMA list starts at entry 6; entries from 5 are needed" in r for r in info.value.reasons
    )
    # After a reboot, a list cut at the old boot's count has a gap for this boot.
    attester.reboot()
    load_release(attester)
    nonce = secrets.token_bytes(32)
    stale_cut = attester.evidence(nonce, NODE_ID, NOW, ima_first=since.ima_count)
    with pytest.raises(AttestationRefused) as info:
        checker(stale_cut, nonce, NODE_ID)
    assert any(r.startswith("ima: ") for r in info.value.reasons)
    # The honest answer for the same client still passes.
    nonce = secrets.token_bytes(32)
    checker(attester.evidence(nonce, NODE_ID, NOW, since=since), nonce, NODE_ID)


def test_first_entry_needs_the_same_boot_and_a_long_enough_list(attester):
    attest = ev.decode(attester.evidence(bytes(32), NODE_ID, NOW)).attest
    same = attester.reset_count
    assert ev.first_entry(None, attest, 5) == 0
    assert ev.first_entry(ev.Since(same, 3), attest, 5) == 3
    assert ev.first_entry(ev.Since(same, 5), attest, 5) == 5  # nothing new: no entries
    assert ev.first_entry(ev.Since(same, 6), attest, 5) == 0  # more than there is
    assert ev.first_entry(ev.Since(same + 1, 3), attest, 5) == 0  # another boot


def _boot_log(evidence: bytes) -> bytes:
    return ev.decode(evidence).event_log


def test_since_leaves_the_boot_log_out_and_the_kept_copy_is_replayed(attester, golden):
    """A client that asks with ``since`` has this boot's event log: the exit does not send
    it again, and the client's copy still has to replay to the new quote's PCRs 0-9."""
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    first = secrets.token_bytes(32)
    full = attester.evidence(first, NODE_ID, NOW)
    assert _boot_log(full) == attester.event_log
    checker(full, first, NODE_ID)
    since = checker.since(NODE_ID)
    again = secrets.token_bytes(32)
    short = attester.evidence(again, NODE_ID, NOW, since=since)
    assert _boot_log(short) == b""
    assert len(short) < len(full)
    checker(short, again, NODE_ID)
    # Kept across re-checks: a third one without the log passes too.
    third = secrets.token_bytes(32)
    checker(attester.evidence(third, NODE_ID, NOW, since=checker.since(NODE_ID)), third, NODE_ID)


def test_a_left_out_boot_log_is_refused_without_a_kept_copy_of_that_boot(attester, golden):
    # Never checked this exit: nothing to replay in place of the log.
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    nonce = secrets.token_bytes(32)
    bare = attester.evidence(nonce, NODE_ID, NOW, since=ev.Since(attester.reset_count, 0))
    assert _boot_log(bare) == b""
    with pytest.raises(AttestationRefused) as info:
        checker(bare, nonce, NODE_ID)
    assert "boot: event log left out, and none kept from an earlier quote of this boot" in (
        info.value.reasons
    )
    # The copy kept is of an earlier boot: after a reboot a left-out log is refused, and an
    # honest exit sends the new boot's log (the reset count differs from the client's).
    checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    stale = checker.since(NODE_ID)
    attester.reboot()
    load_release(attester)
    nonce = secrets.token_bytes(32)
    liar = attester.evidence(nonce, NODE_ID, NOW, since=ev.Since(attester.reset_count, 0))
    with pytest.raises(AttestationRefused) as info:
        checker(liar, nonce, NODE_ID)
    assert any(r.startswith("boot: event log left out") for r in info.value.reasons)
    honest = attester.evidence(nonce, NODE_ID, NOW, since=stale)
    assert _boot_log(honest) == attester.event_log
    checker(honest, nonce, NODE_ID)


def test_a_boot_pcr_moved_since_the_kept_log_is_refused(attester, golden):
    """Root extends a boot PCR after the client kept the log (to hide a changed boot behind
    a log the client already approved): the kept log no longer replays to the quote."""
    checker = EvidenceChecker(golden, {NODE_ID: attester.ak_public}, clock=lambda: NOW)
    nonce = secrets.token_bytes(32)
    checker(attester.evidence(nonce, NODE_ID, NOW), nonce, NODE_ID)
    since = checker.since(NODE_ID)
    attester.pcrs[4] = bytes(range(32))
    nonce = secrets.token_bytes(32)
    with pytest.raises(AttestationRefused) as info:
        checker(attester.evidence(nonce, NODE_ID, NOW, since=since), nonce, NODE_ID)
    assert "boot: PCR 4 does not match the event log" in info.value.reasons


def test_the_kept_boot_log_is_judged_by_the_policy_of_today(attester, golden):
    """The kept log is judged again on every check: a boot policy that stops approving it
    refuses the exit, as it would with a sent log."""
    nonce = secrets.token_bytes(32)
    first = verifier.verify(
        attester.evidence(nonce, NODE_ID, NOW),
        nonce=nonce, node_id=NODE_ID, trusted_ak=attester.ak_public, policy=golden,
        previous=None, now=NOW,
    )  # fmt: skip
    assert first.ok and first.state is not None
    since = ev.Since(first.state.reset_count, first.state.ima.count)
    nonce = secrets.token_bytes(32)
    short = attester.evidence(nonce, NODE_ID, NOW, since=since)
    stricter = replace(golden, boot=replace(golden.boot, cmdline_requires=("lockdown=integrity",)))
    verdict = verifier.verify(
        short, nonce=nonce, node_id=NODE_ID, trusted_ak=attester.ak_public, policy=stricter,
        previous=first.state, now=NOW,
    )  # fmt: skip
    assert not verdict.ok
    assert any(f.check == "boot" for f in verdict.failures)
