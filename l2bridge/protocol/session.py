"""The sans-I/O tunnel session: records in and out, in-band rekey, statistics.

API (stable; the transport and L2 code build on it)::

    hs = ClientHandshake(identity, certificate=cert, mode=Mode.HYBRID, ...)   # handshake.py
    hello = hs.hello()                                   # send to the exit
    srv = ServerHandshake(exit_identity, authorizer, ...)
    exit_session, server_hello = srv.receive(hello, now) # send server_hello back
    client_session, finish = hs.receive(server_hello, now)  # send finish first

    record = session.seal(frames, now)                   # one record per batch
    records = session.seal_batches(frames, now)          # split a long batch
    got = session.receive(record, now)                   # -> Received
    got.frames   # list of read-only memoryviews (valid as long as you keep them)
    got.replies  # records to send back now, in order (rekey replies)
    got.events   # PeerAuthenticated / RekeyCompleted / Closed
    init = client_session.start_rekey(epoch, now)        # client only; send it
    session.needs_rekey(now); session.stats; session.close_notice(); session.close()

Records that fail to open, repeat, go backwards, are too old, too large, or
belong to an unknown or expired epoch are dropped and counted in
``stats.drops[reason]``; ``receive`` never raises for them, except that
``MAX_FAILED_IN_A_ROW`` records in a row that fail authentication under a
current key end the session (the transport is an ordered, reliable stream: a
peer whose records keep failing is broken, or someone writes into the stream).
It raises a ``PeerError`` only for that and for a fatal protocol error (bad
ClientFinish, a record before authentication, a rekey epoch that goes
backwards or jumps past the exit's clock, an unexpected control record); the
session is then closed and its keys wiped.  ``seal`` raises ``KeyExpired``
past the reject-after limits (time or record count) rather than use a stale
key, and ``StateError`` when the session is closed or (on the exit) not yet
authenticated.

Rekey (client starts, ordered transport): REKEY_INIT carries the next key
generation (the epoch id in record headers, always the current one plus one),
the clock epoch it was started for, the client's rotation interval (in which
that epoch is counted) and fresh shares, sealed in the old generation.  The
clock epoch never goes backwards and, on an exit with ``rekey_interval``, must
be within one epoch of the exit's clock counted in the client's interval (which
stays the same for the session), so each end keeps its own interval; several
rekeys may share a clock epoch, so a busy tunnel can rekey on volume
(``needs_rekey``) between clock boundaries.  The exit installs its new receive key
as ``next``, answers REKEY_REPLY (still in the old epoch) and switches its
send key; the client installs both new keys on the reply.  The exit promotes
``next`` at the first authentic record in the new epoch; the old receive key
is kept ``grace_seconds`` and then wiped.  New keys derive from the new shared
secrets salted with the previous chaining secret.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from l2bridge.codec import Reader, u8, u32, var16
from l2bridge.constants import (
    CLOSE_NORMAL,
    CLOSE_REVOKED,
    FRAME_LENGTH_SIZE,
    MAX_CERTIFICATE_SIZE,
    MAX_EPOCH,
    MAX_EPOCH_SKEW,
    MAX_RECORD_PLAINTEXT,
    MAX_REKEY_INTERVAL_MS,
    MIN_REKEY_INTERVAL_MS,
    RECORD_CLOSE,
    RECORD_DATA,
    RECORD_FINISH,
    RECORD_REKEY_INIT,
    RECORD_REKEY_REPLY,
    REJECT_AFTER_RECORDS,
    REJECT_AFTER_SECONDS,
    REKEY_AFTER_RECORDS,
    REKEY_AFTER_SECONDS,
    REKEY_GRACE_SECONDS,
    REKEY_TIMEOUT_SECONDS,
    Cipher,
    Mode,
)
from l2bridge.crypto.pq import Backend
from l2bridge.crypto.secret import equal, wipe
from l2bridge.errors import (
    AuthenticationFailed,
    CertificateRevoked,
    KeyExpired,
    MalformedMessage,
    NotAuthorized,
    PeerError,
    ProtocolViolation,
    RecordRejected,
    RecordTooLarge,
    StateError,
)
from l2bridge.identity.keys import (
    Authorization,
    Authorizer,
    DeviceCertificate,
    HybridPublicKey,
    HybridSignature,
    HybridSigningKey,
)
from l2bridge.protocol import kex
from l2bridge.protocol.keyslots import EpochKeys, KeySlots, derive
from l2bridge.protocol.records import Buffer, data_plaintext_size, parse_header, split_frames

FINISH_LABEL = b"client finish"
# Records in a row that fail authentication before the session ends (one authentic record
# starts the count again). A lone bad record is dropped, as DTLS does; a run of them ends
# the session, as TLS's first bad record does.
MAX_FAILED_IN_A_ROW = 32
REKEY_INFO = b"shadowmesh v1 rekey "


@dataclass(frozen=True, slots=True)
class SessionConfig:
    reject_after_seconds: float = REJECT_AFTER_SECONDS
    reject_after_records: int = REJECT_AFTER_RECORDS
    rekey_after_seconds: float = REKEY_AFTER_SECONDS
    rekey_after_records: int = REKEY_AFTER_RECORDS
    grace_seconds: float = REKEY_GRACE_SECONDS
    # When set, the exit checks a rekey's epoch against floor(now / interval).
    rekey_interval: float | None = None
    # Pad each DATA plaintext up to a multiple of this many bytes (0: no padding).
    pad_to: int = 0
    # The transport is ordered (TCP/WebSocket): a counter below the highest seen is dropped.
    strict_order: bool = True

    def __post_init__(self) -> None:
        if self.pad_to < 0 or self.pad_to > 65536:
            raise ValueError("pad_to must be 0..65536")
        if self.rekey_interval is not None and self.rekey_interval <= 0:
            raise ValueError("rekey_interval must be positive")


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    """Exit side: the client's ClientFinish verified and the Authorizer admitted it."""

    authorization: Authorization


@dataclass(frozen=True, slots=True)
class RekeyCompleted:
    epoch: int  # the clock epoch the rekey was started for
    generation: int  # the key generation now in use (record header epoch id)


@dataclass(frozen=True, slots=True)
class Closed:
    reason: int
    by_peer: bool


Event: TypeAlias = PeerAuthenticated | RekeyCompleted | Closed


@dataclass(frozen=True, slots=True)
class Received:
    frames: list[memoryview] = field(default_factory=list)
    replies: tuple[bytearray, ...] = ()
    events: tuple[Event, ...] = ()


class SessionStats:
    """Counters a driver exports as metrics; ``drops`` is keyed by reason."""

    __slots__ = (
        "bytes_received", "bytes_sent", "cover_received", "cover_sent", "drops",
        "frames_received", "frames_sent", "key_expired", "records_received", "records_sent",
        "rekeys",
    )  # fmt: skip

    def __init__(self) -> None:
        self.records_sent = self.records_received = 0
        self.cover_sent = self.cover_received = 0  # padding-only DATA records
        self.frames_sent = self.frames_received = 0
        self.bytes_sent = self.bytes_received = 0
        self.rekeys = 0
        self.key_expired = 0
        self.drops: Counter[str] = Counter()

    def as_dict(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in self.__slots__ if name != "drops"}
        out.update({f"drop_{k}": v for k, v in self.drops.items()})
        return out


@dataclass(frozen=True, slots=True)
class ClientFinish:
    """The body of the ClientFinish record: who the client is, under handshake encryption.

    ``identity | u16 length | certificate (length 0: none) | HybridSignature`` where the
    signature (label "client finish") covers H2 followed by the finish up to the signature,
    so it binds the certificate sent with it as well as the whole handshake."""

    identity: HybridPublicKey
    certificate: DeviceCertificate | None
    signature: HybridSignature

    def signed_part(self) -> bytes:
        cert = self.certificate.encode() if self.certificate is not None else b""
        return self.identity.encode() + var16(cert)

    def encode(self) -> bytes:
        return self.signed_part() + self.signature.encode()

    @classmethod
    def signed(
        cls,
        key: HybridSigningKey,
        certificate: DeviceCertificate | None,
        transcript: bytes,
        mode: Mode,
    ) -> ClientFinish:
        """The client's finish for handshake transcript H2 ``transcript``."""
        unsigned = cls(key.public, certificate, HybridSignature(b"", b""))
        signature = key.sign(FINISH_LABEL, transcript + unsigned.signed_part(), mode)
        return cls(key.public, certificate, signature)

    @classmethod
    def decode(cls, body: bytes) -> ClientFinish:
        """Parse; ``MalformedMessage`` on bad input."""
        r = Reader(body)
        identity = HybridPublicKey.read(r)
        raw = r.var16(MAX_CERTIFICATE_SIZE)
        certificate = DeviceCertificate.decode(raw) if raw else None
        signature = HybridSignature.read(r)
        r.end()
        return cls(identity, certificate, signature)


def _label(finish: ClientFinish) -> str:
    device = finish.identity.node_id.hex()[:16]
    if finish.certificate is None:
        return device
    # Not yet verified, so only for a log line: printable characters only.
    name = "".join(c for c in finish.certificate.name[:64] if c.isprintable())
    return f"{name!r} ({device})"


@dataclass(frozen=True, slots=True)
class FinishCheck:
    """Exit side: what the client's ClientFinish must prove (built by the handshake).

    ``expected_device``: the node id the connection's token named (None: the gate named
    nobody); the finish's identity must hash to it."""

    transcript: bytes
    authorizer: Authorizer
    expected_device: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Admitted:
    """Exit side: the device a verified ClientFinish proved, asked about again on rekeys."""

    client: HybridPublicKey
    certificate: DeviceCertificate | None
    authorizer: Authorizer


@dataclass(slots=True)
class _PendingRekey:
    generation: int
    clock_epoch: int
    started: float
    ephemeral: kex.Ephemeral
    init_body: bytes


class Session:
    """One end of an established tunnel.  Construct through handshake.py."""

    def __init__(
        self,
        *,
        is_client: bool,
        mode: Mode,
        cipher: Cipher,
        keys: EpochKeys,
        peer: HybridPublicKey | None,
        now: float,
        config: SessionConfig,
        backend: Backend,
        finish_check: FinishCheck | None = None,
    ) -> None:
        self.is_client = is_client
        self.mode = mode
        self.cipher = cipher
        # The other side's long-term key: the exit's at once on the client; on the exit
        # None until the client's ClientFinish (its only carrier) has verified.
        self.peer = peer
        self.config = config
        self.stats = SessionStats()
        self.authorization: Authorization | None = None
        self.peer_mtu: int | None = None  # exit: the MTU the client's hello announced
        # Exit: who the ClientFinish's verified signature proved (certificate name, if one
        # came, and node id), for the exit's log, also when the Authorizer then refuses.
        self.peer_label: str | None = None
        self.closed = False
        # Exit: the CLOSE record that tells a refused device why (revoked), to send before
        # the connection closes; None when there is nothing to tell.
        self.parting: bytearray | None = None
        self._failed_in_a_row = 0
        self._backend = backend
        self._keys = KeySlots(cipher, keys, 0, now, config.grace_seconds)
        self._finish = finish_check
        self._pending: _PendingRekey | None = None
        self._clock_epoch = 0  # the clock epoch of the newest completed rekey
        self._peer_interval_ms: int | None = None  # exit: the client's rotation interval
        # Exit: who was admitted, kept so every rekey asks the Authorizer again (a
        # revoked or expired device does not keep its tunnel by rekeying).
        self._admitted: _Admitted | None = None
        self._expires: float | None = None

    # -- state ---------------------------------------------------------------
    @property
    def peer_certificate(self) -> DeviceCertificate | None:
        """Exit: the certificate the admitted device presented (None: allow-list or not yet)."""
        admitted = self._admitted
        return None if admitted is None else admitted.certificate

    @property
    def established(self) -> bool:
        """Client: at once.  Exit: once the client's ClientFinish verified."""
        return not self.closed and (self.is_client or self._finish is None)

    @property
    def epoch(self) -> int:
        """The key generation this end currently sends in (0 = handshake keys)."""
        return self._keys.send.epoch

    @property
    def clock_epoch(self) -> int:
        """The clock epoch of the newest completed rekey (0 before the first)."""
        return self._clock_epoch

    def needs_rekey(self, now: float) -> bool:
        """Whether a key in use (ours to send, or the peer's we receive) nears its limits.

        The client checks this and rekeys early, so the exit's send key, which only the
        client can replace, never reaches its reject-after limit either.
        """
        cfg = self.config
        send, recv = self._keys.send, self._keys.current
        return (
            send.next_counter >= cfg.rekey_after_records
            or recv.records >= cfg.rekey_after_records
            or now - send.created >= cfg.rekey_after_seconds
        )

    # -- sending -------------------------------------------------------------
    def _send_key_checked(self, now: float) -> None:
        if self.closed:
            raise StateError("session closed")
        send = self._keys.send
        if (
            send.next_counter >= self.config.reject_after_records
            or now - send.created >= self.config.reject_after_seconds
        ):
            self.stats.key_expired += 1
            raise KeyExpired(f"epoch {send.epoch} key past its reject-after limit")

    def seal(self, frames: list[Buffer] | tuple[Buffer, ...], now: float) -> bytearray:
        """One DATA record carrying ``frames`` (``RecordTooLarge`` if they do not fit)."""
        if not self.established:
            raise StateError("session not established")
        self._send_key_checked(now)
        padding = 0
        if self.config.pad_to:
            size = data_plaintext_size(frames) + FRAME_LENGTH_SIZE
            padding = (-size) % self.config.pad_to
        record = self._keys.send.seal_frames(frames, padding)
        st = self.stats
        st.records_sent += 1
        st.frames_sent += len(frames)
        st.bytes_sent += len(record)
        return record

    def seal_sized(self, frames: Sequence[Buffer], size: int, now: float) -> bytearray:
        """One DATA record carrying ``frames`` with its plaintext padded to ``size`` bytes
        (traffic shaping, l2bridge.protocol.shaping), not to ``pad_to``; a ``size`` smaller
        than the frames need, or too small for the padding marker, adds no padding."""
        if not self.established:
            raise StateError("session not established")
        self._send_key_checked(now)
        spare = min(size, MAX_RECORD_PLAINTEXT) - data_plaintext_size(frames) - FRAME_LENGTH_SIZE
        record = self._keys.send.seal_frames(frames, spare if spare > 0 else 0)
        st = self.stats
        st.records_sent += 1
        st.frames_sent += sum(1 for f in frames if len(f))
        st.bytes_sent += len(record)
        return record

    def seal_cover(self, size: int, now: float) -> bytearray:
        """A padding-only DATA record (cover traffic): no frames, ``size`` bytes of padding
        rounded up to ``pad_to``. The peer drops it after authenticating it and counts it."""
        if not self.established:
            raise StateError("session not established")
        if not 0 <= size <= MAX_RECORD_PLAINTEXT // 2:
            raise ValueError("cover size out of range")
        self._send_key_checked(now)
        padding = size
        if self.config.pad_to:
            padding += (-(size + FRAME_LENGTH_SIZE)) % self.config.pad_to
        record = self._keys.send.seal_frames((), padding)
        st = self.stats
        st.records_sent += 1
        st.cover_sent += 1
        st.bytes_sent += len(record)
        return record

    def seal_batches(
        self, frames: list[Buffer] | tuple[Buffer, ...], now: float
    ) -> list[bytearray]:
        """As many records as needed for ``frames``, in order."""
        if len(frames) == 1:
            return [self.seal(frames, now)]  # a lone frame: its own record either way
        limit = MAX_RECORD_PLAINTEXT - FRAME_LENGTH_SIZE - self.config.pad_to
        out: list[bytearray] = []
        batch: list[Buffer] = []
        size = 0
        for f in frames:
            n = FRAME_LENGTH_SIZE + len(f)
            if batch and size + n > limit:
                out.append(self.seal(batch, now))
                batch, size = [], 0
            batch.append(f)
            size += n
        if batch:
            out.append(self.seal(batch, now))
        return out

    def _seal_control(self, rtype: int, body: bytes, now: float) -> bytearray:
        self._send_key_checked(now)
        record = self._keys.send.seal_body(rtype, body)
        self.stats.records_sent += 1
        self.stats.bytes_sent += len(record)
        return record

    def seal_finish(self, finish: ClientFinish, now: float) -> bytearray:
        """Client: the ClientFinish record (called by the handshake, first record sent)."""
        if not self.is_client or self._keys.send.next_counter != 0:
            raise StateError("ClientFinish is the client's first record")
        return self._seal_control(RECORD_FINISH, finish.encode(), now)

    def start_rekey(self, epoch: int, now: float) -> bytearray:
        """Client: a REKEY_INIT record, started for the clock's epoch number ``epoch``.

        ``epoch`` may repeat the last one (a rekey on volume between boundaries) but
        never go backwards; the new keys get the next generation.
        """
        if not self.is_client:
            raise StateError("only the client starts a rekey")
        if not 0 < epoch <= MAX_EPOCH or epoch < self._clock_epoch:
            raise StateError(f"clock epoch {epoch} goes back from {self._clock_epoch}")
        generation = self.epoch + 1
        if generation > MAX_EPOCH:
            raise StateError("key generations exhausted: reconnect")
        pending = self._pending
        if pending is not None and now - pending.started < REKEY_TIMEOUT_SECONDS:
            raise StateError("a rekey is already in progress")
        self._send_key_checked(now)
        eph = kex.initiate(self.mode, self._backend)
        interval = self.config.rekey_interval
        interval_ms = round(interval * 1000) if interval is not None else 0
        body = u32(generation) + u32(epoch) + u32(interval_ms) + eph.shares()
        record = self._seal_control(RECORD_REKEY_INIT, body, now)
        if pending is not None:
            pending.ephemeral.forget()
        self._pending = _PendingRekey(generation, epoch, now, eph, body)
        return record

    def close_notice(self, reason: int = CLOSE_NORMAL, now: float = 0.0) -> bytearray:
        """A CLOSE record for the peer; the session is closed and wiped afterwards."""
        if self.closed:
            raise StateError("session closed")
        send = self._keys.send
        record = send.seal_body(RECORD_CLOSE, u8(reason))
        self.stats.records_sent += 1
        self.close()
        return record

    def close(self, parting: int | None = None) -> None:
        """Wipe every key; later calls to seal raise ``StateError``. ``parting`` (exit,
        refusing a live device): first seal one CLOSE record with this reason into
        ``self.parting``, for the link to send before the connection closes."""
        if parting is not None and not self.closed:
            self.parting = self._keys.send.seal_body(RECORD_CLOSE, u8(parting))
            self.stats.records_sent += 1
        self.closed = True
        self._keys.wipe()
        if self._pending is not None:
            self._pending.ephemeral.forget()
            self._pending = None

    # -- receiving -----------------------------------------------------------
    def receive(self, record: Buffer, now: float) -> Received:
        if self.closed:
            self.stats.drops["closed"] += 1
            return Received()
        keys = self._keys
        try:
            if self._expires is not None and now >= self._expires:
                raise NotAuthorized("device certificate expired during the session")
            rtype, epoch, counter = parse_header(record)
            key = keys.lookup(epoch, now)
            if key is None:
                raise RecordRejected("unknown_epoch")
            cfg = self.config
            if (
                key.records >= cfg.reject_after_records
                or now - key.created >= cfg.reject_after_seconds + cfg.grace_seconds
            ):
                raise RecordRejected("expired")
            plaintext = key.open(record, counter, cfg.strict_order)
        except RecordRejected as rejected:
            self.stats.drops[rejected.reason] += 1
            if rejected.reason == "auth_failed":
                self._failed_in_a_row += 1
                if self._failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    self.close()
                    raise ProtocolViolation(
                        f"{self._failed_in_a_row} records in a row failed authentication"
                    ) from None
            return Received()
        except PeerError:
            self.close()
            raise
        self._failed_in_a_row = 0
        keys.confirm(key, now)
        st = self.stats
        st.records_received += 1
        st.bytes_received += len(record)
        try:
            if rtype == RECORD_DATA and self._finish is None:
                try:
                    frames = split_frames(plaintext)
                except RecordRejected as rejected:
                    st.drops[rejected.reason] += 1
                    return Received()
                if not frames:
                    st.cover_received += 1  # cover traffic: authentic, nothing to deliver
                    return Received()
                st.frames_received += len(frames)
                return Received(frames)
            return self._control(rtype, plaintext, now)
        except PeerError as exc:
            # A revoked device is told so in a CLOSE record it can authenticate: a WebSocket
            # close code alone can be forged by anyone on a plain ws:// path, and a client
            # that believed one would stop for good.
            revoked = isinstance(exc, CertificateRevoked) and not self.is_client
            self.close(parting=CLOSE_REVOKED if revoked else None)
            raise

    def _control(self, rtype: int, body: bytes, now: float) -> Received:
        if self._finish is not None:
            if rtype != RECORD_FINISH:
                raise ProtocolViolation("record before ClientFinish")
            return self._on_finish(body, now)
        if rtype == RECORD_CLOSE:
            reason = body[0] if len(body) == 1 else -1
            self.close()
            return Received(events=(Closed(reason, by_peer=True),))
        if rtype == RECORD_REKEY_INIT and not self.is_client:
            return self._on_rekey_init(body, now)
        if rtype == RECORD_REKEY_REPLY and self.is_client:
            return self._on_rekey_reply(body, now)
        raise ProtocolViolation(f"unexpected record type {rtype}")

    def _on_finish(self, body: bytes, now: float) -> Received:
        check = self._finish
        assert check is not None
        finish = ClientFinish.decode(body)
        # The token named a device: another device's key is refused before any signature
        # is checked (a stolen token is useless without the named device's key).
        if check.expected_device is not None and not equal(
            finish.identity.node_id, check.expected_device
        ):
            raise AuthenticationFailed("client identity differs from the device its token named")
        finish.identity.verify(
            FINISH_LABEL, check.transcript + finish.signed_part(), finish.signature, self.mode
        )
        # The key is proven now (its certificate not yet): enough to name a refusal.
        self.peer_label = _label(finish)
        self.authorization = check.authorizer.authorize(finish.identity, finish.certificate, now)
        self._finish = None
        self.peer = finish.identity
        self._admitted = _Admitted(finish.identity, finish.certificate, check.authorizer)
        self._expires = self.authorization.expires
        return Received(events=(PeerAuthenticated(self.authorization),))

    def reauthorize(self, now: float) -> Authorization:
        """Exit: ask the Authorizer again about the admitted device (a revocation list or
        the allow-list changed, or the periodic re-check). Returns the new decision, or
        raises ``NotAuthorized``; the caller ends the tunnel then. ``StateError`` before
        the device was admitted (or on the client)."""
        admitted = self._admitted
        if admitted is None or self.closed:
            raise StateError("no admitted device to re-authorise")
        self.authorization = admitted.authorizer.authorize(
            admitted.client, admitted.certificate, now
        )
        self._expires = self.authorization.expires
        return self.authorization

    def _check_epoch(self, generation: int, epoch: int, interval_ms: int, now: float) -> None:
        if generation != self.epoch + 1:
            raise ProtocolViolation(f"rekey generation {generation} after {self.epoch}")
        # (epochs counted in another interval could not be compared)
        if self._peer_interval_ms is not None and interval_ms != self._peer_interval_ms:
            raise ProtocolViolation("rekey interval changed within the session")
        if epoch < self._clock_epoch:
            raise ProtocolViolation(f"rekey epoch {epoch} before {self._clock_epoch}")
        if self.config.rekey_interval is None:
            return  # an exit without a clock to compare with
        if interval_ms == 0:
            interval = self.config.rekey_interval  # a client on no clock: counted in ours
        elif MIN_REKEY_INTERVAL_MS <= interval_ms <= MAX_REKEY_INTERVAL_MS:
            interval = interval_ms / 1000
        else:
            raise ProtocolViolation(f"rekey interval {interval_ms} ms out of range")
        if abs(epoch - int(now // interval)) > MAX_EPOCH_SKEW:
            raise ProtocolViolation(
                f"rekey epoch {epoch} far from clock epoch {int(now // interval)} of {interval:g} s"
            )

    def _rekey_keys(self, ikm: bytearray, init_body: bytes, reply_body: bytes) -> EpochKeys:
        transcript = hashlib.sha384(init_body + reply_body).digest()
        try:
            return derive(ikm, self._keys.chain, REKEY_INFO + transcript, self.is_client)
        finally:
            wipe(ikm)

    def _on_rekey_init(self, body: bytes, now: float) -> Received:
        r = Reader(body)
        generation = r.u32()
        epoch = r.u32()
        interval_ms = r.u32()
        x_pub, kem_pub = kex.read_initiator_shares(r, self.mode)
        r.end()
        self._check_epoch(generation, epoch, interval_ms, now)
        self._peer_interval_ms = interval_ms
        admitted = self._admitted
        if admitted is not None:
            self.authorization = admitted.authorizer.authorize(
                admitted.client, admitted.certificate, now
            )
        x_mine, ciphertext, ikm = kex.respond(self.mode, self._backend, x_pub, kem_pub)
        reply_body = u32(generation) + x_mine + ciphertext
        keys = self._rekey_keys(ikm, body, reply_body)
        # Accept the new generation before the client can use it, answer in the old
        # one, then switch: the transport is ordered, so nothing is lost.
        self._keys.install_next(keys, generation, now)
        reply = self._seal_control(RECORD_REKEY_REPLY, reply_body, now)
        self._keys.switch_send(keys, generation, now)
        self._keys.replace_chain(keys.chain)
        self._clock_epoch = epoch
        self.stats.rekeys += 1
        return Received(replies=(reply,), events=(RekeyCompleted(epoch, generation),))

    def _on_rekey_reply(self, body: bytes, now: float) -> Received:
        pending = self._pending
        r = Reader(body)
        generation = r.u32()
        x_pub, ciphertext = kex.read_responder_shares(r, self.mode)
        r.end()
        if pending is None or generation != pending.generation:
            raise ProtocolViolation("rekey reply without a matching init")
        self._pending = None
        ikm = kex.complete(pending.ephemeral, x_pub, ciphertext)
        keys = self._rekey_keys(ikm, pending.init_body, body)
        self._keys.install_current(keys, generation, now)
        self._keys.switch_send(keys, generation, now)
        self._keys.replace_chain(keys.chain)
        self._clock_epoch = pending.clock_epoch
        self.stats.rekeys += 1
        return Received(events=(RekeyCompleted(pending.clock_epoch, generation),))


__all__ = [
    "AuthenticationFailed",
    "ClientFinish",
    "Closed",
    "Event",
    "FinishCheck",
    "KeyExpired",
    "MalformedMessage",
    "PeerAuthenticated",
    "Received",
    "RecordTooLarge",
    "RekeyCompleted",
    "Session",
    "SessionConfig",
    "SessionStats",
]
