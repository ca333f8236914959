"""``shadowmesh init``: the files it writes load, match each other and admit the client."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from l2bridge import codec
from l2bridge.commands.main import main
from l2bridge.identity.keyfiles import load_authorizer, load_certificate, load_revocations
from l2bridge.identity.keys import HybridSigningKey, load_public, save_public
from l2bridge.node import bundle as join_bundle
from l2bridge.node.config import load_config
from l2bridge.node.credfiles import load_master_key, load_table, load_wallet
from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.token import mint_token


def _init_exit(tmp_path: Path, *extra: str) -> Path:
    d = tmp_path / "exit"
    args = ["init", "exit", "--dir", str(d), "--endpoint", "192.0.2.1:8443"]
    assert main([*args, "--client", "lan-a", *extra]) == 0
    return d


def test_exit_files_load_and_admit_the_bundled_client(tmp_path: Path) -> None:
    d = _init_exit(tmp_path)
    cfg = load_config(d / "exit.yaml", env={})
    assert cfg.endpoints.public_url == "wss://192.0.2.1:8443/ws"
    assert cfg.endpoints.listen == ("0.0.0.0", 8443)
    assert cfg.security.attestation_required is False
    for secret in ("identity.key", "admin.key", "access.key", "admin.token", "join/lan-a.join"):
        assert stat.S_IMODE((d / secret).stat().st_mode) == 0o600, secret
    # the exit's own Authorizer, from the files its config names, admits the client
    authorizer = load_authorizer([d / "admin.key.pub"], [d / "revoked.list"])
    assert load_revocations(d / "revoked.list").entries == ()
    c = tmp_path / "a"
    assert main(["init", "client", "--dir", str(c), "--join", str(d / "join/lan-a.join")]) == 0
    ccfg = load_config(c / "client.yaml", env={})
    assert ccfg.endpoints.exit_node_id == load_public(d / "identity.key.pub").node_id
    assert ccfg.endpoints.connect == cfg.endpoints.public_url
    # the client holds its own credential, not the exit's master key, and it passes the
    # exit's gate as this device
    master = load_master_key(d / "access.key")
    assert master.to_text() not in (d / "join/lan-a.join").read_text()
    assert not (c / "access.key").exists()
    assert stat.S_IMODE((c / "credentials.json").stat().st_mode) == 0o600
    node_id = load_public(d / "identity.key.pub").node_id
    verifier = TokenVerifier(master, node_id, load_table(d / "credentials.json"))
    credential = load_wallet(c / "credentials.json").for_exit(node_id)
    assert credential is not None
    admission = verifier.check(mint_token(credential, time.time()), time.time())
    key = HybridSigningKey.load(c / "identity.key")
    assert admission is not None and admission.device == key.public.node_id
    assert admission.name == "lan-a"
    cert = load_certificate(c / "device.cert")
    auth = authorizer.authorize(key.public, cert, time.time())
    assert auth.name == "lan-a"
    # the exit keeps the certificate so that it can revoke it later
    assert load_certificate(d / "certs/lan-a.cert") == cert


def test_join_with_the_devices_own_key_carries_no_private_key(tmp_path: Path) -> None:
    d = _init_exit(tmp_path)
    c = tmp_path / "c"
    assert main(["init", "client", "--dir", str(c), "--name", "lan-c"]) == 0
    pub = c / "identity.key.pub"
    args = ["init", "join", "--dir", str(d), "--name", "lan-c", "--device", str(pub)]
    assert main(args) == 0
    doc = json.loads((d / "join/lan-c.join").read_text())
    assert doc["identity"] is None
    assert main(["init", "client", "--dir", str(c), "--join", str(d / "join/lan-c.join")]) == 0
    assert load_certificate(c / "device.cert").device == load_public(pub)
    # the same bundle on another machine (another key) is refused
    other = tmp_path / "other"
    assert main(["init", "client", "--dir", str(other), "--name", "x"]) == 0
    assert main(["init", "client", "--dir", str(other), "--join", str(d / "join/lan-c.join")]) == 1


def test_nothing_is_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _init_exit(tmp_path)
    before = (d / "identity.key").read_text()
    assert main(["init", "exit", "--dir", str(d), "--endpoint", "192.0.2.9"]) == 1
    assert "already has exit.yaml" in capsys.readouterr().err
    assert (d / "identity.key").read_text() == before
    assert main(["init", "exit", "--dir", str(d), "--endpoint", "192.0.2.9", "--force"]) == 0
    assert (d / "identity.key").read_text() != before


def test_a_tampered_bundle_is_refused_naming_the_field(tmp_path: Path) -> None:
    d = _init_exit(tmp_path)
    text = (d / "join/lan-a.join").read_text()
    good = join_bundle.parse(text)
    doc = json.loads(text)
    other = HybridSigningKey.generate()

    for key, value, field in (
        ("exit_node_id", "00" * 31, "exit_node_id"),
        ("url", "http://x/ws", "url"),
        ("credential", dict(doc["credential"], handle="short"), "credential: handle"),
        ("credential", dict(doc["credential"], exit_node_id="11" * 32), "another exit"),
        ("credential", None, "credential"),
        ("mtu", 100, "mtu"),
        ("certificate", "garbage", "certificate"),
        ("identity", codec.armor("PRIVATE KEY", other.encode_private(1)), "identity"),
        ("tls_ca", "not pem", "tls_ca"),
    ):
        bad = dict(doc, **{key: value})
        with pytest.raises(join_bundle.BundleError, match=field):
            join_bundle.parse(json.dumps(bad))
    with pytest.raises(join_bundle.BundleError, match="not JSON"):
        join_bundle.parse(text[:-10])
    assert good.name == "lan-a"


def test_tls_none_writes_ws_and_no_ca(tmp_path: Path) -> None:
    d = _init_exit(tmp_path, "--tls", "none")
    cfg = load_config(d / "exit.yaml", env={})
    assert cfg.endpoints.public_url == "ws://192.0.2.1:8443/ws"
    assert cfg.endpoints.tls_cert is None
    c = tmp_path / "a"
    assert main(["init", "client", "--dir", str(c), "--join", str(d / "join/lan-a.join")]) == 0
    assert load_config(c / "client.yaml", env={}).endpoints.tls_ca is None


def test_with_tpm_and_registry_add_their_sections(tmp_path: Path) -> None:
    d = _init_exit(
        tmp_path, "--with-tpm", "--with-registry", "--rpc-url", "http://127.0.0.1:8545",
        "--contract", "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    )  # fmt: skip
    cfg = load_config(d / "exit.yaml", env={})
    assert cfg.security.attestation_required is True
    assert cfg.tpm.tcti == "device:/dev/tpmrm0"
    assert cfg.chain.rpc_url == "http://127.0.0.1:8545"
    assert main(["init", "exit", "--dir", str(tmp_path / "x"), "--endpoint", "h",
                 "--with-registry"]) == 1  # fmt: skip


def test_credentials_command_issues_lists_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _init_exit(tmp_path)
    device = HybridSigningKey.generate()
    device.save(tmp_path / "relay.key")
    save_public(device.public, tmp_path / "relay.key.pub")
    out = tmp_path / "relay.credentials.json"
    args = ["credentials", "issue", "--config", str(d / "exit.yaml"), "--name", "relay-1",
            "--device", str(tmp_path / "relay.key.pub"), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 1  # --out exists: not overwritten without --add
    assert main([*args, "--add"]) == 0
    node_id = load_public(d / "identity.key.pub").node_id
    table = load_table(d / "credentials.json")
    assert sorted(e.name for e in table) == ["lan-a", "relay-1", "relay-1"]
    credential = load_wallet(out).for_exit(node_id)
    assert credential is not None
    verifier = TokenVerifier(load_master_key(d / "access.key"), node_id, table)
    assert verifier.check(mint_token(credential, time.time()), time.time()) is not None
    capsys.readouterr()
    assert main(["credentials", "list", "--config", str(d / "exit.yaml")]) == 0
    listing = capsys.readouterr().out
    assert "relay-1" in listing and "lan-a" in listing and "revoked" not in listing
    assert main(["credentials", "revoke", "--config", str(d / "exit.yaml"),
                 "--name", "relay-1"]) == 0  # fmt: skip
    verifier.table = load_table(d / "credentials.json")
    assert verifier.check(mint_token(credential, time.time()), time.time()) is None
    assert verifier.rejected["revoked"] == 1
    # lan-a is untouched
    assert [e.revoked for e in verifier.table if e.name == "lan-a"] == [False]
    assert main(["credentials", "revoke", "--config", str(d / "exit.yaml"),
                 "--name", "nobody"]) == 1  # fmt: skip


def test_the_commented_choices_load_when_uncommented(tmp_path: Path) -> None:
    # What the files offer in comments (``# workers: auto``, ``# gro: software``) must load
    # as written once an operator removes the ``#``.
    d = _init_exit(tmp_path)
    c = tmp_path / "a"
    assert main(["init", "client", "--dir", str(c), "--join", str(d / "join/lan-a.join")]) == 0
    for path, offered in ((d / "exit.yaml", {"workers", "gro"}), (c / "client.yaml", {"gro"})):
        assert load_config(path, env={}).network.gro == "auto"  # as written: the default
        text = path.read_text()
        found = set()
        for key in offered:
            line = f"  # {key}: "
            assert line in text, (path.name, key)
            text = text.replace(line, f"  {key}: ")
            found.add(key)
        path.write_text(text)
        cfg = load_config(path, env={})
        assert cfg.network.gro == "software"
        if "workers" in found:
            assert cfg.network.workers == "auto"
