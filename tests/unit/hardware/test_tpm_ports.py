"""swtpm's two loopback ports come from outside the kernel's ephemeral range, so a burst of
client connections (TIME_WAIT everywhere in that range) cannot keep an swtpm from starting."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hardware import tpm


def test_the_pair_is_free_and_outside_the_ephemeral_range() -> None:
    low, high = tpm._ephemeral_range()
    for _ in range(20):
        port = tpm._free_port_pair()
        assert not low <= port <= high and not low <= port + 1 <= high
        assert port >= tpm.FIXED_PORTS_FROM
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))


def test_a_busy_neighbour_port_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate has p+1 taken: the search gives up with a clear error."""
    held = []
    start = tpm.FIXED_PORTS_FROM
    for p in (start + 1, start + 3):
        s = socket.socket()
        s.bind(("127.0.0.1", p))
        held.append(s)
    picks = iter([start, start + 2] * tpm.PORT_ATTEMPTS)
    monkeypatch.setattr(tpm.random, "randint", lambda a, b: next(picks))
    try:
        with pytest.raises(RuntimeError, match="no pair"):
            tpm._free_port_pair()
    finally:
        for s in held:
            s.close()


def test_an_unreadable_range_falls_back_to_linux_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tpm, "EPHEMERAL_RANGE_FILE", str(Path("/nonexistent/range")))
    assert tpm._ephemeral_range() == (32768, 60999)
