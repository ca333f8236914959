"""The exit's credential table: which device each credential handle names.

``CredentialTable.issue(master, node_id, device, name, now)`` makes a new credential
(a random handle; its secret derives from the exit's master key, transport.token) and
records ``handle -> device node id, name, issued time, certificate serial``; the
credential itself goes to the device and is not kept (the exit recomputes it). So the
table holds no secrets and may be listed freely.

Revoking marks the entry; the gate also refuses an entry whose certificate serial is
on the admin's signed revocation list (``keys.revocations``), so revoking a device's
certificate cancels its credentials at once.

The table is kept as JSON (``keys.credentials``)::

    {"version": 1, "credentials": [{"handle": "<base64url>", "device": "<64 hex>",
      "name": "lan-a", "issued": 1790000000, "serial": "<32 hex>" | null,
      "revoked": false}, ...]}

Sans-I/O: text in, text out; files are read and written by the caller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from l2bridge.transport.constants import CREDENTIAL_HANDLE_BYTES, MAX_CREDENTIALS
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import NODE_ID_BYTES, Credential, MasterKey, b64_bytes, b64_text

TABLE_VERSION = 1
SERIAL_BYTES = 16
MAX_NAME_LENGTH = 64


@dataclass(frozen=True, slots=True)
class CredentialEntry:
    handle: bytes
    device: bytes  # the device's node id (SHA-256 of its long-term public key)
    name: str
    issued: int  # unix seconds
    serial: bytes | None = None  # the device certificate's serial it was issued against
    revoked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "handle": b64_text(self.handle),
            "device": self.device.hex(),
            "name": self.name,
            "issued": self.issued,
            "serial": self.serial.hex() if self.serial is not None else None,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, doc: Any, where: str) -> CredentialEntry:
        if not isinstance(doc, dict):
            raise TokenError(f"{where}: not a JSON object")
        handle = doc.get("handle")
        if not isinstance(handle, str):
            raise TokenError(f"{where}: handle: missing")
        device = _hex(doc.get("device"), NODE_ID_BYTES, f"{where}: device")
        name = doc.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise TokenError(f"{where}: name: 1 to {MAX_NAME_LENGTH} characters")
        issued = doc.get("issued")
        if not isinstance(issued, int) or isinstance(issued, bool) or issued < 0:
            raise TokenError(f"{where}: issued: not a unix time")
        serial = doc.get("serial")
        revoked = doc.get("revoked", False)
        if not isinstance(revoked, bool):
            raise TokenError(f"{where}: revoked: not true/false")
        return cls(
            b64_bytes(handle, CREDENTIAL_HANDLE_BYTES, f"{where}: handle"),
            device,
            name,
            issued,
            None if serial is None else _hex(serial, SERIAL_BYTES, f"{where}: serial"),
            revoked,
        )


def _hex(value: object, size: int, where: str) -> bytes:
    if not isinstance(value, str):
        raise TokenError(f"{where}: missing")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise TokenError(f"{where}: not hex") from None
    if len(data) != size:
        raise TokenError(f"{where}: must be {size} bytes")
    return data


class CredentialTable:
    """handle -> CredentialEntry, for one exit."""

    def __init__(self, entries: tuple[CredentialEntry, ...] | list[CredentialEntry] = ()) -> None:
        self._entries: dict[bytes, CredentialEntry] = {}
        for entry in entries:
            if entry.handle in self._entries:
                raise TokenError("credential table: a handle appears twice")
            self._entries[entry.handle] = entry
        if len(self._entries) > MAX_CREDENTIALS:
            raise TokenError(f"credential table: more than {MAX_CREDENTIALS} credentials")
        self.generation = 0  # grows with every credential issued (the gate's tag index)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CredentialEntry]:
        return iter(sorted(self._entries.values(), key=lambda e: (e.name, e.issued)))

    def get(self, handle: bytes) -> CredentialEntry | None:
        return self._entries.get(handle)

    def handles(self) -> list[bytes]:
        return list(self._entries)

    def issue(
        self,
        master: MasterKey,
        node_id: bytes,
        device: bytes,
        name: str,
        now: float,
        *,
        serial: bytes | None = None,
        handle: bytes | None = None,
    ) -> tuple[CredentialEntry, Credential]:
        """Record a new credential for ``device`` and return it with what the device gets."""
        if len(device) != NODE_ID_BYTES:
            raise TokenError(f"device node id must be {NODE_ID_BYTES} bytes")
        if not 0 < len(name) <= MAX_NAME_LENGTH:
            raise TokenError(f"device name: 1 to {MAX_NAME_LENGTH} characters")
        if serial is not None and len(serial) != SERIAL_BYTES:
            raise TokenError(f"certificate serial must be {SERIAL_BYTES} bytes")
        if len(self._entries) >= MAX_CREDENTIALS:
            raise TokenError(f"credential table: full ({MAX_CREDENTIALS} credentials)")
        if handle is None:
            handle = os.urandom(CREDENTIAL_HANDLE_BYTES)
        if handle in self._entries:
            raise TokenError("credential table: that handle is taken")
        entry = CredentialEntry(handle, bytes(device), name, int(now), serial)
        credential = Credential.derive(master, node_id, handle)
        self._entries[handle] = entry
        self.generation += 1
        return entry, credential

    def revoke(self, *, name: str | None = None, handle: bytes | None = None) -> list[str]:
        """Mark the credentials of device ``name`` (or the one ``handle``) revoked.

        Returns the handles revoked now (base64url), empty when none matched."""
        hits = [
            e for e in self._entries.values()
            if not e.revoked and (e.name == name or e.handle == handle)
        ]  # fmt: skip
        for e in hits:
            self._entries[e.handle] = replace(e, revoked=True)
        return [b64_text(e.handle) for e in hits]

    def revoke_serials(self, serials: frozenset[bytes]) -> list[str]:
        """Mark revoked every credential issued against one of these certificates."""
        hits = [e for e in self._entries.values()
                if not e.revoked and e.serial is not None and e.serial in serials]  # fmt: skip
        for e in hits:
            self._entries[e.handle] = replace(e, revoked=True)
        return [e.name for e in hits]

    def to_text(self) -> str:
        doc = {"version": TABLE_VERSION, "credentials": [e.to_json() for e in self]}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str) -> CredentialTable:
        """Parse the JSON table; raises TokenError naming what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError:
            raise TokenError("credential table: not JSON") from None
        if not isinstance(doc, dict) or doc.get("version") != TABLE_VERSION:
            raise TokenError(f"credential table: expected version {TABLE_VERSION}")
        items = doc.get("credentials")
        if not isinstance(items, list):
            raise TokenError("credential table: credentials: not a list")
        return cls([CredentialEntry.from_json(d, f"credentials[{i}]") for i, d in
                    enumerate(items)])  # fmt: skip


class CredentialWallet:
    """A device's credentials, one per exit (``endpoints.credential_file``)."""

    def __init__(self, credentials: list[Credential] | tuple[Credential, ...] = ()) -> None:
        self._by_exit: dict[bytes, Credential] = {}
        for c in credentials:
            self._by_exit[c.exit_node_id] = c  # a later entry replaces an earlier one

    def __len__(self) -> int:
        return len(self._by_exit)

    def exits(self) -> frozenset[bytes]:
        return frozenset(self._by_exit)

    def for_exit(self, node_id: bytes) -> Credential | None:
        return self._by_exit.get(bytes(node_id))

    def add(self, credential: Credential) -> None:
        self._by_exit[credential.exit_node_id] = credential

    def to_text(self) -> str:
        doc = {"version": TABLE_VERSION,
               "credentials": [c.to_json() for c in self._by_exit.values()]}  # fmt: skip
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str) -> CredentialWallet:
        try:
            doc = json.loads(text)
        except ValueError:
            raise TokenError("credential file: not JSON") from None
        if not isinstance(doc, dict) or doc.get("version") != TABLE_VERSION:
            raise TokenError(f"credential file: expected version {TABLE_VERSION}")
        items = doc.get("credentials")
        if not isinstance(items, list) or not items:
            raise TokenError("credential file: credentials: a non-empty list")
        return cls([Credential.from_json(d) for d in items])
