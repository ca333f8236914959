"""Refusals a user can act on: the exit logs why and whom, the peer learns nothing, except a
revoked device, which is told so and stops retrying."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from exitnode.server import ExitNode, ExitOptions
from hardware.tap import FakeTap
from l2bridge.client.node import ClientNode
from l2bridge.client.pump import Client
from l2bridge.errors import DeviceRevoked
from l2bridge.identity.keyfiles import load_certificate, save_revocations
from l2bridge.node.config import ConfigError
from l2bridge.node.credfiles import save_wallet
from l2bridge.node.link import Link
from l2bridge.node.metrics import Metrics
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.errors import TransportClosed, UpgradeRefused
from l2bridge.transport.token import Credential
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(100):  # bounded: 10 s
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lab(tmp_path: Path) -> tuple[Any, Path]:
    lab, _port = nodes.make_lab(tmp_path, clients=("laptop", "stranger"), certify=("laptop",))
    crl = tmp_path / "revoked.crl"
    save_revocations(lab.admin.sign_list([], 1), crl)

    def with_crl(doc: dict[str, Any]) -> None:
        doc["keys"]["revocations"] = "revoked.crl"

    nodes.edit(lab.exit_config, with_crl)
    return lab, crl


def _revoke(lab: Any, crl: Path, cert: Path, sequence: int) -> None:
    serial = load_certificate(cert).serial
    revoked = lab.admin.revoke(None, serial, "lost", int(time.time()))
    save_revocations(lab.admin.sign_list(revoked.entries, sequence), crl)
    os.utime(crl, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))


def test_refusals_are_logged_with_the_device_and_a_revoked_client_stops(
    tmp_path: Path, fake_host: None, caplog: pytest.LogCaptureFixture
) -> None:
    lab, crl = _lab(tmp_path)
    exit_cfg = nodes.config(lab.exit_config)
    laptop = nodes.config(lab.client_configs["laptop"])
    stranger = nodes.config(lab.client_configs["stranger"])

    def with_wrong_key(doc: dict[str, Any]) -> None:
        # A credential for this exit that the exit never issued.
        forged = Credential(lab.exit_node_id, os.urandom(16), os.urandom(32), os.urandom(16))
        save_wallet(CredentialWallet([forged]), tmp_path / "wrong.json")
        doc["endpoints"]["credential_file"] = "wrong.json"

    wrong_key = nodes.config(nodes.edit(tmp_path / "laptop.yaml", with_wrong_key))
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        node = ExitNode(exit_cfg, ExitOptions(status=False, revocation_poll_s=0.1))
        stop = asyncio.Event()
        task = asyncio.ensure_future(node.run(stop))
        try:
            await wait_for(node.listening.is_set, "the exit to listen")
            # an uncertified device: refused, named in the exit's log, told nothing
            with pytest.raises(TransportClosed, match="during the handshake"):
                await ClientNode(stranger, status=False).connect()
            assert any(
                "tunnel refused" in r.message and "not authorized" in r.message
                and "no certificate" in r.message for r in caplog.records
            )  # fmt: skip
            # a credential the exit never issued: the client's error says what to check
            with pytest.raises(UpgradeRefused, match="credential_file"):
                await ClientNode(wrong_key, status=False).connect()
            # revoked while connected: the exit re-authorises every live tunnel when the
            # list is reloaded and ends this one with "revoked", no rekey needed; the
            # client's pump then stops instead of retrying
            client = ClientNode(laptop, status=False)
            tap = FakeTap()
            try:
                pump = Client(tap, client.connect, Metrics("client"))
                running = asyncio.ensure_future(pump.run(asyncio.Event()))
                await wait_for(pump.connected.is_set, "the laptop's tunnel")
                link = client.link
                assert isinstance(link, Link)
                _revoke(lab, crl, tmp_path / "laptop.cert", 2)
                await wait_for(lambda: node.revocations.reloads == 1, "the list to be reloaded")
                with pytest.raises(DeviceRevoked, match="revoked"):
                    await asyncio.wait_for(running, 10)
                assert link.close_reason == "revoked"
                assert pump.connections == 1
            finally:
                tap.close()
            # a reconnect is refused at the gate, before any handshake work, like a
            # stranger's: its credential was issued against the revoked certificate
            with pytest.raises(UpgradeRefused):
                await client.connect()
            assert node.verifier.rejected["revoked"] == 1
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_bind_failures_are_one_line_naming_the_setting(tmp_path: Path, fake_host: None) -> None:
    lab, _crl = _lab(tmp_path)

    def elsewhere(doc: dict[str, Any]) -> None:
        doc["endpoints"]["listen"] = "192.0.2.77:8443"  # not an address of this machine

    cfg = nodes.config(nodes.edit(lab.exit_config, elsewhere))

    async def scenario() -> None:
        node = ExitNode(cfg, ExitOptions(status=False))
        with pytest.raises(ConfigError, match=r"^endpoints\.listen \(192\.0\.2\.77:8443\): "):
            await node.run(asyncio.Event())

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_exit_command_says_which_setting_names_a_missing_file(tmp_path: Path) -> None:
    lab, _crl = _lab(tmp_path)
    (tmp_path / "exit.identity").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "l2bridge", "exit", "--config", str(lab.exit_config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("shadowmesh exit: keys.identity: ")
    assert "No such file or directory" in lines[-1]
    assert "Traceback" not in proc.stderr
