from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from l2bridge.commands.main import main
from l2bridge.errors import KeyFileError, NotAuthorized
from l2bridge.identity.keyfiles import load_authorizer, load_certificate, load_revocations
from l2bridge.identity.keys import HybridSigningKey, load_public

NOW = 1_700_000_000


def keys(*args: str) -> int:
    return main(["keys", *args])


@pytest.fixture
def org(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert keys("generate", "--out", "dev.key") == 0
    assert keys("admin-keygen", "--out", "admin.key") == 0
    issue = ["issue-cert", "--admin", "admin.key", "--device", "dev.key.pub", "--name", "laptop"]
    assert (
        keys(*issue, "--org", "Acme", "--days", "30", "--now", str(NOW), "--out", "dev.cert") == 0
    )
    return tmp_path


def test_generate_writes_0600_key_and_prints_node_id(org, capsys) -> None:
    assert stat.S_IMODE(os.stat("dev.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat("admin.key").st_mode) == 0o600
    capsys.readouterr()
    assert keys("node-id", "dev.key.pub") == 0
    printed = capsys.readouterr().out.strip()
    assert printed == load_public("dev.key.pub").node_id.hex()
    assert printed == HybridSigningKey.load("dev.key").node_id.hex()
    assert keys("node-id", "dev.key") == 0
    assert capsys.readouterr().out.strip() == printed


def test_generate_refuses_to_overwrite(org, capsys) -> None:
    before = Path("dev.key").read_text()
    assert keys("generate", "--out", "dev.key") == 1
    assert "exists" in capsys.readouterr().err
    assert Path("dev.key").read_text() == before
    assert keys("generate", "--out", "dev.key", "--force") == 0
    assert Path("dev.key").read_text() != before


def test_issued_certificate_authorizes_until_expiry_and_revocation(org, capsys) -> None:
    cert = load_certificate("dev.cert")
    assert (cert.name, cert.organisation, cert.expires - cert.issued) == (
        "laptop",
        "Acme",
        30 * 86400,
    )
    device = load_public("dev.key.pub")
    authorizer = load_authorizer(["admin.key.pub"])
    assert authorizer.authorize(device, cert, NOW + 5).method == "certificate"
    with pytest.raises(NotAuthorized):
        authorizer.authorize(device, cert, NOW + 31 * 86400)

    assert keys("revoke-cert", "--admin", "admin.key", "--cert", "dev.cert", "--reason", "stolen",
                "--crl", "org.crl") == 0  # fmt: skip
    assert load_revocations("org.crl").entries[0].reason == "stolen"
    with pytest.raises(NotAuthorized) as exc:
        load_authorizer(["admin.key.pub"], ["org.crl"]).authorize(device, cert, NOW + 5)
    assert exc.value.detail == "certificate revoked"
    capsys.readouterr()
    assert keys("list", "--crl", "org.crl", "--cert", "dev.cert") == 0
    out = capsys.readouterr().out
    assert cert.serial.hex() in out and "stolen" in out


def test_revocation_list_of_another_admin_is_refused(org, capsys) -> None:
    keys(
        "revoke-cert",
        "--admin",
        "admin.key",
        "--serial",
        "00" * 16,
        "--reason",
        "x",
        "--crl",
        "org.crl",
    )
    assert keys("admin-keygen", "--out", "other.key") == 0
    rc = keys("revoke-cert", "--admin", "other.key", "--serial", "11" * 16, "--reason", "x",
              "--crl", "org.crl")  # fmt: skip
    assert rc == 1
    assert "authentication failed" in capsys.readouterr().err
    with pytest.raises(KeyFileError):
        load_authorizer(["other.key.pub"], ["org.crl"])


def test_allow_list_add(org, capsys) -> None:
    assert (
        keys("allow-list", "add", "--file", "allow.txt", "--device", "dev.key.pub", "--name", "lab")
        == 0
    )
    assert keys("allow-list", "add", "--file", "allow.txt", "--device", "dev.key.pub") == 0
    authorizer = load_authorizer(allow_list_file="allow.txt")
    auth = authorizer.authorize(load_public("dev.key.pub"), None, NOW)
    assert (auth.method, auth.name) == ("allow-list", "lab")
    capsys.readouterr()
    keys("list", "--allow-list", "allow.txt")
    assert "1 device(s)" in capsys.readouterr().out


def test_bad_inputs_give_errors_not_tracebacks(org, capsys) -> None:
    os.chmod("dev.key", 0o640)
    assert keys("node-id", "dev.key") == 1
    assert "permissions" in capsys.readouterr().err
    assert keys("issue-cert", "--admin", "dev.key.pub", "--device", "dev.key.pub", "--name", "n",
                "--org", "o", "--out", "x.cert") == 1  # fmt: skip
    assert keys("issue-cert", "--admin", "admin.key", "--device", "dev.key.pub", "--name", "n",
                "--org", "o", "--days", "-1", "--out", "x.cert") == 1  # fmt: skip
    assert "expire" in capsys.readouterr().err
    assert keys("list", "--cert", "dev.key.pub") == 1
