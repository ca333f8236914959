"""Summary: one log line per interval with counts by kind, nothing when quiet."""

from __future__ import annotations

import logging

import pytest

from l2bridge.logsummary import Summary


def test_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("test.summary")
    summary = Summary(log, "probes answered", interval_s=60, monotonic=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.summary"):
        for i in range(1000):
            now[0] = i * 0.05  # 1,000 probes over 50 s: no line yet
            summary.note("decoy" if i % 2 else "timeout")
        assert caplog.records == []
        now[0] = 61.0
        summary.note("decoy")
        summary.flush()  # nothing new since the line: nothing written
    assert [r.getMessage() for r in caplog.records] == [
        "probes answered in the last 61 s: decoy 501, timeout 500"
    ]
    assert summary.total == {"decoy": 501, "timeout": 500}
