"""Keys and configuration files for a lab exit and its clients (demo, tests, benchmark).

``provision(dir, ...)`` makes an organisation admin key, the exit's identity, master key
(``access.key``) and credential table (``credentials.json``), and one identity per client
(certified unless left out of ``certify``) with its own credential
(``<client>.credentials.json``), then writes ready-to-run YAML files for
``shadowmesh exit`` and ``shadowmesh client``. Private files are created mode 0600.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from l2bridge.identity.keyfiles import save_certificate
from l2bridge.identity.keys import KIND_ADMIN, AdminKey, HybridSigningKey, save_public
from lab.credlab import ExitCredentials, write_device

EXIT_PORT = 8443
CERT_LIFETIME_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Lab:
    exit_config: Path
    client_configs: dict[str, Path]
    exit_node_id: bytes
    admin: AdminKey
    directory: Path


def _network(
    tap: str, bridge: str, mtu: int, offload: bool, gro: str | None, *, rps: bool
) -> dict[str, object]:
    """``gro`` None: the key is left out, so the node runs its default (``auto``); so is
    ``rps`` unless it is True."""
    net: dict[str, object] = {
        "layer": 2, "mtu": mtu, "tap": tap, "bridge": bridge, "vnet_hdr": offload,
    }  # fmt: skip
    if gro is not None:
        net["gro"] = gro
    if rps:
        net["rps"] = True
    return net


def provision(
    directory: Path,
    *,
    exit_host: str,
    clients: tuple[str, ...] = ("client",),
    mtu: int = 1500,
    offload: bool = True,
    gro: str | None = None,
    rps: bool = False,
    bridge: str = "br0",
    port: int = EXIT_PORT,
    mode: str = "hybrid",
    rotation: str = "1h",
    certify: tuple[str, ...] | None = None,
) -> Lab:
    """Write keys and configs under ``directory``. ``certify`` lists the clients that get
    a certificate (default: all); the others have an identity the exit does not admit."""
    directory.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    admin = AdminKey(HybridSigningKey.generate())
    admin.key.save(directory / "admin.key", kind=KIND_ADMIN)
    save_public(admin.public, directory / "admin.pub")
    exit_key = HybridSigningKey.generate()
    exit_key.save(directory / "exit.identity")
    creds = ExitCredentials(exit_key.node_id)
    security = {"key_rotation_interval": rotation, "post_quantum_mode": mode}
    exit_cfg = {
        "version": "1.0",
        "security": security,
        "network": _network("smx0", bridge, mtu, offload, gro, rps=rps),
        "endpoints": {
            "listen": f"{exit_host}:{port}",
            "path": "/ws",
            "access_key_file": "access.key",
            # Lab clients reconnect often, all from one address.
            "handshakes_per_device": 1000,
            "handshakes_per_source": 100_000,
        },
        "keys": {
            "identity": "exit.identity",
            "admin_public": "admin.pub",
            "credentials": "credentials.json",
        },
        "status": {"listen": "127.0.0.1:9470"},
        "logging": {"level": "info"},
    }
    exit_path = directory / "exit.yaml"
    exit_path.write_text(yaml.safe_dump(exit_cfg, sort_keys=False))
    client_paths: dict[str, Path] = {}
    for name in clients:
        key = HybridSigningKey.generate()
        key.save(directory / f"{name}.identity")
        keys = {"identity": f"{name}.identity"}
        serial = None
        if certify is None or name in certify:
            cert = admin.issue(key.public, name, "lab", now - 60, now + CERT_LIFETIME_S)
            save_certificate(cert, directory / f"{name}.cert")
            keys["certificate"] = f"{name}.cert"
            serial = cert.serial
        # Every client passes the gate; the handshake decides (certificate or not).
        write_device(directory / f"{name}.credentials.json",
                     creds.issue(key.node_id, name, serial))  # fmt: skip
        key.wipe()
        cfg = {
            "version": "1.0",
            "security": security,
            "network": _network("smc0", bridge, mtu, offload, gro, rps=rps),
            "endpoints": {
                "connect": f"ws://{exit_host}:{port}/ws",
                "credential_file": f"{name}.credentials.json",
                "exit_node_id": exit_key.node_id.hex(),
            },
            "keys": keys,
            "status": {"listen": "127.0.0.1:9480"},
            "logging": {"level": "info"},
        }
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        client_paths[name] = path
    creds.write_exit(directory / "access.key", directory / "credentials.json")
    node_id = exit_key.node_id
    exit_key.wipe()
    return Lab(exit_path, client_paths, node_id, admin, directory)
