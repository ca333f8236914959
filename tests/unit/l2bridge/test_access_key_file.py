"""The exit's master key and a device's credential file are secrets: the node that reads
each refuses a file group or others can read."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitnode.errors import ExitConfigError
from exitnode.server import ExitNode, ExitOptions
from l2bridge.client.node import ClientNode
from l2bridge.node.config import ConfigError, load_config
from lab import provision


@pytest.fixture
def files(tmp_path: Path) -> provision.Lab:
    return provision.provision(tmp_path, exit_host="127.0.0.1")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_loose_secrets_are_refused(files: provision.Lab, mode: int) -> None:
    (files.directory / "access.key").chmod(mode)
    (files.directory / "client.credentials.json").chmod(mode)
    with pytest.raises(ConfigError, match=r"credential_file: .*permissions too open"):
        ClientNode(load_config(files.client_configs["client"], env={}), status=False)
    with pytest.raises(ExitConfigError, match=r"access_key_file: .*permissions too open"):
        ExitNode(load_config(files.exit_config, env={}), ExitOptions(status=False))


def test_private_secrets_are_accepted_and_the_client_holds_no_master_key(
    files: provision.Lab,
) -> None:
    assert (files.directory / "access.key").stat().st_mode & 0o077 == 0
    client = ClientNode(load_config(files.client_configs["client"], env={}), status=False)
    node = ExitNode(load_config(files.exit_config, env={}), ExitOptions(status=False))
    assert node.master_key.to_text() == (files.directory / "access.key").read_text().strip()
    credential = client.credentials.for_exit(files.exit_node_id)
    assert credential is not None and credential.secret != node.master_key.secret
    assert (
        node.master_key.to_text() not in (files.directory / "client.credentials.json").read_text()
    )
    assert node.settings.verifier is node.verifier


def test_a_writable_credential_table_is_refused(files: provision.Lab) -> None:
    (files.directory / "credentials.json").chmod(0o666)
    with pytest.raises(ExitConfigError, match=r"keys\.credentials: .*writable by group or others"):
        ExitNode(load_config(files.exit_config, env={}), ExitOptions(status=False))
