"""The exit's connected devices and the management API over them (l2bridge.node.status).

``PeerTable`` records each admitted tunnel (device, address, policy, link) while it runs.
``ExitManagement`` answers the status listener's management paths on the exit's loop:
list peers, disconnect one, install a new signed revocation list (verified against the
exit's admin keys, newer than the one on disk, written atomically to ``keys.revocations``,
every tunnel of a now-revoked certificate ended with the "revoked" close, and the
credentials issued against it marked revoked in ``keys.credentials``), reload.

The exit never holds the admin key: ``shadowmesh peers revoke`` signs the list where the
admin key is and sends it here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from exitnode.switch import PortPolicy
from l2bridge import codec
from l2bridge.errors import AuthenticationFailed, KeyFileError, MalformedMessage
from l2bridge.identity.keyfiles import CRL_LABEL, load_revocations, save_revocations
from l2bridge.identity.keys import Authorization, Authorizer, RevocationList
from l2bridge.node.audit import audit
from l2bridge.node.status import ManagementError

log = logging.getLogger(__name__)

CIRCUIT_DIRECT = "direct"  # single hop: the client's tunnel ends at this exit


class PeerLink(Protocol):
    """What the table needs of a running tunnel (l2bridge.node.link.Link)."""

    last_handshake: float
    rekeys_completed: int

    @property
    def remote_address(self) -> str | None: ...

    @property
    def session(self) -> Any: ...

    def stats(self) -> dict[str, int]: ...

    async def close(self, *, revoked: bool = False) -> None: ...


@dataclass(slots=True)
class Peer:
    key: int
    name: str
    authorization: Authorization
    serial: bytes | None
    link: PeerLink
    policy: PortPolicy
    connected_at: float  # wall clock

    def describe(
        self, now: float, monotonic: float, attestation_age: float | None
    ) -> dict[str, Any]:
        stats = self.link.stats()
        vlans = self.policy.vlans
        return {
            "device": self.name,
            "device_id": self.authorization.device_id.hex(),
            "admitted_by": self.authorization.method,
            "certificate_serial": self.serial.hex() if self.serial else None,
            "certificate_expires": self.authorization.expires,
            "address": self.link.remote_address,
            "vlans": "all" if vlans is None else sorted(vlans),
            "bytes_in": stats.get("bytes_received", 0),
            "bytes_out": stats.get("bytes_sent", 0),
            "frames_in": stats.get("frames_received", 0),
            "frames_out": stats.get("frames_sent", 0),
            "rekeys": self.link.rekeys_completed,
            "connected_s": int(now - self.connected_at),
            "handshake_age_s": int(monotonic - self.link.last_handshake),
            "attestation_age_s": None if attestation_age is None else int(attestation_age),
            "circuit": CIRCUIT_DIRECT,
        }


class PeerTable:
    """The tunnels being served, by a key unique to each; names may repeat."""

    def __init__(self) -> None:
        self._peers: dict[int, Peer] = {}
        self._ids = itertools.count(1)

    def add(self, name: str, auth: Authorization, link: PeerLink, policy: PortPolicy) -> Peer:
        cert = getattr(link.session, "peer_certificate", None)
        peer = Peer(next(self._ids), name, auth, cert.serial if cert else None, link, policy,
                    time.time())  # fmt: skip
        self._peers[peer.key] = peer
        return peer

    def remove(self, peer: Peer) -> None:
        self._peers.pop(peer.key, None)

    def named(self, name: str) -> list[Peer]:
        return [p for p in self._peers.values() if p.name == name]

    def of_device(self, device_id: bytes) -> list[Peer]:
        """The device's tunnels, oldest first."""
        return [p for p in self._peers.values() if p.authorization.device_id == device_id]

    def with_serials(self, serials: frozenset[bytes]) -> list[Peer]:
        return [p for p in self._peers.values() if p.serial is not None and p.serial in serials]

    def __iter__(self) -> Any:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)


class ExitManagement:
    """The management API of one exit (its coroutines run on the exit's loop)."""

    def __init__(
        self,
        table: PeerTable,
        authorizer: Authorizer,
        revocations: Path | None,
        *,
        attestation_age: Callable[[], float | None] = lambda: None,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        cancel_credentials: Callable[[frozenset[bytes]], list[str]] = lambda _serials: [],
    ) -> None:
        self.table = table
        self.authorizer = authorizer
        self.revocations = revocations
        self._attestation_age = attestation_age
        self._reload = reload
        # Marks revoked (and saves) the credentials issued against these certificates.
        self._cancel_credentials = cancel_credentials
        self._lock = asyncio.Lock()

    async def peers(self) -> list[dict[str, Any]]:
        now, mono, age = time.time(), time.monotonic(), self._attestation_age()
        return [p.describe(now, mono, age) for p in self.table]

    async def disconnect(self, name: str, *, revoked: bool = False) -> int:
        peers = self.table.named(name)
        await asyncio.gather(*(p.link.close(revoked=revoked) for p in peers))
        if peers:
            log.info("device %s disconnected by the operator (%d tunnel(s))", name, len(peers))
            audit("device_disconnected", device=name, tunnels=len(peers), by="operator")
        return len(peers)

    async def install_revocations(self, armored: str) -> dict[str, Any]:
        path = self.revocations
        if path is None:
            raise ManagementError("keys.revocations is not set in the exit's config", 409)
        try:
            new = RevocationList.decode(codec.dearmor(CRL_LABEL, armored))
        except MalformedMessage:
            raise ManagementError("not a revocation list") from None
        async with self._lock:
            current = self._current(path)
            if current is not None and new.sequence <= current.sequence:
                raise ManagementError(
                    f"list #{new.sequence} is not newer than #{current.sequence} in use", 409
                )
            try:
                self.authorizer.update_revocations(new)  # checks the admin's signature
            except AuthenticationFailed:
                raise ManagementError("not signed by an admin key this exit trusts", 403) from None
            save_revocations(new, path)
            revoked = new.revoked()
            cancelled = self._cancel_credentials(revoked)
            ended = self.table.with_serials(revoked)
            await asyncio.gather(*(p.link.close(revoked=True) for p in ended))
        names = sorted({p.name for p in ended})
        audit("revocations_installed", sequence=new.sequence, revoked=len(revoked), ended=names)
        log.warning("revocation list #%d installed by the operator; revoked, tunnel ended: %s",
                    new.sequence, ", ".join(names) or "none")  # fmt: skip
        return {"sequence": new.sequence, "revoked": len(revoked), "disconnected": names,
                "credentials_cancelled": sorted(set(cancelled))}  # fmt: skip

    @staticmethod
    def _current(path: Path) -> RevocationList | None:
        if not path.exists():
            return None
        try:
            return load_revocations(path)
        except KeyFileError:
            return None

    async def reload(self) -> dict[str, Any]:
        if self._reload is None:
            raise ManagementError("this node has nothing to reload", 409)
        return await self._reload()
