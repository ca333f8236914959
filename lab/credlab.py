"""Per-device credentials for labs, tests and benchmarks (transport.token, .credentials).

``ExitCredentials(node_id)`` is one exit's master key and credential table in memory:
``issue(device_id)`` returns the device's credential, ``verifier()`` the exit's gate check.
``write_exit`` / ``write_device`` put the same on disk as a real exit and client read them
(``endpoints.access_key_file`` + ``keys.credentials``; ``endpoints.credential_file``).

In-process labs keep every exit's credentials in ``LAB_EXITS`` (``lab_exit(node_id)``), and
a ``LabWallet`` asks the exit for the device's credential the first time it dials it, as an
operator would have issued it beforehand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2bridge.identity.keys import write_private_file
from l2bridge.node.credfiles import load_wallet, save_table, save_wallet
from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.credentials import CredentialTable, CredentialWallet
from l2bridge.transport.token import Credential, MasterKey

# Labs and benchmarks connect many times a minute from one address; the defaults
# (20 a minute per device) are for real exits.
LAB_HANDSHAKES_PER_DEVICE = 100_000
LAB_HANDSHAKES_PER_SOURCE = 1_000_000


@dataclass
class ExitCredentials:
    node_id: bytes
    master: MasterKey = field(default_factory=MasterKey.generate)
    table: CredentialTable = field(default_factory=CredentialTable)

    def issue(self, device: bytes, name: str = "device", serial: bytes | None = None) -> Credential:
        return self.table.issue(self.master, self.node_id, device, name, time.time(),
                                serial=serial)[1]  # fmt: skip

    def verifier(self, **kwargs: Any) -> TokenVerifier:
        kwargs.setdefault("per_device", LAB_HANDSHAKES_PER_DEVICE)
        kwargs.setdefault("per_source", LAB_HANDSHAKES_PER_SOURCE)
        return TokenVerifier(self.master, self.node_id, self.table, **kwargs)

    def write_exit(self, master_path: Path, table_path: Path) -> None:
        write_private_file(master_path, self.master.to_text() + "\n", force=True)
        save_table(self.table, table_path)


def write_device(path: Path, *credentials: Credential) -> None:
    """Add ``credentials`` to the device's credential file (created 0600)."""
    wallet = load_wallet(path) if path.exists() else CredentialWallet()
    for c in credentials:
        wallet.add(c)
    save_wallet(wallet, path)


# Every in-process lab exit's master key and credential table, by node id: credentials
# for an exit come from that exit alone (each client and each relay gets its own).
LAB_EXITS: dict[bytes, ExitCredentials] = {}


def lab_exit(node_id: bytes) -> ExitCredentials:
    """The lab exit ``node_id``'s credentials (made the first time)."""
    return LAB_EXITS.setdefault(bytes(node_id), ExitCredentials(bytes(node_id)))


class LabWallet(CredentialWallet):
    """A device's credentials, issued by a lab exit the first time they are asked for."""

    def __init__(self, device: bytes, name: str) -> None:
        super().__init__()
        self._device, self._name = device, name

    def for_exit(self, node_id: bytes) -> Credential | None:
        held = super().for_exit(node_id)
        issuer = LAB_EXITS.get(bytes(node_id))
        if held is None and issuer is not None:
            held = issuer.issue(self._device, self._name)
            self.add(held)
        return held

    def exits(self) -> frozenset[bytes]:
        return super().exits() | frozenset(LAB_EXITS)
