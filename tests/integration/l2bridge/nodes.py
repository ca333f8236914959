"""Real ExitNode / ClientNode objects on loopback, with keys from lab.provision.

The exit's TAP and bridge (exitnode.host.HostSetup) are replaced by an in-memory FakeTap,
so these tests need neither root nor namespaces; everything else (config loading, key
files, the decoy server, TLS, the handshake, the switch) is the node's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitnode import server as exit_server
from exitnode.server import ExitNode, ExitOptions
from hardware.chain import free_port
from hardware.tap import FakeTap
from l2bridge.node.config import Config, load_config
from lab import provision


class FakeHost:
    """Stands in for exitnode.host.HostSetup: the exit's LAN side is a FakeTap."""

    def __init__(
        self,
        tap: Any,
        bridge: str | None,
        *,
        masquerade: Any = None,
        gro: str = "software",
        gro_fallback: bool = False,
        open_device: bool = True,
    ) -> None:
        self.tap: FakeTap | None = FakeTap() if open_device else None
        self.gro = gro

    def close(self) -> None:
        if self.tap is not None:
            self.tap.close()


def use_fake_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exit_server, "HostSetup", FakeHost)


def make_lab(directory: Path, **provision_args: Any) -> tuple[provision.Lab, int]:
    """Keys and configs for one exit on a free loopback port and its clients."""
    port = free_port()
    return provision.provision(directory, exit_host="127.0.0.1", port=port, **provision_args), port


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Apply ``change`` to the YAML config at ``path`` in place."""
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def config(path: Path) -> Config:
    return load_config(path, env={})


@contextlib.asynccontextmanager
async def running_exit(cfg: Config, **kwargs: Any) -> AsyncIterator[ExitNode]:
    """An ExitNode serving until the block ends (needs the fake_host fixture)."""
    node = ExitNode(cfg, ExitOptions(status=False), **kwargs)
    stop = asyncio.Event()
    task = asyncio.ensure_future(node.run(stop))
    listening = asyncio.ensure_future(node.listening.wait())
    try:
        await asyncio.wait({task, listening}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped the exit from starting
        assert node.listening.is_set(), "the exit did not start listening"
        yield node
    finally:
        listening.cancel()
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)
