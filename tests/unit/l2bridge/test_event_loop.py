"""The nodes' event loop: uvloop by default, asyncio's own on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from l2bridge.commands.common import EVENT_LOOP_ENV, event_loop_factory, run_node


def _loop_type_seen() -> type[asyncio.AbstractEventLoop]:
    seen: list[type[asyncio.AbstractEventLoop]] = []

    async def node(stop: asyncio.Event) -> None:
        seen.append(type(asyncio.get_running_loop()))
        stop.set()
        await stop.wait()

    run_node(node)
    return seen[0]


def test_nodes_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert event_loop_factory() is uvloop.new_event_loop
    assert issubclass(_loop_type_seen(), uvloop.Loop)


def test_asyncio_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert event_loop_factory() is None
    assert not issubclass(_loop_type_seen(), uvloop.Loop)
