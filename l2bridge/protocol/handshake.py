"""The 1-round-trip hybrid handshake (sans-I/O), client first.

ClientHello (nothing in it names the client: no long-term key, no certificate)::

    0x51 | version u8 | mode u8 | n u8 | n x cipher u8 (preference order) | flags u8
    | [X25519 public 32]        (not in pqc_only)
    | [ML-KEM-1024 ek 1568]     (not in classical)
    | random 32
    | [attestation nonce 32]    (flags & 1)
    | [pinned exit node id 32]  (flags & 4)
    | [u16 TAP MTU]             (flags & 8; the exit warns when its own differs)
    | [u32 reset count | u32 IMA entries]  (flags & 16, with a nonce: evidence since)

ServerHello::

    0x52 | version u8 | mode u8 | cipher u8
    | [X25519 public 32] | [ML-KEM ciphertext 1568] | random 32
    | exit HybridPublicKey | u32 length | evidence (opaque, <= MAX_EVIDENCE_SIZE)
    | HybridSignature over H1 (label "server hello")

    T  = "shadowmesh v2 hs" | u16 len | connection token | u32 len | ClientHello
    H1 = SHA-384(T | ServerHello up to the signature)
    H2 = SHA-384(T | the whole ServerHello)
    keys = HKDF-SHA-384(salt = H2, ikm = X25519 secret || ML-KEM secret)   (keyslots.derive)

Evidence since (flag 16): a client that verified this exit's evidence before says how
far it replayed the exit's IMA list: the TPM reset count of that boot and the number of
entries. The exit then sends only the entries after those when its new quote is of the same
boot, and the whole list otherwise (``attestation.evidence.first_entry``), and leaves that
boot's event log out (``sends_boot_log``: the client replays the copy it kept); the client's
verifier decides either way, so a list cut elsewhere is refused, never believed. Only a
client that pinned the exit's node id sends it (it knows whose list it replayed); circuit
hops never get it (it would tell a hop that the same client came back).

The connection token (the ``Sec-WebSocket-Protocol`` value the exit's gate admitted) is part
of the transcript, so a hello cannot be moved to another connection: the exit signs H1 over
the token it admitted and the client checks that signature over the token it sent.

The client then sends ClientFinish, its first record (epoch 0, counter 0), sealed under
the handshake keys, so only the exit learns who the client is (session.py)::

    client HybridPublicKey | u16 length | DeviceCertificate (length 0: none)
    | HybridSignature over H2 | the finish up to the signature (label "client finish")

The exit admits no frame before that signature verifies, the identity is the device the
token named (``expected_device``, when the gate knows it) and the ``Authorizer`` agrees.
The exit learns nothing about the client before the finish: refusing unknown devices
early is the gate's job (the per-device token), and the exit's duplicate-hello cache and
attested-hello quota (helloguard.py, applied by the driver before this module is called)
bound what a token holder can make it do.  Every peer-caused failure raises one of
``MalformedMessage``, ``UnsupportedParameters``, ``AuthenticationFailed``,
``NotAuthorized`` (fixed messages; see errors.py).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from l2bridge.codec import Reader, u8, u16, u32, var16, var32
from l2bridge.constants import (
    ATTESTATION_NONCE_SIZE,
    MAX_CIPHER_CHOICES,
    MAX_EVIDENCE_SIZE,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MAX_SERVER_HELLO_SIZE,
    MSG_CLIENT_HELLO,
    MSG_SERVER_HELLO,
    NODE_ID_SIZE,
    PROTOCOL_VERSION,
    RANDOM_SIZE,
    Cipher,
    Mode,
)
from l2bridge.crypto.pq import Backend, default_backend, default_cipher_preference
from l2bridge.crypto.secret import wipe
from l2bridge.errors import (
    AuthenticationFailed,
    MalformedMessage,
    StateError,
    UnsupportedParameters,
)
from l2bridge.identity.keys import (
    Authorizer,
    DeviceCertificate,
    HybridPublicKey,
    HybridSignature,
    HybridSigningKey,
    node_id,
)
from l2bridge.protocol import kex
from l2bridge.protocol.keyslots import derive
from l2bridge.protocol.session import ClientFinish, FinishCheck, Session, SessionConfig

SERVER_LABEL = b"server hello"
_TRANSCRIPT_PREFIX = b"shadowmesh v2 hs"
_KEYS_INFO = b"shadowmesh v1 handshake keys"
# Flag 2 carried the client's certificate up to protocol version 1; it is refused now.
_FLAG_NONCE, _FLAG_PIN, _FLAG_MTU, _FLAG_SINCE = 1, 4, 8, 16
_FLAGS = _FLAG_NONCE | _FLAG_PIN | _FLAG_MTU | _FLAG_SINCE
MAX_TOKEN_SIZE = 1024  # far above any token the gate admits (a WebSocket subprotocol)
_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class EvidenceSince:
    """How far the client replayed the exit's IMA list: that boot's TPM reset count and
    the number of entries (``attestation.evidence.Since`` on the exit's side)."""

    reset_count: int
    ima_count: int

    def __post_init__(self) -> None:
        if not (0 <= self.reset_count <= _U32_MAX and 0 <= self.ima_count <= _U32_MAX):
            raise ValueError("reset count and IMA entries are u32")


# (nonce, exit node id) -> evidence; the second form also takes the client's EvidenceSince.
EvidenceProvider = Callable[[bytes, bytes], bytes]
EvidenceSinceProvider = Callable[[bytes, bytes, EvidenceSince], bytes]
EvidenceChecker = Callable[[bytes, bytes, bytes], None]


@dataclass(frozen=True, slots=True)
class ClientHello:
    mode: Mode
    ciphers: tuple[Cipher, ...]
    x25519: bytes
    kem: bytes
    random: bytes
    nonce: bytes | None
    pinned: bytes | None
    mtu: int | None = None
    since: EvidenceSince | None = None

    def encode(self) -> bytes:
        if self.since is not None and (self.nonce is None or self.pinned is None):
            raise ValueError("evidence since needs a nonce and a pinned exit")
        flags = (
            (_FLAG_NONCE if self.nonce is not None else 0)
            | (_FLAG_PIN if self.pinned is not None else 0)
            | (_FLAG_MTU if self.mtu is not None else 0)
            | (_FLAG_SINCE if self.since is not None else 0)
        )
        parts = [
            bytes((MSG_CLIENT_HELLO, PROTOCOL_VERSION, self.mode, len(self.ciphers))),
            bytes(self.ciphers),
            u8(flags),
            self.x25519,
            self.kem,
            self.random,
            self.nonce or b"",
            self.pinned or b"",
            u16(self.mtu) if self.mtu is not None else b"",
            u32(self.since.reset_count) + u32(self.since.ima_count) if self.since else b"",
        ]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ClientHello:
        """Parse; ``MalformedMessage`` / ``UnsupportedParameters`` on bad input."""
        if len(data) > MAX_HANDSHAKE_MESSAGE_SIZE:
            raise MalformedMessage("hello too large")
        r = Reader(data)
        if r.u8() != MSG_CLIENT_HELLO:
            raise MalformedMessage("not a ClientHello")
        if r.u8() != PROTOCOL_VERSION:
            raise UnsupportedParameters("version")
        mode = _mode(r.u8())
        count = r.u8()
        if not 0 < count <= MAX_CIPHER_CHOICES:
            raise MalformedMessage("cipher list")
        # Unknown cipher codes are skipped: a newer client may offer more.
        ciphers = tuple(Cipher(c) for c in r.take(count) if c in Cipher._value2member_map_)
        flags = r.u8()
        if flags & ~_FLAGS:
            raise MalformedMessage("flags")
        if flags & _FLAG_SINCE and (flags & (_FLAG_NONCE | _FLAG_PIN)) != _FLAG_NONCE | _FLAG_PIN:
            raise MalformedMessage("evidence since without a nonce and a pinned exit")
        x25519, kem = kex.read_initiator_shares(r, mode)
        random = r.take(RANDOM_SIZE)
        nonce = r.take(ATTESTATION_NONCE_SIZE) if flags & _FLAG_NONCE else None
        pinned = r.take(NODE_ID_SIZE) if flags & _FLAG_PIN else None
        mtu = r.u16() if flags & _FLAG_MTU else None
        since = EvidenceSince(r.u32(), r.u32()) if flags & _FLAG_SINCE else None
        r.end()
        return cls(mode, ciphers, x25519, kem, random, nonce, pinned, mtu, since)


@dataclass(frozen=True, slots=True)
class ServerHello:
    mode: Mode
    cipher: Cipher
    x25519: bytes
    ciphertext: bytes
    random: bytes
    identity: HybridPublicKey
    evidence: bytes
    signature: HybridSignature

    def signed_part(self) -> bytes:
        return b"".join(
            [
                bytes((MSG_SERVER_HELLO, PROTOCOL_VERSION, self.mode, self.cipher)),
                self.x25519,
                self.ciphertext,
                self.random,
                self.identity.encode(),
                var32(self.evidence),
            ]
        )

    def encode(self) -> bytes:
        return self.signed_part() + self.signature.encode()

    @classmethod
    def decode(cls, data: bytes) -> ServerHello:
        if len(data) > MAX_SERVER_HELLO_SIZE:
            raise MalformedMessage("hello too large")
        r = Reader(data)
        if r.u8() != MSG_SERVER_HELLO:
            raise MalformedMessage("not a ServerHello")
        if r.u8() != PROTOCOL_VERSION:
            raise UnsupportedParameters("version")
        mode = _mode(r.u8())
        code = r.u8()
        if code not in Cipher._value2member_map_:
            raise UnsupportedParameters("cipher")
        x25519, ciphertext = kex.read_responder_shares(r, mode)
        random = r.take(RANDOM_SIZE)
        identity = HybridPublicKey.read(r)
        evidence = r.var32(MAX_EVIDENCE_SIZE)
        signature = HybridSignature.read(r)
        r.end()
        return cls(mode, Cipher(code), x25519, ciphertext, random, identity, evidence, signature)


def _mode(code: int) -> Mode:
    if code not in Mode._value2member_map_:
        raise UnsupportedParameters("mode")
    return Mode(code)


def token_bytes(token: str | bytes | None) -> bytes:
    """The connection token as the transcript binds it (ASCII; empty when there is none).

    ``ValueError`` for a token that is not ASCII or longer than ``MAX_TOKEN_SIZE`` (a
    local error: the gate admits only short base64url tokens)."""
    if token is None:
        return b""
    raw = token.encode("ascii") if isinstance(token, str) else bytes(token)
    if len(raw) > MAX_TOKEN_SIZE:
        raise ValueError("connection token too long")
    return raw


def _transcript(token: bytes, client_hello: bytes, server_part: bytes) -> bytes:
    return hashlib.sha384(
        _TRANSCRIPT_PREFIX + var16(token) + u32(len(client_hello)) + client_hello + server_part
    ).digest()


class ClientHandshake:
    """Client side.  ``hello()`` -> send; ``receive(server_hello, now, token=...)`` ->
    (Session, finish).  ``token`` must be the connection token the hello travelled with."""

    def __init__(
        self,
        identity: HybridSigningKey,
        *,
        certificate: DeviceCertificate | None = None,
        mode: Mode = Mode.HYBRID,
        ciphers: Sequence[Cipher] | None = None,
        pinned_node_id: bytes | None = None,
        attestation_nonce: bytes | None = None,
        evidence_checker: EvidenceChecker | None = None,
        config: SessionConfig | None = None,
        backend: Backend | None = None,
        mtu: int | None = None,
        evidence_since: EvidenceSince | None = None,
    ) -> None:
        """``evidence_since``: how far this client's verifier replayed the pinned exit's
        IMA list before (it asks for the entries after those only)."""
        if mtu is not None and not 0 < mtu < 65536:
            raise ValueError("mtu must be 1-65535")
        if evidence_since is not None and (attestation_nonce is None or pinned_node_id is None):
            raise ValueError("evidence_since needs an attestation nonce and a pinned exit")
        if attestation_nonce is not None and len(attestation_nonce) != ATTESTATION_NONCE_SIZE:
            raise ValueError("attestation nonce must be 32 bytes")
        if attestation_nonce is not None and evidence_checker is None:
            raise ValueError("an attestation nonce needs an evidence_checker")
        if evidence_checker is not None and attestation_nonce is None:
            # Without a nonce no evidence is asked for, so the checker would never run.
            raise ValueError("an evidence_checker needs an attestation nonce")
        if pinned_node_id is not None and len(pinned_node_id) != NODE_ID_SIZE:
            raise ValueError("pinned node id must be 32 bytes")
        prefs = tuple(ciphers) if ciphers else default_cipher_preference()
        if not 0 < len(prefs) <= MAX_CIPHER_CHOICES:
            raise ValueError("between 1 and 4 ciphers")
        self._identity = identity
        self._certificate = certificate
        self._mode = mode
        self._pinned = pinned_node_id
        self._nonce = attestation_nonce
        self._checker = evidence_checker
        self._config = config or SessionConfig()
        self._backend = backend or default_backend()
        self._eph: kex.Ephemeral | None = kex.initiate(mode, self._backend)
        self._hello = ClientHello(
            mode, prefs, self._eph.x25519_public, self._eph.kem_public,
            secrets.token_bytes(RANDOM_SIZE), attestation_nonce, pinned_node_id, mtu,
            evidence_since,
        ).encode()  # fmt: skip
        self.exit_identity: HybridPublicKey | None = None
        self.evidence: bytes = b""

    def hello(self) -> bytes:
        return self._hello

    def receive(
        self, data: bytes, now: float, *, token: str | bytes | None = None
    ) -> tuple[Session, bytearray]:
        """Check the ServerHello; return the session and the ClientFinish record to send.

        ``token``: the connection token this hello was sent with (None: none, as in tests
        and in-process pairs); the exit's signature must cover the same one."""
        bound = token_bytes(token)
        eph = self._eph
        if eph is None:
            raise StateError("handshake already finished")
        self._eph = None
        try:
            sh = ServerHello.decode(data)
            hello = ClientHello.decode(self._hello)
            if sh.mode is not self._mode or sh.cipher not in hello.ciphers:
                raise UnsupportedParameters("exit chose parameters we did not offer")
            exit_id = node_id(sh.identity)
            if self._pinned is not None and exit_id != self._pinned:
                raise AuthenticationFailed("exit node id differs from the pinned one")
            h1 = _transcript(bound, self._hello, sh.signed_part())
            sh.identity.verify(SERVER_LABEL, h1, sh.signature, self._mode)
            if self._nonce is not None:
                assert self._checker is not None
                try:
                    self._checker(sh.evidence, self._nonce, exit_id)
                except Exception as exc:  # any checker failure refuses the exit
                    raise AuthenticationFailed(f"evidence: {exc.__class__.__name__}") from None
            ikm = kex.complete(eph, sh.x25519, sh.ciphertext)
        finally:
            eph.forget()
        h2 = _transcript(bound, self._hello, data)
        try:
            keys = derive(ikm, h2, _KEYS_INFO, is_client=True)
        finally:
            wipe(ikm)
        self.exit_identity, self.evidence = sh.identity, sh.evidence
        session = Session(
            is_client=True, mode=self._mode, cipher=sh.cipher, keys=keys, peer=sh.identity,
            now=now, config=self._config, backend=self._backend,
        )  # fmt: skip
        finish = ClientFinish.signed(self._identity, self._certificate, h2, self._mode)
        return session, session.seal_finish(finish, now)


class ServerHandshake:
    """Exit side.  ``receive(client_hello, now, token=..., expected_device=...)`` ->
    (Session awaiting ClientFinish, reply)."""

    def __init__(
        self,
        identity: HybridSigningKey,
        authorizer: Authorizer,
        *,
        modes: Collection[Mode] = (Mode.HYBRID,),
        ciphers: Sequence[Cipher] = (Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305),
        evidence_provider: EvidenceProvider | None = None,
        evidence_since_provider: EvidenceSinceProvider | None = None,
        config: SessionConfig | None = None,
        backend: Backend | None = None,
    ) -> None:
        """``evidence_since_provider`` answers hellos that say how much of the IMA list
        the client has (without one, those get ``evidence_provider``'s whole list)."""
        self._identity = identity
        self._authorizer = authorizer
        self._since_provider = evidence_since_provider
        self._modes = frozenset(modes)
        self._ciphers = tuple(ciphers)
        self._provider = evidence_provider
        self._config = config or SessionConfig()
        self._backend = backend or default_backend()
        self.node_id = identity.node_id
        # Who the connection claims to be, for the exit's own log of a refusal: the hello
        # names nobody, so this is the device the token named (or None).
        self.peer_label: str | None = None

    def receive(
        self,
        data: bytes,
        now: float,
        *,
        token: str | bytes | None = None,
        expected_device: bytes | None = None,
    ) -> tuple[Session, bytes]:
        """Answer a ClientHello.

        ``token``: the connection token the gate admitted (bound into the transcript; the
        client must have bound the same one). ``expected_device``: the node id the token
        named; the ClientFinish must then prove that identity. Raises the handshake's peer
        errors for a bad hello; ``ValueError`` for local faults (oversized evidence)."""
        if expected_device is not None and len(expected_device) != NODE_ID_SIZE:
            raise ValueError("expected_device must be a 32-byte node id")
        bound = token_bytes(token)
        self.peer_label = expected_device.hex()[:16] if expected_device is not None else None
        ch = ClientHello.decode(data)
        if ch.mode not in self._modes:
            raise UnsupportedParameters("mode not allowed here")
        cipher = next((c for c in ch.ciphers if c in self._ciphers), None)
        if cipher is None:
            raise UnsupportedParameters("no common cipher")
        if ch.pinned is not None and ch.pinned != self.node_id:
            raise AuthenticationFailed("client expects another exit")
        evidence = b""
        if ch.nonce is not None:
            if ch.since is not None and self._since_provider is not None:
                evidence = self._since_provider(ch.nonce, self.node_id, ch.since)
            elif self._provider is not None:
                evidence = self._provider(ch.nonce, self.node_id)
            if len(evidence) > MAX_EVIDENCE_SIZE:
                raise ValueError("evidence larger than MAX_EVIDENCE_SIZE")
        x_pub, ciphertext, ikm = kex.respond(ch.mode, self._backend, ch.x25519, ch.kem)
        try:
            unsigned = ServerHello(
                ch.mode, cipher, x_pub, ciphertext, secrets.token_bytes(RANDOM_SIZE),
                self._identity.public, evidence, HybridSignature(b"", b""),
            )  # fmt: skip
            h1 = _transcript(bound, data, unsigned.signed_part())
            signature = self._identity.sign(SERVER_LABEL, h1, ch.mode)
            reply = unsigned.signed_part() + signature.encode()
            h2 = _transcript(bound, data, reply)
            keys = derive(ikm, h2, _KEYS_INFO, is_client=False)
        finally:
            wipe(ikm)
        session = Session(
            is_client=False, mode=ch.mode, cipher=cipher, keys=keys, peer=None, now=now,
            config=self._config, backend=self._backend,
            finish_check=FinishCheck(h2, self._authorizer, expected_device),
        )  # fmt: skip
        session.peer_mtu = ch.mtu
        return session, reply
