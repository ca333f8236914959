"""Integration tests run the nodes' code on the event loop the nodes run on: uvloop, as
``l2bridge.commands.common.event_loop_factory`` picks it (``SHADOWMESH_EVENT_LOOP=asyncio``
runs them on asyncio's own loop instead). The two loops differ where it matters: uvloop
starts reading an accepted socket whatever ``connection_made`` asked, which once hung TLS
handshakes that every test on asyncio's loop passed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop

from l2bridge.commands.common import event_loop_factory


@pytest.fixture(autouse=True)
def _nodes_event_loop() -> Iterator[None]:
    if event_loop_factory() is None:
        yield
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(None)
