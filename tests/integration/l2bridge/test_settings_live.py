"""Settings that only show in a running exit: one tunnel per identity, the MTU warning,
the audit trail, status.metrics_listen, and ``shadowmesh peers`` against the exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from exitnode.server import ExitNode, ExitOptions
from hardware.chain import free_port
from l2bridge.client.node import ClientNode
from l2bridge.commands.main import main
from l2bridge.node import audit as audit_log
from l2bridge.node.config import Config
from l2bridge.node.credfiles import load_table
from l2bridge.node.link import Link
from l2bridge.transport.errors import UpgradeRefused
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(100):  # bounded: 10 s
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _init(tmp_path: Path, *clients: str) -> tuple[Path, int, int, int]:
    port, status, metrics = free_port(), free_port(), free_port()
    d = tmp_path / "exit"
    args = ["init", "exit", "--dir", str(d), "--endpoint", f"127.0.0.1:{port}",
            "--listen", f"127.0.0.1:{port}", "--tls", "none"]  # fmt: skip
    for name in clients:
        args += ["--client", name]
    assert main(args) == 0
    for name in clients:
        assert main(["init", "client", "--dir", str(tmp_path / name),
                     "--join", str(d / "join" / f"{name}.join")]) == 0  # fmt: skip
    return d, port, status, metrics


@contextlib.asynccontextmanager
async def running(cfg: Config, config_path: Path | None = None) -> AsyncIterator[ExitNode]:
    node = ExitNode(cfg, ExitOptions(status=True, config_path=config_path))
    stop = asyncio.Event()
    task = asyncio.ensure_future(node.run(stop))
    try:
        await wait_for(lambda: node.listening.is_set() or task.done(), "the exit to listen")
        if task.done():
            task.result()
        yield node
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)


def _exit_cfg(d: Path, status: int, metrics: int, **security: Any) -> Config:
    def change(doc: dict[str, Any]) -> None:
        doc["status"]["listen"] = f"127.0.0.1:{status}"
        doc["status"]["metrics_listen"] = f"127.0.0.1:{metrics}"
        doc["security"].update(security)
        doc["logging"]["audit"] = True

    return nodes.config(nodes.edit(d / "exit.yaml", change))


@pytest.mark.parametrize("limit", [1, 2])
def test_one_tunnel_per_identity_unless_configured(
    tmp_path: Path, fake_host: None, limit: int
) -> None:
    d, _port, status, metrics = _init(tmp_path, "lan-a")
    exit_cfg = _exit_cfg(d, status, metrics, tunnels_per_device=limit)
    client_cfg = nodes.config(tmp_path / "lan-a" / "client.yaml")

    async def scenario() -> None:
        async with running(exit_cfg) as node:
            first = await ClientNode(client_cfg, status=False).connect()
            await wait_for(lambda: len(node.peers) == 1, "the first tunnel")
            second = await ClientNode(client_cfg, status=False).connect()
            assert isinstance(first, Link) and isinstance(second, Link)
            if limit == 1:  # the newer tunnel wins, the older one ends
                # (the exit forgets the old peer just after its close reaches the client)
                await wait_for(lambda: first.close_reason is not None and len(node.peers) == 1,
                               "the old tunnel to end")  # fmt: skip
                assert second.close_reason is None
            else:
                await wait_for(lambda: len(node.peers) == 2, "both tunnels")
                await asyncio.sleep(0.3)
                assert first.close_reason is None and second.close_reason is None
            for link in (first, second):
                await link.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_mtu_mismatch_audit_metrics_listen_and_peers_commands(
    tmp_path: Path, fake_host: None, caplog: pytest.LogCaptureFixture
) -> None:
    d, _port, status, metrics = _init(tmp_path, "lan-a", "lan-b")
    exit_cfg = _exit_cfg(d, status, metrics)
    nodes.edit(tmp_path / "lan-b" / "client.yaml", lambda doc: doc["network"].update(mtu=1400))
    a_cfg = nodes.config(tmp_path / "lan-a" / "client.yaml")
    b_cfg = nodes.config(tmp_path / "lan-b" / "client.yaml")
    conf = ["--config", str(d / "exit.yaml")]
    caplog.set_level(logging.INFO)
    audit_log.configure(True)

    def cli(*args: str) -> int:
        return main(list(args))

    async def scenario() -> None:
        async with running(exit_cfg, d / "exit.yaml") as node:
            a = await ClientNode(a_cfg, status=False).connect()
            b_node = ClientNode(b_cfg, status=False)
            b = await b_node.connect()
            assert isinstance(a, Link) and isinstance(b, Link)
            await asyncio.sleep(0.2)
            mtu = [r.message for r in caplog.records if "network.mtu" in r.message]
            assert len(mtu) == 1 and "lan-b" in mtu[0] and "1400" in mtu[0] and "1500" in mtu[0]
            # status.metrics_listen: metrics and health, nothing else
            base = f"http://127.0.0.1:{metrics}"
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + "/metrics", timeout=5).read()
            )
            assert b"shadowmesh_frames_total" in text
            with pytest.raises(urllib.error.HTTPError):
                await asyncio.to_thread(urllib.request.urlopen, base + "/peers", None, 5)
            # shadowmesh peers, over the management API, against this running exit
            assert await asyncio.to_thread(cli, "peers", "list", "--json", *conf) == 0
            assert await asyncio.to_thread(cli, "peers", "disconnect", "lan-a", *conf) == 0
            await wait_for(lambda: a.close_reason is not None, "lan-a's tunnel to end")
            assert a.close_reason != "revoked"  # disconnected, free to come back
            assert await asyncio.to_thread(cli, "peers", "disconnect", "lan-a", *conf) == 1
            assert (
                await asyncio.to_thread(
                    cli, "peers", "revoke", "lan-b", "--reason", "stolen", *conf
                )
                == 0
            )
            await wait_for(lambda: b.close_reason is not None, "lan-b's tunnel to end")
            assert b.close_reason == "revoked"
            # the management API's revocation cancelled lan-b's credential too: its
            # reconnect is answered as a web server, and the table on disk says revoked
            with pytest.raises(UpgradeRefused):
                await b_node.connect()
            assert node.verifier.rejected["revoked"] == 1
            table = load_table(d / "credentials.json")
            assert {e.name: e.revoked for e in table} == {"lan-a": False, "lan-b": True}
            # lan-a, only disconnected, comes back
            again = await ClientNode(a_cfg, status=False).connect()
            assert isinstance(again, Link) and again.close_reason is None
            assert await asyncio.to_thread(cli, "peers", "reload", *conf) == 0
            await again.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        audit_log.configure(False)
    events = [json.loads(r.message)["event"] for r in caplog.records
              if r.name == "shadowmesh.audit"]  # fmt: skip
    for event in ("device_admitted", "device_disconnected", "revocations_installed",
                  "tunnel_refused"):  # fmt: skip
        assert event in events, events
    assert time.time() > 0


def _window_excluding_now() -> str:
    minute = int(time.time() // 60) % 1440
    start = (minute + 60) % 1440  # opens in an hour, for an hour
    end = (start + 60) % 1440
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def test_device_policy_is_enforced_and_reloadable(
    tmp_path: Path, fake_host: None, caplog: pytest.LogCaptureFixture
) -> None:
    d, _port, status, metrics = _init(tmp_path, "lan-a", "lan-b")

    def policies(vlans: list[int]) -> Any:
        def change(doc: dict[str, Any]) -> None:
            doc["devices"] = {
                "lan-a": {"vlans": vlans, "rate": "80mbit"},
                "lan-b": {"hours": _window_excluding_now()},
            }

        return change

    nodes.edit(d / "exit.yaml", policies([0]))
    exit_cfg = _exit_cfg(d, status, metrics)
    a_cfg = nodes.config(tmp_path / "lan-a" / "client.yaml")
    b_cfg = nodes.config(tmp_path / "lan-b" / "client.yaml")
    conf = ["--config", str(d / "exit.yaml")]
    caplog.set_level(logging.INFO)

    async def peers() -> list[dict[str, Any]]:
        node_peers = node_ref[0].peers
        return [p.describe(time.time(), time.monotonic(), None) for p in node_peers]

    node_ref: list[ExitNode] = []

    async def scenario() -> None:
        async with running(exit_cfg, d / "exit.yaml") as node:
            node_ref.append(node)
            a = await ClientNode(a_cfg, status=False).connect()
            assert isinstance(a, Link)
            await wait_for(lambda: len(node.peers) == 1, "lan-a admitted")
            assert (await peers())[0]["vlans"] == [0]
            # outside its hours, lan-b is refused (and told nothing but a close)
            b = await ClientNode(b_cfg, status=False).connect()
            assert isinstance(b, Link)
            await wait_for(lambda: b.close_reason is not None, "lan-b's tunnel to end")
            assert any("lan-b refused: outside its hours" in r.message for r in caplog.records)
            # a changed policy, reloaded: lan-a's tunnel ends and it returns under the new one
            nodes.edit(d / "exit.yaml", policies([0, 10]))
            assert await asyncio.to_thread(main, ["peers", "reload", *conf]) == 0
            await wait_for(lambda: a.close_reason is not None, "lan-a's tunnel to end")
            again = await ClientNode(a_cfg, status=False).connect()
            assert isinstance(again, Link)
            await wait_for(lambda: len(node.peers) == 1, "lan-a back")
            assert (await peers())[0]["vlans"] == [0, 10]
            await again.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
