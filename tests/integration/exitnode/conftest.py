"""Fixtures of the exit's integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware.tpm import Swtpm
from lab.imaharness import EVENT_LOG, IMA_LIST
from tests.integration.measured import boot


@pytest.fixture
def swtpm() -> Iterator[Swtpm]:
    """A fresh swtpm, stopped afterwards even when a test left it stopped (SIGSTOP)."""
    tpm = Swtpm().start()
    try:
        yield tpm
    finally:
        assert tpm._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(tpm._proc.pid, signal.SIGCONT)
        tpm.stop()


@pytest.fixture
def kernel_logs(swtpm: Swtpm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Measured boot on ``swtpm`` as the IMA harness plays it (boot log, PCRs 0-9 and the
    boot_aggregate in PCR 10): the ``ima_list``/``event_log`` arguments of ExitLifecycle."""
    logs = tmp_path_factory.mktemp("kernel")
    boot(swtpm, logs).tpm.close()  # swtpm serves one connection at a time
    return {"ima_list": logs / IMA_LIST, "event_log": logs / EVENT_LOG}
