"""``shadowmesh keys``: identities, the admin key, device certificates, revocation, allow-list.

    shadowmesh keys generate --out identity.key        # + identity.key.pub, prints the node id
    shadowmesh keys node-id identity.key.pub
    shadowmesh keys admin-keygen --out admin.key
    shadowmesh keys issue-cert --admin admin.key --device laptop.key.pub \\
        --name laptop-1 --org Acme --days 365 --out laptop.cert
    shadowmesh keys revoke-cert --admin admin.key --cert laptop.cert --reason stolen \\
        --crl revoked.list
    shadowmesh keys list --crl revoked.list --allow-list allow.list --cert laptop.cert
    shadowmesh keys allow-list add --file allow.list --device lab.key.pub --name lab-box

Private key files are created 0600 and refused when group/other can read them.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from l2bridge.errors import KeyFileError, L2BridgeError, PeerError
from l2bridge.identity.keyfiles import (
    load_allow_list,
    load_certificate,
    load_revocations,
    save_allow_list,
    save_certificate,
    save_revocations,
)
from l2bridge.identity.keys import (
    KIND_ADMIN,
    KIND_IDENTITY,
    AdminKey,
    AllowList,
    HybridPublicKey,
    HybridSigningKey,
    load_public,
    save_public,
)

DAY = 86400


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _generate(ns: argparse.Namespace, kind: int) -> int:
    key = HybridSigningKey.generate()
    try:
        key.save(ns.out, kind=kind, force=ns.force)
        save_public(key.public, f"{ns.out}.pub")
    finally:
        key.wipe()
    print(f"private key  {ns.out} (0600)")
    print(f"public key   {ns.out}.pub")
    print(f"node id      {key.node_id.hex()}")
    return 0


def _public_of(path: str) -> HybridPublicKey:
    """A public key from a .pub file or (for the owner) from a private key file."""
    try:
        return load_public(path)
    except KeyFileError:
        pass
    for kind in (KIND_IDENTITY, KIND_ADMIN):
        try:
            key = HybridSigningKey.load(path, kind=kind)
        except KeyFileError as exc:
            if "wrong key kind" in str(exc):
                continue
            raise
        key.wipe()
        return key.public
    raise KeyFileError(f"{path}: not a key file")


def cmd_node_id(ns: argparse.Namespace) -> int:
    print(_public_of(ns.key).node_id.hex())
    return 0


def cmd_issue(ns: argparse.Namespace) -> int:
    admin = AdminKey(HybridSigningKey.load(ns.admin, kind=KIND_ADMIN))
    device = _public_of(ns.device)
    issued = int(ns.now if ns.now is not None else time.time())
    expires = int(ns.expires) if ns.expires is not None else issued + int(ns.days * DAY)
    try:
        cert = admin.issue(device, ns.name, ns.org, issued, expires)
    finally:
        admin.key.wipe()
    save_certificate(cert, ns.out)
    print(f"certificate  {ns.out}")
    print(f"serial       {cert.serial.hex()}")
    print(f"device       {device.node_id.hex()}  {ns.name} / {ns.org}")
    print(f"valid        {_when(issued)} .. {_when(expires)}")
    return 0


def cmd_revoke(ns: argparse.Namespace) -> int:
    admin = AdminKey(HybridSigningKey.load(ns.admin, kind=KIND_ADMIN))
    if ns.cert:
        serial = load_certificate(ns.cert).serial
    else:
        try:
            serial = bytes.fromhex(ns.serial)
        except ValueError:
            raise KeyFileError("--serial must be hex") from None
    current = load_revocations(ns.crl) if Path(ns.crl).exists() else None
    if current is not None:
        admin.public.verify(b"revocation list", current.signed_part(), current.signature)
    try:
        rl = admin.revoke(current, serial, ns.reason, int(time.time()))
    finally:
        admin.key.wipe()
    save_revocations(rl, ns.crl)
    print(f"revoked      {serial.hex()} ({ns.reason}); {ns.crl} now #{rl.sequence}")
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    if ns.crl:
        rl = load_revocations(ns.crl)
        print(f"revocation list {ns.crl}: issuer {rl.issuer.hex()} #{rl.sequence}")
        for e in rl.entries:
            print(f"  {e.serial.hex()}  {_when(e.revoked_at)}  {e.reason}")
    if ns.allow_list:
        allow = load_allow_list(ns.allow_list)
        print(f"allow-list {ns.allow_list}: {len(allow.entries)} device(s)")
        for device_id, name in allow.entries:
            print(f"  {device_id.hex()}  {name}")
    for path in ns.cert or ():
        cert = load_certificate(path)
        print(f"certificate {path}: serial {cert.serial.hex()}")
        print(f"  device  {cert.device.node_id.hex()}  {cert.name} / {cert.organisation}")
        print(f"  valid   {_when(cert.issued)} .. {_when(cert.expires)}")
        print(f"  issuer  {cert.issuer.hex()}")
    return 0


def cmd_allow_add(ns: argparse.Namespace) -> int:
    allow = load_allow_list(ns.file) if Path(ns.file).exists() else AllowList()
    device = _public_of(ns.device)
    allow = allow.add(device.node_id, ns.name or Path(ns.device).name)
    save_allow_list(allow, ns.file)
    print(f"allowed      {device.node_id.hex()} in {ns.file} ({len(allow.entries)} device(s))")
    return 0


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(ns: argparse.Namespace) -> int:
        try:
            return int(func(ns))
        except PeerError as exc:  # e.g. a revocation list not signed by this admin
            print(f"shadowmesh keys: {exc}: {exc.detail}", file=sys.stderr)
        except (L2BridgeError, ValueError) as exc:
            print(f"shadowmesh keys: {exc}", file=sys.stderr)
        return 1

    return run


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="<action>")

    for name, kind, text in (
        ("generate", KIND_IDENTITY, "new device/exit identity (Ed25519 + ML-DSA-87)"),
        ("admin-keygen", KIND_ADMIN, "new organisation admin key"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--out", required=True, help="private key file (public key: <out>.pub)")
        p.add_argument("--force", action="store_true", help="replace an existing file")
        p.set_defaults(func=_guard(functools.partial(_generate, kind=kind)))

    p = sub.add_parser("node-id", help="print the node id (SHA-256 of the public keys)")
    p.add_argument("key", help="public (.pub) or private key file")
    p.set_defaults(func=_guard(cmd_node_id))

    p = sub.add_parser("issue-cert", help="issue a device certificate with the admin key")
    p.add_argument("--admin", required=True, help="admin private key file")
    p.add_argument("--device", required=True, help="device public key (.pub) file")
    p.add_argument("--name", required=True)
    p.add_argument("--org", required=True)
    p.add_argument("--days", type=float, default=365.0, help="validity (default 365)")
    p.add_argument("--expires", type=int, help="expiry as unix seconds (overrides --days)")
    p.add_argument("--now", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="certificate file to write")
    p.set_defaults(func=_guard(cmd_issue))

    p = sub.add_parser("revoke-cert", help="add a certificate to the signed revocation list")
    p.add_argument("--admin", required=True, help="admin private key file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert", help="certificate file")
    which.add_argument("--serial", help="certificate serial (hex)")
    p.add_argument("--reason", required=True)
    p.add_argument("--crl", required=True, help="revocation list file (created if missing)")
    p.set_defaults(func=_guard(cmd_revoke))

    p = sub.add_parser("list", help="show revocations, allow-list entries, certificates")
    p.add_argument("--crl")
    p.add_argument("--allow-list")
    p.add_argument("--cert", action="append")
    p.set_defaults(func=_guard(cmd_list))

    p = sub.add_parser("allow-list", help="manage an exit's allow-list")
    allow_sub = p.add_subparsers(dest="allow_command", metavar="<action>")
    add = allow_sub.add_parser("add", help="allow a device without a certificate")
    add.add_argument("--file", required=True, help="allow-list file (created if missing)")
    add.add_argument("--device", required=True, help="device public key (.pub) file")
    add.add_argument("--name", help="label (default: the file name)")
    add.set_defaults(func=_guard(cmd_allow_add))
