"""The access key is a secret: both node processes refuse a file group or others can read."""

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
def test_loose_access_key_is_refused_by_both_nodes(files: provision.Lab, mode: int) -> None:
    (files.directory / "access.key").chmod(mode)
    with pytest.raises(ConfigError, match=r"access_key_file: .*permissions too open"):
        ClientNode(load_config(files.client_configs["client"], env={}), status=False)
    with pytest.raises(ExitConfigError, match=r"access_key_file: .*permissions too open"):
        ExitNode(load_config(files.exit_config, env={}), ExitOptions(status=False))


def test_private_access_key_is_accepted(files: provision.Lab) -> None:
    assert (files.directory / "access.key").stat().st_mode & 0o077 == 0
    client = ClientNode(load_config(files.client_configs["client"], env={}), status=False)
    node = ExitNode(load_config(files.exit_config, env={}), ExitOptions(status=False))
    assert client.access_key.to_text() == (files.directory / "access.key").read_text().strip()
    assert node.settings.verifier is not None
