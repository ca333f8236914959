"""Fixtures of the l2bridge integration tests."""

from __future__ import annotations

import pytest

from tests.integration.l2bridge import nodes


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """ExitNode's TAP and bridge become an in-memory FakeTap (no root needed)."""
    nodes.use_fake_host(monkeypatch)
