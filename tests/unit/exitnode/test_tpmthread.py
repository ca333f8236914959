"""TpmThread: a command past its deadline raises TpmError and wedges the thread."""

from __future__ import annotations

import threading

import pytest

from attestation.errors import TpmError
from exitnode.tpmthread import TpmThread


def test_answers_and_raises_through() -> None:
    thread = TpmThread()
    assert thread.call(lambda a, b: a + b, 2, 3, timeout=5) == 5
    with pytest.raises(TpmError, match="quote failed"):
        thread.call(lambda: (_ for _ in ()).throw(TpmError("quote failed")), timeout=5)
    assert not thread.wedged
    thread.retire()


def test_overrun_wedges_and_cleanup_runs_after_the_stuck_command() -> None:
    release = threading.Event()
    order: list[str] = []
    thread = TpmThread()

    def hang() -> None:
        release.wait(10)
        order.append("stuck command returned")

    with pytest.raises(TpmError, match=r"no answer from the TPM within 0\.05 s"):
        thread.call(hang, timeout=0.05)
    assert thread.wedged
    with pytest.raises(TpmError, match="earlier command"):
        thread.call(lambda: None, timeout=5)  # refused at once, never queued
    thread.retire(lambda: order.append("closed"))
    assert thread.alive  # still stuck in the "TPM"
    release.set()
    thread._thread.join(5)
    assert not thread.alive
    assert order == ["stuck command returned", "closed"]
