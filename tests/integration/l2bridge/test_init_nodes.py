"""An exit and a client made by ``shadowmesh init`` alone connect (wss, pinned node id)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hardware.chain import free_port
from l2bridge.client.node import ClientNode
from l2bridge.commands.main import main
from l2bridge.node.link import Link
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration


def test_init_exit_and_client_connect(tmp_path: Path, fake_host: None) -> None:
    port = free_port()
    d, c = tmp_path / "exit", tmp_path / "a"
    assert main(["init", "exit", "--dir", str(d), "--endpoint", f"127.0.0.1:{port}",
                 "--listen", f"127.0.0.1:{port}", "--client", "lan-a"]) == 0  # fmt: skip
    assert main(["init", "client", "--dir", str(c), "--join", str(d / "join/lan-a.join")]) == 0
    exit_cfg, client_cfg = nodes.config(d / "exit.yaml"), nodes.config(c / "client.yaml")

    async def scenario() -> None:
        async with nodes.running_exit(exit_cfg):
            link = await ClientNode(client_cfg, status=False).connect()
            assert isinstance(link, Link)
            assert link.session.established
            await link.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
