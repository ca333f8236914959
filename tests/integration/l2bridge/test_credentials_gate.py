"""Per-device credentials at a real exit (ExitNode on loopback, its own config files).

- a revoked device's token gets the decoy's answer byte for byte like a stranger's, and
  no handshake work is done for it;
- a credential from exit A (or minted by exit A's operator for B) never opens exit B;
- the per-device quota refuses the flooding device while another device still connects.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from pathlib import Path

import pytest

from l2bridge.client.node import ClientNode
from l2bridge.commands.main import main as shadowmesh
from l2bridge.identity.keyfiles import load_certificate
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node.credfiles import load_master_key, load_wallet
from l2bridge.node.link import connect
from l2bridge.protocol.handshake import ClientHandshake
from l2bridge.transport.errors import UpgradeRefused
from l2bridge.transport.headers import browser_headers
from l2bridge.transport.token import Credential, mint_token
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


def upgrade(token: str) -> bytes:
    headers = browser_headers(
        host="127.0.0.1", origin="http://127.0.0.1",
        key=base64.b64encode(os.urandom(16)).decode(), protocol=token,
    )  # fmt: skip
    lines = ["GET /ws HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer(port: int, request: bytes) -> bytes:
    """Everything the exit sends for ``request`` followed by a half-close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(1 << 20), 10)
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
        data += chunk
    writer.close()
    return re.sub(rb"Date: [^\r]*", b"Date: -", data)


def _revoke_from_the_exit_command(lab, name: str) -> None:
    config = str(lab.exit_config)
    assert shadowmesh(["credentials", "revoke", "--config", config, "--name", name]) == 0


def test_a_revoked_credential_is_answered_like_a_stranger(tmp_path: Path, fake_host) -> None:
    lab, port = nodes.make_lab(tmp_path, clients=("laptop", "desk"))
    laptop = nodes.config(lab.client_configs["laptop"])

    async def scenario() -> None:
        async with nodes.running_exit(nodes.config(lab.exit_config)) as node:
            client = ClientNode(laptop, status=False)
            link = await client.connect()  # the credential works before it is revoked
            random_token = base64.urlsafe_b64encode(os.urandom(48)).decode()
            stranger = await answer(port, upgrade(random_token))
            assert stranger.startswith(b"HTTP/1.1 404 Not Found")
            _revoke_from_the_exit_command(lab, "laptop")
            # the exit notices the table changed and ends the device's live tunnel
            async with asyncio.timeout(10):
                while link.close_reason is None:
                    await asyncio.sleep(0.05)
            assert link.close_reason == "revoked"
            await link.close()
            credential = client.credentials.for_exit(lab.exit_node_id)
            assert credential is not None
            revoked = await answer(port, upgrade(mint_token(credential, node.clock())))
            assert revoked == stranger  # byte for byte (Date masked)
            with pytest.raises(UpgradeRefused):
                await client.connect()
            assert node.verifier.rejected["revoked"] == 2
            assert node.tunnel_health()["tokens_refused"]["revoked"] == 2
            # no handshake was started for it: the only tunnels were the first connect
            assert node.screening.total["admitted"] == 1
            # the other device is untouched
            desk = ClientNode(nodes.config(lab.client_configs["desk"]), status=False)
            await (await desk.connect()).close()

    run(scenario())


def test_exit_a_credentials_never_open_exit_b(tmp_path: Path, fake_host) -> None:
    lab_a, _ = nodes.make_lab(tmp_path / "a", clients=("laptop",))
    lab_b, port_b = nodes.make_lab(tmp_path / "b", clients=("laptop",))

    def same_admin(doc) -> None:  # one admin set up both exits: B trusts A's laptop too
        doc["keys"]["admin_public"] = str(tmp_path / "a" / "admin.pub")

    nodes.edit(lab_b.exit_config, same_admin)
    wallet_a = load_wallet(tmp_path / "a" / "laptop.credentials.json")
    cred_a = wallet_a.for_exit(lab_a.exit_node_id)
    assert cred_a is not None
    identity = HybridSigningKey.load(tmp_path / "a" / "laptop.identity")
    master_a = load_master_key(tmp_path / "a" / "access.key")
    b = lab_b.exit_node_id
    attempts = {
        # A's credential relabelled for B
        "relabelled": Credential(b, cred_a.handle, cred_a.secret, cred_a.hide),
        # A's operator derives "B's" credential from A's master key
        "minted by A's operator": Credential.derive(master_a, b, cred_a.handle),
    }

    async def scenario() -> None:
        async with nodes.running_exit(nodes.config(lab_b.exit_config)) as node_b:
            url = f"ws://127.0.0.1:{port_b}/ws"
            for why, credential in attempts.items():
                hs = ClientHandshake(identity, pinned_node_id=b)
                with pytest.raises(UpgradeRefused):
                    await connect(url, hs, credential=credential, node_id=b)
                assert node_b.screening.total["admitted"] == 0, why
            assert node_b.verifier.rejected["unknown"] + node_b.verifier.rejected["mac"] == 2
            # Only the credential was missing: once B's operator issues the laptop one of
            # B's own, the same device (same certificate) gets in.
            out = tmp_path / "laptop-at-b.json"
            issue = ["credentials", "issue", "--config", str(lab_b.exit_config), "--name",
                     "laptop-a", "--certificate", str(tmp_path / "a" / "laptop.cert"),
                     "--out", str(out)]  # fmt: skip
            assert shadowmesh(issue) == 0
            assert node_b.reload_credentials()
            own = load_wallet(out).for_exit(b)
            assert own is not None
            certificate = load_certificate(tmp_path / "a" / "laptop.cert")
            hs = ClientHandshake(identity, certificate=certificate, pinned_node_id=b)
            await (await connect(url, hs, credential=own, node_id=b)).close()
            assert node_b.screening.total["admitted"] == 1

    run(scenario())


def test_per_device_quota_refuses_the_flooder_not_the_other_device(
    tmp_path: Path, fake_host
) -> None:
    lab, _ = nodes.make_lab(tmp_path, clients=("flooder", "desk"))

    def quota_of_three(doc) -> None:
        doc["endpoints"]["handshakes_per_device"] = 3

    nodes.edit(lab.exit_config, quota_of_three)

    async def scenario() -> None:
        async with nodes.running_exit(nodes.config(lab.exit_config)) as node:
            flooder = ClientNode(nodes.config(lab.client_configs["flooder"]), status=False)
            outcomes = []
            for _ in range(6):
                try:
                    await (await flooder.connect()).close()
                    outcomes.append("connected")
                except UpgradeRefused:
                    outcomes.append("refused")
            assert outcomes == ["connected"] * 3 + ["refused"] * 3
            assert node.verifier.rejected["device quota"] == 3
            desk = ClientNode(nodes.config(lab.client_configs["desk"]), status=False)
            await (await desk.connect()).close()
            assert node.screening.total["admitted"] == 4

    run(scenario())


def test_per_source_quota_counts_every_device_behind_one_address(tmp_path: Path, fake_host) -> None:
    lab, _ = nodes.make_lab(tmp_path, clients=("laptop", "desk"))

    def source_quota_of_three(doc) -> None:
        doc["endpoints"]["handshakes_per_source"] = 3

    nodes.edit(lab.exit_config, source_quota_of_three)

    async def scenario() -> None:
        async with nodes.running_exit(nodes.config(lab.exit_config)) as node:
            laptop = ClientNode(nodes.config(lab.client_configs["laptop"]), status=False)
            desk = ClientNode(nodes.config(lab.client_configs["desk"]), status=False)
            for client in (laptop, desk, laptop):  # three tunnels from 127.0.0.1
                await (await client.connect()).close()
            with pytest.raises(UpgradeRefused):  # the fourth, whichever device
                await desk.connect()
            assert node.verifier.rejected["source quota"] == 1
            assert node.verifier.rejected["device quota"] == 0

    run(scenario())
