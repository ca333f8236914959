"""Each attack of a root attacker on an exit, against swtpm and the IMA harness (fanotify).

One rig per module (a manufactured swtpm, an enrolled AK, an installed copy of the
release); every attack boots a fresh exit on it and must be refused by the clients'
verifier for the reason the attack deserves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation import constants as ac
from attestation.errors import TpmError
from attestation.tpm import Tpm
from lab import tamper

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PAIR = "l2bridge/protocol/pair.py"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = tamper.Rig(tmp_path_factory.mktemp("tamper"), REPO)
    try:
        r.boot()
        r.learn()
        yield r
    finally:
        r.close()


def test_an_honest_exit_passes_twice_and_incrementally(rig):
    assert tamper.honest(rig) == ()


def test_the_tpm_refuses_to_reset_pcr10_but_resets_pcr23(rig):
    with Tpm(rig.tpm.tcti) as tpm:
        with pytest.raises(TpmError, match=r"PCR_Reset\(10\)"):
            tpm.reset_pcr(ac.IMA_PCR)
        tpm.reset_pcr(23)  # why nothing may trust PCR 23


def _runtime_reason(reasons, path):
    return any(r.startswith("runtime: ") and path in r for r in reasons)


def test_modified_installed_file_is_named(rig):
    reasons = tamper.modify_installed_file(rig)
    assert len(reasons) == 1 and _runtime_reason(reasons, PAIR), reasons


def test_modified_bytecode_is_named(rig):
    reasons = tamper.modify_bytecode(rig)
    assert _runtime_reason(reasons, "l2bridge/protocol/__pycache__/pair.cpython-"), reasons


def test_reset_pcr10_is_refused_by_the_tpm_and_the_change_still_seen(rig):
    reasons = tamper.reset_pcr10(rig)
    assert reasons[0] == "tpm: PCR_Reset(10) refused"
    assert _runtime_reason(reasons, PAIR)


@pytest.mark.parametrize(
    "attack", ["old_list_fresh_quote", "drop_entry", "reorder_entries", "edit_entry"]
)
def test_hiding_the_change_in_the_list_breaks_pcr10(rig, attack):
    reasons = getattr(tamper, attack)(rig)
    assert reasons == ("ima: PCR 10 does not match the IMA list",)


def test_extra_module_is_named(rig):
    reasons = tamper.extra_module(rig)
    assert reasons == (f"runtime: {rig.site}/l2bridge/mirror.py is not in the runtime policy",)


def test_extra_executable_is_named(rig):
    reasons = tamper.extra_executable(rig)
    assert reasons == (f"runtime: {rig.site}/exitnode/capture is not in the runtime policy",)


def test_boot_without_ima(rig):
    reasons = tamper.boot_without_ima(rig)
    assert "boot: kernel command line lacks ima_policy=tcb (booted without IMA as approved)" in (
        reasons
    )


def test_forged_boot_log(rig):
    reasons = tamper.forged_boot_log(rig)
    assert "boot: PCR 8 does not match the event log" in reasons


def test_quote_from_another_tpm(rig):
    reasons = tamper.quote_from_another_tpm(rig)
    assert reasons[0] == "signature: quote was not signed by the enrolled AK"


def test_replayed_old_quote(rig):
    reasons = tamper.replay_old_quote(rig)
    assert "nonce: evidence answers another nonce" in reasons


def test_reset_and_reextended_pcr23_changes_nothing(rig):
    reasons = tamper.reset_pcr23(rig)
    assert len(reasons) == 1 and _runtime_reason(reasons, PAIR), reasons


def test_every_attack_in_the_suite_is_tested():
    tested = {
        "modify-installed-file", "modify-bytecode", "reset-pcr10", "old-list-fresh-quote",
        "drop-entry", "reorder-entries", "edit-entry", "extra-module", "extra-executable",
        "boot-without-ima", "forged-boot-log", "quote-from-another-tpm", "replay-old-quote",
        "reset-pcr23",
    }  # fmt: skip
    assert set(tamper.ATTACKS) == tested
