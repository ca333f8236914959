"""One hop's key exchange inside a circuit (sans-I/O): CREATE from the client, CREATED back.

The client runs it with every hop, hop 1 over its own link and the others through the
hops it already has (EXTEND / EXTENDED), so each hop's keys are shared with the client
alone. It is the tunnel handshake's exchange and signatures (``kex``, ``HybridSigningKey``,
``HybridPublicKey.verify``) without a client identity: a hop never learns who built the
circuit. ::

    CREATE  = 0x61 | version u8 | mode u8 | [X25519 public 32] | [ML-KEM-1024 ek 1568]
              | attestation nonce 32
    CREATED = 0x62 | version u8 | mode u8 | [X25519 public 32] | [ML-KEM ciphertext 1568]
              | random 32 | hop HybridPublicKey | u32 length | evidence (<= MAX_HOP_EVIDENCE_SIZE)
              | HybridSignature over H1 (label "circuit hop")

    H1 = SHA-384("shadowmesh v1 hop" | u32 len | CREATE | CREATED up to the signature)
    H2 = the same over the whole CREATED
    evidence nonce = SHA-256("shadowmesh v1 hop evidence" | nonce | SHA-384(CREATE)
                     | hop X25519 public | ML-KEM ciphertext)
    keys = onion.derive_hop(ikm = X25519 secret || ML-KEM secret, salt = H2)

The hop's TPM evidence is asked for the evidence nonce, so it covers the client's nonce
*and* both sides' shares: evidence replayed from another exchange does not verify. The
client pins the hop's nodeId (from the registry) and checks the evidence with the same
``EvidenceChecker`` as a single-hop exit. Failures raise the handshake's peer errors.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from l2bridge.codec import Reader, u32, var32
from l2bridge.constants import (
    ATTESTATION_NONCE_SIZE,
    MAX_HOP_EVIDENCE_SIZE,
    MAX_HOP_HANDSHAKE,
    NODE_ID_SIZE,
    PROTOCOL_VERSION,
    RANDOM_SIZE,
    Mode,
)
from l2bridge.crypto.pq import Backend, default_backend
from l2bridge.crypto.secret import equal, wipe
from l2bridge.errors import (
    AuthenticationFailed,
    MalformedMessage,
    StateError,
    UnsupportedParameters,
)
from l2bridge.identity.keys import HybridPublicKey, HybridSignature, HybridSigningKey, node_id
from l2bridge.protocol import kex, onion
from l2bridge.protocol.handshake import EvidenceChecker, EvidenceProvider

MSG_CREATE = 0x61
MSG_CREATED = 0x62
HOP_LABEL = b"circuit hop"
_PREFIX = b"shadowmesh v1 hop"
_EVIDENCE_DOMAIN = b"shadowmesh v1 hop evidence"


def _mode(code: int) -> Mode:
    if code not in Mode._value2member_map_:
        raise UnsupportedParameters("mode")
    return Mode(code)


@dataclass(frozen=True, slots=True)
class Create:
    mode: Mode
    x25519: bytes
    kem: bytes
    nonce: bytes

    def encode(self) -> bytes:
        head = bytes((MSG_CREATE, PROTOCOL_VERSION, self.mode))
        return head + self.x25519 + self.kem + self.nonce

    @classmethod
    def decode(cls, data: bytes) -> Create:
        if len(data) > MAX_HOP_HANDSHAKE:
            raise MalformedMessage("create too large")
        r = Reader(data)
        if r.u8() != MSG_CREATE:
            raise MalformedMessage("not a CREATE")
        if r.u8() != PROTOCOL_VERSION:
            raise UnsupportedParameters("version")
        mode = _mode(r.u8())
        x, k = kex.read_initiator_shares(r, mode)
        nonce = r.take(ATTESTATION_NONCE_SIZE)
        r.end()
        return cls(mode, x, k, nonce)


@dataclass(frozen=True, slots=True)
class Created:
    mode: Mode
    x25519: bytes
    ciphertext: bytes
    random: bytes
    identity: HybridPublicKey
    evidence: bytes
    signature: HybridSignature

    def signed_part(self) -> bytes:
        return b"".join(
            [
                bytes((MSG_CREATED, PROTOCOL_VERSION, self.mode)),
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
    def decode(cls, data: bytes) -> Created:
        if len(data) > MAX_HOP_HANDSHAKE:
            raise MalformedMessage("created too large")
        r = Reader(data)
        if r.u8() != MSG_CREATED:
            raise MalformedMessage("not a CREATED")
        if r.u8() != PROTOCOL_VERSION:
            raise UnsupportedParameters("version")
        mode = _mode(r.u8())
        x, c = kex.read_responder_shares(r, mode)
        random = r.take(RANDOM_SIZE)
        identity = HybridPublicKey.read(r)
        evidence = r.var32(MAX_HOP_EVIDENCE_SIZE)
        signature = HybridSignature.read(r)
        r.end()
        return cls(mode, x, c, random, identity, evidence, signature)


def _transcript(create: bytes, created_part: bytes) -> bytes:
    return hashlib.sha384(_PREFIX + u32(len(create)) + create + created_part).digest()


def evidence_nonce(nonce: bytes, create: bytes, x25519: bytes, ciphertext: bytes) -> bytes:
    """The nonce the hop's evidence is asked for: the client's nonce bound to the exchange."""
    return hashlib.sha256(
        _EVIDENCE_DOMAIN + nonce + hashlib.sha384(create).digest() + x25519 + ciphertext
    ).digest()


@dataclass(frozen=True, slots=True)
class ClientHopKeys:
    """The client's two layers with one hop, and who the hop proved to be."""

    forward: onion.LayerSender
    backward: onion.LayerReceiver
    identity: HybridPublicKey
    evidence: bytes


@dataclass(frozen=True, slots=True)
class RelayHopKeys:
    """The hop's two layers for one circuit."""

    forward: onion.LayerReceiver
    backward: onion.LayerSender


class HopInitiator:
    """Client side with one hop: ``create()`` -> send; ``finish(created)`` -> keys."""

    def __init__(
        self,
        expected_node_id: bytes,
        *,
        mode: Mode = Mode.HYBRID,
        evidence_checker: EvidenceChecker | None = None,
        backend: Backend | None = None,
    ) -> None:
        if len(expected_node_id) != NODE_ID_SIZE:
            raise ValueError("node id must be 32 bytes")
        self.node_id = expected_node_id
        self._mode = mode
        self._checker = evidence_checker
        self._eph: kex.Ephemeral | None = kex.initiate(mode, backend or default_backend())
        self._nonce = secrets.token_bytes(ATTESTATION_NONCE_SIZE)
        self._create = Create(
            mode, self._eph.x25519_public, self._eph.kem_public, self._nonce
        ).encode()

    def create(self) -> bytes:
        return self._create

    def finish(self, data: bytes) -> ClientHopKeys:
        """Check CREATED; raise a PeerError (the hop is unusable) or return its layers."""
        eph = self._eph
        if eph is None:
            raise StateError("hop exchange already finished")
        self._eph = None
        try:
            created = Created.decode(data)
            if created.mode is not self._mode:
                raise UnsupportedParameters("hop chose a mode we did not offer")
            hop_id = node_id(created.identity)
            if not equal(hop_id, self.node_id):
                raise AuthenticationFailed("hop identity is not the registry's nodeId")
            h1 = _transcript(self._create, created.signed_part())
            created.identity.verify(HOP_LABEL, h1, created.signature, self._mode)
            if self._checker is not None:
                bound = evidence_nonce(
                    self._nonce, self._create, created.x25519, created.ciphertext
                )
                try:
                    self._checker(created.evidence, bound, hop_id)
                except Exception as exc:  # any checker failure refuses the hop
                    raise AuthenticationFailed(f"evidence: {exc.__class__.__name__}") from None
            ikm = kex.complete(eph, created.x25519, created.ciphertext)
        finally:
            eph.forget()
        try:
            fwd, bwd = onion.derive_hop(ikm, _transcript(self._create, data))
        finally:
            wipe(ikm)
        return ClientHopKeys(
            onion.LayerSender(fwd, onion.FORWARD),
            onion.LayerReceiver(bwd, onion.BACKWARD),
            created.identity,
            created.evidence,
        )


def respond(
    data: bytes,
    identity: HybridSigningKey,
    *,
    modes: frozenset[Mode] = frozenset((Mode.HYBRID,)),
    evidence_provider: EvidenceProvider | None = None,
    backend: Backend | None = None,
) -> tuple[bytes, RelayHopKeys]:
    """Hop side: (CREATED to send back, this hop's layers); PeerError on a bad CREATE."""
    create = Create.decode(data)
    if create.mode not in modes:
        raise UnsupportedParameters("mode not allowed here")
    x_pub, ciphertext, ikm = kex.respond(
        create.mode, backend or default_backend(), create.x25519, create.kem
    )
    try:
        evidence = b""
        if evidence_provider is not None:
            bound = evidence_nonce(create.nonce, data, x_pub, ciphertext)
            evidence = evidence_provider(bound, identity.node_id)
            if len(evidence) > MAX_HOP_EVIDENCE_SIZE:
                raise ValueError("evidence larger than MAX_HOP_EVIDENCE_SIZE")
        unsigned = Created(
            create.mode, x_pub, ciphertext, secrets.token_bytes(RANDOM_SIZE), identity.public,
            evidence, HybridSignature(b"", b""),
        )  # fmt: skip
        signed = unsigned.signed_part()
        signature = identity.sign(HOP_LABEL, _transcript(data, signed), create.mode)
        reply = signed + signature.encode()
        fwd, bwd = onion.derive_hop(ikm, _transcript(data, reply))
    finally:
        wipe(ikm)
    return reply, RelayHopKeys(
        onion.LayerReceiver(fwd, onion.FORWARD), onion.LayerSender(bwd, onion.BACKWARD)
    )
