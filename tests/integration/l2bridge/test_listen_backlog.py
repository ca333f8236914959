"""endpoints.listen_backlog reaches the kernel: the tunnel port's accept queue has that size."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration


def _accept_queue_limit(port: int) -> int:
    # For a listening TCP socket, ss reports the backlog limit in the Send-Q column.
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out, f"nothing listens on port {port}"
    return int(out[2])


@pytest.mark.parametrize("backlog", [77, 4096])
def test_listen_backlog_sets_the_accept_queue(
    tmp_path: Path, fake_host: None, backlog: int
) -> None:
    lab, port = nodes.make_lab(tmp_path)

    def change(doc: dict[str, Any]) -> None:
        doc["endpoints"]["listen_backlog"] = backlog

    cfg = nodes.config(nodes.edit(lab.exit_config, change))

    async def main() -> int:
        async with nodes.running_exit(cfg):
            return _accept_queue_limit(port)

    # The kernel caps the queue at net.core.somaxconn.
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert asyncio.run(main()) == min(backlog, somaxconn)
