"""``shadowmesh peers``: the devices on a running exit, through its management API.

    shadowmesh peers list --config /etc/shadowmesh/exit.yaml
    shadowmesh peers disconnect lan-b --config ...        # ends its tunnels (it may return)
    shadowmesh peers revoke lan-b --reason lost --config ...
    shadowmesh peers reload --config ...                  # re-read revocations, log level

``revoke`` signs a new revocation list with the admin key (``--admin``, default
``admin.key`` beside the config) here, where the key is, and sends it to the exit, which
checks the signature, writes it to ``keys.revocations`` and ends the device's tunnels
with the close that tells the client it was revoked. The certificate comes from the
connected device, else ``certs/NAME.cert`` beside the config (``shadowmesh init``
keeps one per client), else ``--cert``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from l2bridge import codec
from l2bridge.commands.status import add_target_options, peer_line, request, target
from l2bridge.errors import L2BridgeError, PeerError
from l2bridge.identity.keyfiles import CRL_LABEL, load_certificate, load_revocations
from l2bridge.identity.keys import KIND_ADMIN, AdminKey, HybridSigningKey
from l2bridge.node.config import load_config


class PeersError(L2BridgeError):
    """A peers command cannot be done; the message says why."""


def _call(ns: argparse.Namespace, path: str, method: str = "GET", body: bytes | None = None) -> Any:
    code, doc = request(target(ns), path, method=method, body=body, timeout=ns.timeout)
    if code == 401:
        raise PeersError("the exit wants its admin credential: give --config or --token-file")
    if code != 200:
        error = doc.get("error") if isinstance(doc, dict) else str(doc).strip()
        raise PeersError(f"the exit answered {code}: {error}")
    return doc


def cmd_list(ns: argparse.Namespace) -> int:
    peers = _call(ns, "/peers")["peers"]
    if ns.json:
        print(json.dumps(peers, indent=2, sort_keys=True))
        return 0
    print(f"{len(peers)} device(s) connected")
    for p in peers:
        print(peer_line(p))
    return 0


def cmd_disconnect(ns: argparse.Namespace) -> int:
    code, doc = request(
        target(ns), f"/peers/{ns.device}/disconnect", method="POST", body=b"",
        timeout=ns.timeout,
    )  # fmt: skip
    if code == 404 and isinstance(doc, dict) and "disconnected" in doc:
        print(f"{ns.device} is not connected", file=sys.stderr)
        return 1
    if code != 200:
        raise PeersError(f"the exit answered {code}: {doc}")
    print(f"disconnected {ns.device} ({doc['disconnected']} tunnel(s))")
    return 0


def _serial(ns: argparse.Namespace) -> bytes:
    if ns.cert is not None:
        return load_certificate(ns.cert).serial
    for p in _call(ns, "/peers")["peers"]:
        if p["device"] == ns.device and p.get("certificate_serial"):
            return bytes.fromhex(p["certificate_serial"])
        if p["device"] == ns.device:
            raise PeersError(
                f"{ns.device} is admitted by the allow-list, not a certificate: "
                "remove it from keys.allow_list and run 'shadowmesh peers reload'"
            )
    if ns.config is not None:
        kept = ns.config.parent / "certs" / f"{ns.device}.cert"
        if kept.exists():
            return load_certificate(kept).serial
    raise PeersError(f"{ns.device} is not connected and no certificate is known: give --cert")


def cmd_revoke(ns: argparse.Namespace) -> int:
    serial = _serial(ns)
    crl_path = ns.crl
    admin_path = ns.admin
    if ns.config is not None:
        cfg = load_config(ns.config)
        crl_path = crl_path or cfg.keys.revocations
        admin_path = admin_path or ns.config.parent / "admin.key"
    if crl_path is None or admin_path is None:
        raise PeersError("give --config (or --crl and --admin)")
    admin = AdminKey(HybridSigningKey.load(admin_path, kind=KIND_ADMIN))
    try:
        current = load_revocations(crl_path) if Path(crl_path).exists() else None
        if current is not None:
            admin.public.verify(b"revocation list", current.signed_part(), current.signature)
        new = admin.revoke(current, serial, ns.reason, int(time.time()))
    finally:
        admin.key.wipe()
    body = codec.armor(CRL_LABEL, new.encode()).encode("ascii")
    doc = _call(ns, "/revocations", "POST", body)
    ended = ", ".join(doc["disconnected"]) or "none connected"
    print(f"revoked {ns.device} (serial {serial.hex()}); list #{doc['sequence']}; ended: {ended}")
    return 0


def cmd_reload(ns: argparse.Namespace) -> int:
    print(json.dumps(_call(ns, "/reload", "POST", b""), sort_keys=True))
    return 0


def _guard(func: Any) -> Any:
    def run(ns: argparse.Namespace) -> int:
        try:
            return int(func(ns))
        except PeerError as exc:  # a list on disk not signed by this admin key
            print(f"shadowmesh peers: {exc}: {exc.detail}", file=sys.stderr)
        except (L2BridgeError, ValueError) as exc:
            print(f"shadowmesh peers: {exc}", file=sys.stderr)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            print(f"shadowmesh peers: cannot reach the exit: {reason}", file=sys.stderr)
        return 1

    return run


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="peers_command", metavar="<action>")
    common = argparse.ArgumentParser(add_help=False)
    add_target_options(common)

    p = sub.add_parser("list", parents=[common], help="the connected devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_list))

    p = sub.add_parser("disconnect", parents=[common], help="end a device's tunnels")
    p.add_argument("device")
    p.set_defaults(func=_guard(cmd_disconnect))

    p = sub.add_parser("revoke", parents=[common], help="revoke a device's certificate")
    p.add_argument("device")
    p.add_argument("--reason", required=True)
    p.add_argument("--cert", type=Path, help="the device's certificate, if not connected")
    p.add_argument("--admin", type=Path, help="admin private key (default: beside --config)")
    p.add_argument("--crl", type=Path, help="the current list (default: keys.revocations)")
    p.set_defaults(func=_guard(cmd_revoke))

    p = sub.add_parser(
        "reload", parents=[common], help="re-read revocations, log level, device policies"
    )
    p.set_defaults(func=_guard(cmd_reload))
