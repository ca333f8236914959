"""Measured exits for integration tests: swtpm booted and measured by the IMA harness.

swtpm has no kernel behind it; ``lab.imaharness.Kernel`` plays firmware (the TCG boot log and
PCRs 0-9, the IMA-enabling command line included) and IMA (each file an exit opens is
measured into PCR 10 and the binary list before it is read).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from eth_account import Account

from attestation import tpms
from attestation.tpm import Tpm
from contracts.constants import QUOTED_PCRS
from exitnode.lifecycle import ExitLifecycle
from hardware.tpm import Swtpm
from lab.imaharness import LAB_CMDLINE, Kernel

MNEMONIC = "test test test test test test test test test test test junk"


def accounts(n: int):  # type: ignore[no-untyped-def]
    """Anvil's first ``n`` dev accounts."""
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)]


def boot(swtpm: Swtpm, logs: Path) -> Kernel:
    """Power on: the boot log and PCRs 0-9 on ``swtpm``, boot_aggregate first in the list."""
    logs.mkdir(parents=True, exist_ok=True)
    kernel = Kernel(Tpm(swtpm.tcti), logs)
    kernel.boot(LAB_CMDLINE)
    return kernel


def load(kernel: Kernel, path: Path) -> None:
    """The exit opens ``path``: its kernel measures it first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        kernel.measure_fd(fd)
    finally:
        os.close(fd)


def pcr_digest_of(lifecycle: ExitLifecycle) -> bytes:
    """The digest of the registry's boot PCRs 0-9, as the owner approves it."""
    attest, _ = lifecycle.registry_quote(secrets.token_bytes(32), QUOTED_PCRS)
    return tpms.parse_attest(attest).pcr_digest
