"""``shadowmesh init``: a working exit or client in one step.

    shadowmesh init exit --endpoint 192.0.2.1:8443 --client lan-a --client lan-b
        identity, admin key, the exit's master key, an empty credential table, empty
        signed revocation list, TLS (a one-use CA and a certificate for the endpoint),
        management credential, exit.yaml, and one join bundle per client under join/
        (it holds that client's new identity and its own credential for this exit)
    shadowmesh init join --name lan-c [--device lan-c.key.pub]
        another join bundle from an existing exit directory; with --device the client
        made its own identity (``init client --name``) and the bundle holds no private key
    shadowmesh init client --join lan-a.join --lan eth1
        the client's files and client.yaml from a bundle
    shadowmesh init client --name lan-c
        only the client's identity, to send its .pub to the exit's operator

Nothing existing is overwritten (``--force`` replaces). Every config written is loaded
with the node's own loader before success is reported. Errors are one line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
import urllib.parse
from pathlib import Path

from l2bridge import codec
from l2bridge.commands.common import guarded
from l2bridge.commands.initfiles import (
    ClientPlan,
    ExitPlan,
    client_yaml,
    exit_yaml,
    write_private_tls,
)
from l2bridge.errors import LocalError
from l2bridge.identity.keyfiles import CERT_LABEL, save_certificate, save_revocations
from l2bridge.identity.keys import (
    KIND_ADMIN,
    KIND_IDENTITY,
    AdminKey,
    HybridSigningKey,
    load_public,
    save_public,
    write_private_file,
)
from l2bridge.node import bundle as join_bundle
from l2bridge.node.config import load_config
from l2bridge.node.credfiles import load_master_key, save_table, save_wallet, update_table
from l2bridge.transport.credentials import CredentialTable, CredentialWallet
from l2bridge.transport.token import MasterKey

DEFAULT_DIR = Path("/etc/shadowmesh")
DEFAULT_PORT = 8443
CERT_DAYS = 365
DAY = 86400
TOKEN_BYTES = 32


class InitError(LocalError):
    """``init`` cannot go on; the message says what to change."""


def _now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _prepare(directory: Path, files: list[str], force: bool) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [f for f in files if (directory / f).exists()]
    if existing and not force:
        raise InitError(f"{directory}: already has {', '.join(existing)} (use --force to replace)")
    for name in existing:
        (directory / name).unlink()


def _write_text(path: Path, text: str, *, private: bool = False) -> None:
    if private:
        write_private_file(path, text, force=True)
    else:
        path.write_text(text, encoding="utf-8")


def _write_token(path: Path) -> None:
    write_private_file(path, os.urandom(TOKEN_BYTES).hex() + "\n", force=True)


def _split_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InitError(f"--endpoint: expected HOST or HOST:PORT, got {text!r}")
    return host, int(port)


def _url(host: str, port: int, tls: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'wss' if tls else 'ws'}://{shown}:{port}/ws"


# --- init exit / init join ---------------------------------------------------------------


def cmd_exit(ns: argparse.Namespace) -> int:
    d: Path = ns.dir
    host, port = _split_endpoint(ns.endpoint)
    own_tls = ns.tls_cert is not None or ns.tls_key is not None
    if own_tls and (ns.tls_cert is None or ns.tls_key is None):
        raise InitError("--tls-cert and --tls-key: give both or neither")
    tls = ns.tls != "none" or own_tls
    files = ["exit.yaml", "identity.key", "identity.key.pub", "admin.key", "admin.key.pub"]
    files += ["access.key", "credentials.json", "revoked.list", "admin.token", "tls/ca.pem"]
    files.append("tls/cert.pem")
    files.append("tls/key.pem")
    if ns.with_registry and not (ns.rpc_url and ns.contract):
        raise InitError("--with-registry: needs --rpc-url and --contract")
    if not 576 <= ns.mtu <= 65535:
        raise InitError(f"--mtu: must be from 576 to 65535, got {ns.mtu}")
    _prepare(d, files, ns.force)
    identity = HybridSigningKey.generate()
    admin = AdminKey(HybridSigningKey.generate())
    try:
        identity.save(d / "identity.key", kind=KIND_IDENTITY, force=True)
        save_public(identity.public, d / "identity.key.pub")
        admin.key.save(d / "admin.key", kind=KIND_ADMIN, force=True)
        save_public(admin.public, d / "admin.key.pub")
        _write_text(d / "access.key", MasterKey.generate().to_text() + "\n", private=True)
        save_table(CredentialTable(), d / "credentials.json")
        save_revocations(admin.sign_list([], 1), d / "revoked.list")
        _write_token(d / "admin.token")
        if own_tls:
            (d / "tls").mkdir(mode=0o700, exist_ok=True)
            (d / "tls" / "cert.pem").write_bytes(Path(ns.tls_cert).read_bytes())
            _write_text(d / "tls" / "key.pem", Path(ns.tls_key).read_text("ascii"), private=True)
        elif tls:
            write_private_tls(d / "tls", host)
        plan = ExitPlan(
            listen=ns.listen or f"0.0.0.0:{port}",
            public_url=_url(host, port, tls),
            tap=ns.tap,
            bridge=ns.bridge,
            mtu=ns.mtu,
            tls=tls,
            with_tpm=ns.with_tpm,
            with_registry=ns.with_registry,
            registry_rpc=ns.rpc_url or "",
            registry_address=ns.contract or "",
        )
        (d / "exit.yaml").write_text(exit_yaml(plan, _now_text()), encoding="utf-8")
        config = load_config(d / "exit.yaml", env={})  # what we wrote must load
        print(f"exit         {d / 'exit.yaml'}")
        print(f"node id      {identity.node_id.hex()}")
        print(f"clients dial {config.endpoints.public_url}")
        for name in ns.client:
            path = _make_bundle(d, admin, name, None, ns.days)
            print(f"join bundle  {path}   (secret: copy it to {name} over ssh/scp only)")
    finally:
        identity.wipe()
        admin.key.wipe()
    print(f"start it     shadowmesh exit --config {d / 'exit.yaml'}")
    if ns.with_tpm:
        print("TPM          first start: add --ek-ca <your TPM maker's CA (PEM)> to enrol the")
        print("             AK into state/; then give each client the enrolment record and a")
        print("             golden policy (shadowmesh attest golden; docs/getting-started.md)")
    return 0


def _exit_files(d: Path) -> tuple[str, bytes, int, str | None]:
    """(public URL, node id, MTU, TLS CA PEM or None) of an init'ed exit."""
    config = load_config(d / "exit.yaml", env={})
    url = config.endpoints.public_url
    if url is None:
        raise InitError(f"{d / 'exit.yaml'}: endpoints.public_url is not set")
    node_id = load_public(d / "identity.key.pub").node_id
    ca = d / "tls" / "ca.pem"
    ca_text = ca.read_text("ascii") if ca.exists() else None
    return url, node_id, config.network.mtu, ca_text


def _make_bundle(d: Path, admin: AdminKey, name: str, device_pub: Path | None, days: float) -> Path:
    url, node_id, mtu, ca_text = _exit_files(d)
    if not name or len(name) > 64 or any(c in name for c in "/\\\x00 "):
        raise InitError(f"--name: {name!r} is not a plain device name")
    identity_text = None
    if device_pub is None:
        key = HybridSigningKey.generate()
        device = key.public
        identity_text = codec.armor("PRIVATE KEY", key.encode_private(KIND_IDENTITY))
        key.wipe()
    else:
        device = load_public(device_pub)
    now = int(time.time())
    org = load_public(d / "admin.key.pub").node_id.hex()[:16]
    cert = admin.issue(device, name, f"shadowmesh-{org}", now - 60, now + int(days * DAY))
    (d / "certs").mkdir(mode=0o700, exist_ok=True)
    save_certificate(cert, d / "certs" / f"{name}.cert")  # kept to revoke it later
    # The device's own credential for this exit, named in the exit's table (revoking the
    # certificate cancels it too: the entry records the certificate's serial).
    master = load_master_key(d / "access.key")
    _, credential = update_table(
        d / "credentials.json",
        lambda table: table.issue(master, node_id, device.node_id, name, now, serial=cert.serial),
    )
    bundle = join_bundle.JoinBundle(
        name=name,
        url=url,
        exit_node_id=node_id,
        credential=credential,
        mtu=mtu,
        certificate=codec.armor(CERT_LABEL, cert.encode()),
        tls_ca=ca_text,
        identity=identity_text,
    )
    (d / "join").mkdir(mode=0o700, exist_ok=True)
    path = d / "join" / f"{name}.join"
    write_private_file(path, bundle.to_json(), force=True)
    return path


def cmd_join(ns: argparse.Namespace) -> int:
    d: Path = ns.dir
    admin = AdminKey(HybridSigningKey.load(d / "admin.key", kind=KIND_ADMIN))
    try:
        path = _make_bundle(d, admin, ns.name, ns.device, ns.days)
    finally:
        admin.key.wipe()
    print(f"join bundle  {path}   (secret: copy it to {ns.name} over ssh/scp only)")
    return 0


# --- init client --------------------------------------------------------------------------


def cmd_client(ns: argparse.Namespace) -> int:
    d: Path = ns.dir
    if ns.join is None:
        if not ns.name:
            raise InitError("init client: give --join FILE, or --name to make an identity first")
        _prepare(d, ["identity.key", "identity.key.pub"], ns.force)
        key = HybridSigningKey.generate()
        try:
            key.save(d / "identity.key", force=True)
            save_public(key.public, d / "identity.key.pub")
        finally:
            key.wipe()
        print(f"identity     {d / 'identity.key'}")
        print(f"send         {d / 'identity.key.pub'} to the exit's operator, who runs")
        print(f"             shadowmesh init join --name {ns.name} --device <that file>")
        return 0
    try:
        text = Path(ns.join).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InitError(f"--join: cannot read {ns.join} ({type(exc).__name__})") from None
    bundle = join_bundle.parse(text)
    files = ["client.yaml", "device.cert", "credentials.json", "admin.token"]
    if bundle.identity is not None:
        files += ["identity.key", "identity.key.pub"]
    if bundle.tls_ca is not None:
        files.append("exit-ca.pem")
    _prepare(d, files, ns.force)
    cert = bundle.device_certificate()
    if bundle.identity is not None:
        key = join_bundle.identity_key(bundle.identity)
        try:
            key.save(d / "identity.key", force=True)
            save_public(key.public, d / "identity.key.pub")
        finally:
            key.wipe()
    elif not (d / "identity.key.pub").exists():
        raise InitError(f"{d}: no identity.key; this bundle was made for a device's own key")
    elif load_public(d / "identity.key.pub") != cert.device:
        raise InitError(f"--join: the bundle's certificate is for another key than {d}")
    save_certificate(cert, d / "device.cert")
    save_wallet(CredentialWallet([bundle.credential]), d / "credentials.json")
    if bundle.tls_ca is not None:
        (d / "exit-ca.pem").write_text(bundle.tls_ca, encoding="ascii")
    _write_token(d / "admin.token")
    plan = ClientPlan(
        url=bundle.url,
        exit_node_id=bundle.exit_node_id.hex(),
        tap=ns.tap,
        bridge=ns.bridge,
        mtu=bundle.mtu,
        lan_interfaces=tuple(ns.lan),
        tls_ca=bundle.tls_ca is not None,
        with_tpm=ns.with_tpm,
    )
    (d / "client.yaml").write_text(client_yaml(plan, _now_text()), encoding="utf-8")
    load_config(d / "client.yaml", env={})  # what we wrote must load
    host = urllib.parse.urlsplit(bundle.url).netloc
    print(f"client       {d / 'client.yaml'}  ({bundle.name} -> {host})")
    print(f"bridges      {', '.join(ns.lan) or '(no LAN interface yet: network.lan_interfaces)'}")
    print(f"start it     shadowmesh client --config {d / 'client.yaml'}")
    if ns.with_tpm:
        print(f"TPM          copy golden.json and exit-enrolment.json from the exit into {d}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="init_command", metavar="<role>")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"where the files go (default {DEFAULT_DIR})"
    )
    common.add_argument("--force", action="store_true", help="replace existing files")

    p = sub.add_parser("exit", parents=[common], help="set up an exit node")
    p.add_argument("--endpoint", required=True, metavar="HOST[:PORT]",
                   help=f"the address clients dial (port default {DEFAULT_PORT})")  # fmt: skip
    p.add_argument("--listen", metavar="ADDR:PORT", help="bind address (default 0.0.0.0:PORT)")
    p.add_argument("--client", action="append", default=[], metavar="NAME",
                   help="write a join bundle for this client; repeat")  # fmt: skip
    p.add_argument("--tls", choices=["self-signed", "none"], default="self-signed",
                   help="self-signed: a one-use CA shipped in the bundles (default)")  # fmt: skip
    p.add_argument("--tls-cert", help="your certificate chain (PEM) instead")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--tap", default="smx0", help="the exit's TAP device (default smx0)")
    p.add_argument("--bridge", default="br-sm", help="the exit's bridge (default br-sm)")
    p.add_argument("--mtu", type=int, default=1500, help="the LANs' MTU (default 1500)")
    p.add_argument("--days", type=float, default=CERT_DAYS, help="device certificate validity")
    p.add_argument("--with-tpm", action="store_true", help="attest with this machine's TPM")
    p.add_argument("--with-registry", action="store_true", help="register on chain")
    p.add_argument("--rpc-url", help="the chain's RPC URL (--with-registry)")
    p.add_argument("--contract", help="the registry's address (--with-registry)")
    p.set_defaults(func=guarded("init", cmd_exit))

    p = sub.add_parser("join", parents=[common], help="one more join bundle from an exit's dir")
    p.add_argument("--name", required=True)
    p.add_argument("--device", type=Path, help="the device's own public key (.pub)")
    p.add_argument("--days", type=float, default=CERT_DAYS)
    p.set_defaults(func=guarded("init", cmd_join))

    p = sub.add_parser("client", parents=[common], help="set up a client from a join bundle")
    p.add_argument("--join", help="the join bundle from the exit")
    p.add_argument("--name", help="without --join: only make this device's identity")
    p.add_argument("--lan", action="append", default=[], metavar="IFACE",
                   help="a LAN interface to bridge through the tunnel; repeat")  # fmt: skip
    p.add_argument("--tap", default="smc0", help="the client's TAP device (default smc0)")
    p.add_argument("--bridge", default="br-sm", help="the bridge the LAN joins (default br-sm)")
    p.add_argument("--with-tpm", action="store_true", help="require the exit's TPM evidence")
    p.set_defaults(func=guarded("init", cmd_client))
