"""A revocation list changed on disk under a running exit takes effect without a restart:
the revoked device's tunnel ends at its next rekey and its reconnect is refused."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from exitnode.server import ExitNode, ExitOptions
from l2bridge.client.node import ClientNode
from l2bridge.errors import DeviceRevoked
from l2bridge.identity.keyfiles import load_certificate, save_revocations
from l2bridge.node.link import Link
from l2bridge.transport.errors import TransportClosed
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration

POLL_S = 0.1


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(100):  # bounded: 10 s
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_revoked_device_loses_tunnel_at_rekey_and_cannot_reconnect(
    tmp_path: Path, fake_host: None
) -> None:
    lab, _port = nodes.make_lab(tmp_path)
    crl = tmp_path / "revoked.crl"
    save_revocations(lab.admin.sign_list([], 1), crl)

    def with_crl(doc: dict[str, Any]) -> None:
        doc["keys"]["revocations"] = "revoked.crl"

    exit_cfg = nodes.config(nodes.edit(lab.exit_config, with_crl))
    client_cfg = nodes.config(lab.client_configs["client"])
    serial = load_certificate(tmp_path / "client.cert").serial

    async def scenario() -> None:
        client = ClientNode(client_cfg, status=False)
        options = ExitOptions(status=False, revocation_poll_s=POLL_S)
        node = ExitNode(exit_cfg, options)
        stop = asyncio.Event()
        task = asyncio.ensure_future(node.run(stop))
        try:
            await wait_for(node.listening.is_set, "the exit to listen")
            link = await client.connect()
            assert isinstance(link, Link)
            epoch = int(time.time() // 3600)  # provision's rotation interval is 1h
            assert link.rekey(epoch)
            await wait_for(lambda: link.rekeys_completed == 1, "a rekey before the revocation")

            revoked = lab.admin.revoke(None, serial, "lost laptop", int(time.time()))
            save_revocations(lab.admin.sign_list(revoked.entries, 2), crl)
            os.utime(crl, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
            await wait_for(lambda: node.revocations.reloads == 1, "the list to be reloaded")

            assert link.rekey(epoch)  # the exit asks the Authorizer again and says no
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(link.recv_frames(), 10)
            assert link.rekeys_completed == 1
            await link.close()
            with pytest.raises(DeviceRevoked, match="revoked"):
                await client.connect()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
