"""A revocation list or allow-list changed on disk under a running exit takes effect without
a restart: the refused device's running tunnel ends within a second (and at a rekey, should
one come first), and its reconnect is refused."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from exitnode.server import ExitNode, ExitOptions
from hardware import ethernet
from l2bridge.client.node import ClientNode
from l2bridge.identity.keyfiles import load_certificate, save_allow_list, save_revocations
from l2bridge.identity.keys import AllowList, HybridSigningKey
from l2bridge.node.link import Link
from l2bridge.transport.errors import TransportClosed, UpgradeRefused
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration

POLL_S = 0.1


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(100):  # bounded: 10 s
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_revoked_device_loses_tunnel_without_another_rekey_and_cannot_reconnect(
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

            # The exit has re-checked the live session already (or does so at this rekey).
            link.rekey(epoch)
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(link.recv_frames(), 10)
            assert link.rekeys_completed == 1
            await link.close()
            # Its credential was issued against the revoked certificate: the reconnect is
            # refused at the gate like a stranger's, before any handshake work.
            with pytest.raises(UpgradeRefused):
                await client.connect()
            assert node.verifier.rejected["revoked"] == 1
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def arp(n: int) -> bytes:
    src = bytes([2, 0, 0, 0, 0, n])
    body = b"\x00\x01\x08\x00\x06\x04\x00\x01" + src + bytes([10, 0, 0, n]) + bytes(10)
    return ethernet.NO_OFFLOAD + b"\xff" * 6 + src + b"\x08\x06" + body


async def closes_within(link: Link, seconds: float) -> float:
    """How long ``link`` took to end (TransportClosed on receive), at most ``seconds``."""
    start = time.monotonic()
    with pytest.raises(TransportClosed):
        while True:  # frames the exit floods may still arrive first
            await asyncio.wait_for(link.recv_frames(), seconds)
    return time.monotonic() - start


def test_revocation_and_allow_list_removal_end_running_tunnels_within_a_second(
    tmp_path: Path, fake_host: None
) -> None:
    lab, _port = nodes.make_lab(tmp_path, clients=("client", "friend"), certify=("client",))
    crl, allowed = tmp_path / "revoked.crl", tmp_path / "allowed.txt"
    save_revocations(lab.admin.sign_list([], 1), crl)
    friend_id = HybridSigningKey.load(tmp_path / "friend.identity").node_id
    save_allow_list(AllowList(((friend_id, "friend"),)), allowed)

    def with_lists(doc: dict[str, Any]) -> None:
        doc["keys"]["revocations"] = "revoked.crl"
        doc["keys"]["allow_list"] = "allowed.txt"

    exit_cfg = nodes.config(nodes.edit(lab.exit_config, with_lists))
    serial = load_certificate(tmp_path / "client.cert").serial

    async def scenario() -> None:
        client = ClientNode(nodes.config(lab.client_configs["client"]), status=False)
        friend = ClientNode(nodes.config(lab.client_configs["friend"]), status=False)
        node = ExitNode(exit_cfg, ExitOptions(status=False))  # the default poll interval
        stop = asyncio.Event()
        task = asyncio.ensure_future(node.run(stop))
        try:
            await wait_for(node.listening.is_set, "the exit to listen")
            link, other = await client.connect(), await friend.connect()
            assert isinstance(link, Link) and isinstance(other, Link)
            await wait_for(lambda: len(node.sessions) == 2, "both devices admitted")
            await link.send_frames([arp(1)])
            assert await asyncio.wait_for(other.recv_frames(), 5) == [arp(1)]

            # The certified device is revoked: its tunnel ends, the other one stays.
            revoked = lab.admin.revoke(None, serial, "lost laptop", int(time.time()))
            save_revocations(lab.admin.sign_list(revoked.entries, 2), crl)
            await closes_within(link, 1.0)
            assert link.rekeys_completed == 0  # no rekey needed to notice
            assert node.sessions.refused == 1 and len(node.sessions) == 1
            await other.send_frames([arp(2)])
            await wait_for(lambda: arp(2)[10:] in node.board.local.delivered(), "friend's frame")
            assert link.close_reason == "revoked"  # told by the close code, not a bare close
            with pytest.raises(UpgradeRefused):  # refused at the gate, like a stranger
                await client.connect()
            assert node.verifier.rejected["revoked"] == 1

            # The allow-listed device is taken off the list.
            save_allow_list(AllowList(), allowed)
            await closes_within(other, 1.0)
            assert other.close_reason != "revoked"  # not revoked, only no longer listed
            assert node.sessions.refused == 2 and len(node.sessions) == 0
            await wait_for(lambda: not node.board.clients, "both ports detached")
            with pytest.raises(TransportClosed, match="during the handshake"):
                await friend.connect()
            await link.close()
            await other.close()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
