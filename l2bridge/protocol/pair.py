"""Two endpoints connected in memory: a client and an exit session over a fake,
ordered network (as h11's two-endpoint helper).  For tests and benchmarks of
anything built on ``Session``; no sockets, time is passed in.

    pair = SessionPair.connect(now=0.0)
    got = pair.client_to_exit([b"frame"], now=1.0)   # frames as the exit received them
    pair.rekey(epoch=5, now=2.0)                     # full in-band rekey through both ends
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from l2bridge.constants import Cipher, Mode
from l2bridge.identity.keys import AdminKey, Authorizer, HybridSigningKey
from l2bridge.protocol.handshake import (
    ClientHandshake,
    EvidenceChecker,
    EvidenceProvider,
    ServerHandshake,
)
from l2bridge.protocol.records import Buffer
from l2bridge.protocol.session import Event, PeerAuthenticated, Received, Session, SessionConfig


@dataclass
class SessionPair:
    client: Session
    exit: Session
    client_key: HybridSigningKey
    exit_key: HybridSigningKey
    admin: AdminKey
    authorizer: Authorizer
    events: list[tuple[str, Event]] = field(default_factory=list)

    @classmethod
    def connect(
        cls,
        now: float = 0.0,
        *,
        mode: Mode = Mode.HYBRID,
        ciphers: Sequence[Cipher] = (Cipher.AES_256_GCM,),
        config: SessionConfig | None = None,
        exit_config: SessionConfig | None = None,
        keys: tuple[HybridSigningKey, HybridSigningKey, AdminKey] | None = None,
        nonce: bytes | None = None,
        evidence_provider: EvidenceProvider | None = None,
        evidence_checker: EvidenceChecker | None = None,
    ) -> SessionPair:
        """Run the whole handshake (hello, reply, ClientFinish) with a certified client."""
        client_key, exit_key, admin = keys or (
            HybridSigningKey.generate(),
            HybridSigningKey.generate(),
            AdminKey(HybridSigningKey.generate()),
        )
        cert = admin.issue(
            client_key.public, "device", "org", max(0, int(now) - 60), int(now) + 86400
        )
        authorizer = Authorizer([admin.public])
        hs = ClientHandshake(
            client_key, certificate=cert, mode=mode, ciphers=ciphers,
            pinned_node_id=exit_key.node_id, attestation_nonce=nonce,
            evidence_checker=evidence_checker, config=config,
        )  # fmt: skip
        server = ServerHandshake(
            exit_key, authorizer, modes=(mode,), evidence_provider=evidence_provider,
            config=exit_config or config,
        )  # fmt: skip
        exit_session, reply = server.receive(hs.hello(), now)
        client_session, finish = hs.receive(reply, now)
        got = exit_session.receive(finish, now)
        pair = cls(client_session, exit_session, client_key, exit_key, admin, authorizer)
        pair.events += [("exit", e) for e in got.events]
        if not any(isinstance(e, PeerAuthenticated) for e in got.events):
            raise AssertionError("exit did not authenticate the client")
        return pair

    def _deliver(self, records: Sequence[Buffer], to: Session, name: str, now: float) -> Received:
        frames: list[memoryview] = []
        replies: list[bytearray] = []
        events: list[Event] = []
        for record in records:
            got = to.receive(record, now)
            frames += got.frames
            replies += got.replies
            events += got.events
        self.events += [(name, e) for e in events]
        return Received(frames, tuple(replies), tuple(events))

    def client_to_exit(self, frames: Sequence[Buffer], now: float) -> list[bytes]:
        got = self._deliver([self.client.seal(list(frames), now)], self.exit, "exit", now)
        return [bytes(f) for f in got.frames]

    def exit_to_client(self, frames: Sequence[Buffer], now: float) -> list[bytes]:
        got = self._deliver([self.exit.seal(list(frames), now)], self.client, "client", now)
        return [bytes(f) for f in got.frames]

    def rekey(self, epoch: int, now: float) -> None:
        """Client starts, exit answers, client installs: both ends then send in ``epoch``."""
        init = self.client.start_rekey(epoch, now)
        got = self._deliver([init], self.exit, "exit", now)
        self._deliver(list(got.replies), self.client, "client", now)
