"""``shadowmesh credentials``: the per-device credentials of an exit (run on the exit).

    shadowmesh credentials issue --config exit.yaml --name lan-c --device lan-c.key.pub \\
        --out lan-c.credentials.json          # or --certificate lan-c.cert (records its serial)
    shadowmesh credentials list --config exit.yaml
    shadowmesh credentials revoke --config exit.yaml --name lan-c

``issue`` records a new credential in the exit's table (``keys.credentials``) and writes the
device's credential file (0600; ``--add`` adds it to an existing file, for a device that uses
several exits, or an exit's relay credentials for the hops it extends to). Copy that file to
the device only over ssh/scp: it is the device's secret for this exit. ``revoke`` marks the
device's credentials revoked; a running exit re-reads the table within
``REVOCATION_POLL_S``, refuses their tokens at the gate from then on, and ends the live
tunnels of a device left without a credential (with the "revoked" close: it stops). Revoking the
device's certificate (``shadowmesh peers revoke``) cancels credentials issued against it.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from l2bridge.commands.common import guarded
from l2bridge.errors import LocalError
from l2bridge.identity.keyfiles import load_certificate
from l2bridge.identity.keys import HybridSigningKey, load_public
from l2bridge.node.config import load_config
from l2bridge.node.credfiles import (
    load_master_key,
    load_table,
    load_wallet,
    save_wallet,
    update_table,
)
from l2bridge.transport.credentials import CredentialEntry, CredentialTable, CredentialWallet
from l2bridge.transport.token import b64_bytes, b64_text


class CredentialsError(LocalError):
    """The command cannot go on; the message says what to change."""


def _exit_paths(config_path: Path) -> tuple[Path, Path, Path]:
    config = load_config(config_path, env={})
    ep, keys = config.endpoints, config.keys
    if ep.access_key_file is None or keys.credentials is None or keys.identity is None:
        raise CredentialsError(
            f"{config_path}: needs endpoints.access_key_file, keys.credentials and "
            "keys.identity (an exit's config)"
        )
    return ep.access_key_file, keys.credentials, keys.identity


def cmd_issue(ns: argparse.Namespace) -> int:
    master_path, table_path, identity_path = _exit_paths(ns.config)
    if (ns.device is None) == (ns.certificate is None):
        raise CredentialsError("give --device KEY.pub or --certificate CERT (one of them)")
    serial = None
    if ns.certificate is not None:
        cert = load_certificate(ns.certificate)
        device, serial = cert.device.node_id, cert.serial
    else:
        device = load_public(ns.device).node_id
    identity = HybridSigningKey.load(identity_path)
    try:
        node_id = identity.node_id
    finally:
        identity.wipe()
    out: Path = ns.out
    wallet = CredentialWallet()
    if out.exists():
        if not ns.add:
            raise CredentialsError(f"{out}: exists (--add adds the credential to it)")
        wallet = load_wallet(out)
    master = load_master_key(master_path)

    def issue(table: CredentialTable) -> CredentialEntry:
        now = time.time()
        entry, credential = table.issue(master, node_id, device, ns.name, now, serial=serial)
        wallet.add(credential)
        save_wallet(wallet, out)  # the device's file first: a table entry without it is harmless
        return entry

    entry = update_table(table_path, issue)
    print(f"credential   {ns.name} -> device {device.hex()[:16]} (handle {_handle(entry.handle)})")
    print(f"device file  {out}   (secret: copy it to the device over ssh/scp only)")
    return 0


def _handle(handle: bytes) -> str:
    return b64_text(handle)


def cmd_list(ns: argparse.Namespace) -> int:
    _, table_path, _ = _exit_paths(ns.config)
    table = load_table(table_path)
    print(f"{'name':<20} {'device':<16} {'issued':<17} {'handle':<22} state")
    for e in table:
        issued = datetime.fromtimestamp(e.issued, UTC).strftime("%Y-%m-%d %H:%MZ")
        state = "revoked" if e.revoked else "live"
        print(f"{e.name:<20} {e.device.hex()[:16]} {issued:<17} {_handle(e.handle):<22} {state}")
    return 0


def cmd_revoke(ns: argparse.Namespace) -> int:
    _, table_path, _ = _exit_paths(ns.config)
    if (ns.name is None) == (ns.handle is None):
        raise CredentialsError("give --name NAME or --handle HANDLE (one of them)")
    handle = None if ns.handle is None else b64_bytes(ns.handle, 16, "--handle")

    def revoke(table: CredentialTable) -> list[str]:
        revoked = table.revoke(name=ns.name, handle=handle)
        if not revoked:
            raise CredentialsError("no live credential matches")  # nothing is saved
        return revoked

    revoked = update_table(table_path, revoke)
    for h in revoked:
        print(f"revoked      {h}")
    print("the running exit refuses these tokens within a second, and ends the tunnels of a")
    print("device left without a credential")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action")
    issue = sub.add_parser("issue", help="issue a credential to one device")
    issue.add_argument("--config", type=Path, required=True, help="the exit's config")
    issue.add_argument("--name", required=True, help="the device's name (for list/revoke)")
    issue.add_argument("--device", type=Path, help="the device's public key (KEY.pub)")
    issue.add_argument("--certificate", type=Path, help="the device's certificate")
    issue.add_argument("--out", type=Path, required=True, help="the device's credential file")
    issue.add_argument("--add", action="store_true", help="add to an existing --out file")
    issue.set_defaults(func=guarded("credentials", cmd_issue))
    listing = sub.add_parser("list", help="every credential in the exit's table")
    listing.add_argument("--config", type=Path, required=True)
    listing.set_defaults(func=guarded("credentials", cmd_list))
    revoke = sub.add_parser("revoke", help="revoke a device's credentials")
    revoke.add_argument("--config", type=Path, required=True)
    revoke.add_argument("--name", help="every credential of this device name")
    revoke.add_argument("--handle", help="one credential (base64url, from list)")
    revoke.set_defaults(func=guarded("credentials", cmd_revoke))
