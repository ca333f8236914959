"""The integration tests' ``asyncio.run`` runs on the nodes' own loop (conftest.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
import uvloop

pytestmark = pytest.mark.integration


async def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_asyncio_run_uses_the_nodes_event_loop() -> None:
    wanted_uvloop = os.environ.get("SHADOWMESH_EVENT_LOOP", "uvloop") != "asyncio"
    assert isinstance(asyncio.run(_loop()), uvloop.Loop) == wanted_uvloop
