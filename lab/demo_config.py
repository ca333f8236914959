"""Keys and configuration files for the full demo's two exits and two clients.

``make_keys`` writes the organisation's admin key, one identity, master key and credential
table per exit, and one certified identity per client with its own credential for every
exit (registry mode may pick either). ``exit_config`` / ``client_config`` then write
ready-to-run YAML once the chain's address is known: attestation required on the exits
(TPM by TCTI, registry upkeep every ``upkeep_s``, registration with the enroller's
voucher), registry mode on the clients (exit chosen from the chain, evidence checked
against the golden policy, re-checked every ``window_s``), and every node's clock
disciplined by its own simulated GPSDO on a pty.
Private files are created mode 0600.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from l2bridge.identity.keyfiles import save_certificate
from l2bridge.identity.keys import KIND_ADMIN, AdminKey, HybridSigningKey, save_public
from lab.credlab import ExitCredentials, write_device
from lab.imaharness import EVENT_LOG, IMA_LIST

EXIT_PORT = 8443
EXIT_STATUS = "127.0.0.1:9470"
CLIENT_STATUS = "127.0.0.1:9480"
CERT_LIFETIME_S = 86400
PATH = "/ws"


@dataclass(frozen=True, slots=True)
class Keys:
    directory: Path
    exit_ids: dict[str, bytes]  # exit name -> nodeId
    clients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Timers:
    rotation_s: float  # key rotation interval, on the clocks' epoch boundaries
    window_s: int  # the registry's attestation window = the clients' re-check interval
    upkeep_s: float  # how often an exit attests on chain (well inside the window)


def make_keys(directory: Path, exits: tuple[str, ...], clients: tuple[str, ...]) -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    admin = AdminKey(HybridSigningKey.generate())
    admin.key.save(directory / "admin.key", kind=KIND_ADMIN)
    save_public(admin.public, directory / "admin.pub")
    ids: dict[str, bytes] = {}
    for name in exits:
        key = HybridSigningKey.generate()
        key.save(directory / f"{name}.identity")
        ids[name] = key.node_id
        key.wipe()
    tables = {name: ExitCredentials(node) for name, node in ids.items()}
    for name in clients:
        key = HybridSigningKey.generate()
        key.save(directory / f"{name}.identity")
        cert = admin.issue(key.public, name, "demo", now - 60, now + CERT_LIFETIME_S)
        save_certificate(cert, directory / f"{name}.cert")
        issued = [t.issue(key.node_id, name, cert.serial) for t in tables.values()]
        write_device(directory / f"{name}.credentials.json", *issued)
        key.wipe()
    for name, table in tables.items():
        table_file = directory / f"{name}.credential-table.json"
        table.write_exit(directory / f"{name}.access.key", table_file)
    admin.key.wipe()
    return Keys(directory, ids, clients)


def _clock(device: Path) -> dict[str, object]:
    return {
        "enabled": True,
        "consensus_quorum": 1,
        "fallback": "holdover",
        "sources": [{"kind": "gpsdo", "device": str(device)}],
    }


def _common(tap: str, mtu: int, offload: bool) -> dict[str, object]:
    return {
        "version": "1.0",
        "network": {"layer": 2, "mtu": mtu, "tap": tap, "bridge": "br0", "vnet_hdr": offload},
        "logging": {"level": "info"},
    }


def exit_config(
    keys: Keys,
    name: str,
    *,
    listen_ip: str,
    tcti: str,
    rpc_url: str,
    contract: str,
    clock_device: Path,
    voucher: Path,
    timers: Timers,
    mtu: int = 1500,
    offload: bool = True,
    kernel_logs: Path | None = None,
    workers: int = 1,
) -> Path:
    """``kernel_logs``: where the IMA harness writes this exit's boot log and IMA list
    (default: the kernel's own files). ``workers``: its ``network.workers``."""
    tpm: dict[str, str] = {"tcti": tcti}
    if kernel_logs is not None:
        tpm |= {"ima_list": str(kernel_logs / IMA_LIST), "event_log": str(kernel_logs / EVENT_LOG)}
    doc = _common("smx0", mtu, offload)
    if workers > 1:
        doc["network"]["workers"] = workers  # type: ignore[index]
    doc.update(
        {
            "security": {
                "key_rotation_interval": timers.rotation_s,
                "post_quantum_mode": "hybrid",
                "attestation_required": True,
            },
            "endpoints": {
                "listen": f"{listen_ip}:{EXIT_PORT}",
                "path": PATH,
                "access_key_file": f"{name}.access.key",
            },
            "keys": {
                "identity": f"{name}.identity",
                "admin_public": "admin.pub",
                "credentials": f"{name}.credential-table.json",
            },
            "tpm": tpm,
            "chain": {
                "rpc_url": rpc_url,
                "contract_address": contract,
                "attestation_interval": timers.upkeep_s,
                "enrolment_voucher": str(voucher),
            },
            "atomic_time": _clock(clock_device),
            "status": {"listen": EXIT_STATUS},
        }
    )
    path = keys.directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def client_config(
    keys: Keys,
    name: str,
    *,
    rpc_url: str,
    contract: str,
    golden_policy: Path,
    clock_device: Path,
    timers: Timers,
    mtu: int = 1500,
    offload: bool = True,
    suffix: str = "",
) -> Path:
    doc = _common("smc0", mtu, offload)
    doc.update(
        {
            "security": {"key_rotation_interval": timers.rotation_s, "post_quantum_mode": "hybrid"},
            "endpoints": {"path": PATH, "credential_file": f"{name}.credentials.json"},
            "keys": {"identity": f"{name}.identity", "certificate": f"{name}.cert"},
            "tpm": {"golden_policy": str(golden_policy)},
            "chain": {
                "rpc_url": rpc_url,
                "contract_address": contract,
                "attestation_interval": timers.window_s,
            },
            "atomic_time": _clock(clock_device),
            "status": {"listen": CLIENT_STATUS},
        }
    )
    path = keys.directory / f"{name}{suffix}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
