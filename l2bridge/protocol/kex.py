"""The ephemeral hybrid key exchange shared by the handshake and in-band rekeys.

The initiator sends an X25519 public key and an ML-KEM-1024 encapsulation key
(per ``Mode``: classical omits ML-KEM, pqc_only omits X25519); the responder
answers with its X25519 public key and the ML-KEM ciphertext.  Both get
``ikm = X25519 secret || ML-KEM secret`` (in a bytearray the caller wipes).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from l2bridge.codec import Reader
from l2bridge.constants import (
    MLKEM_CIPHERTEXT_SIZE,
    MLKEM_PUBLIC_SIZE,
    X25519_PUBLIC_SIZE,
    Mode,
)
from l2bridge.crypto.pq import Backend, KemPrivateKey
from l2bridge.errors import MalformedMessage, StateError


@dataclass(slots=True)
class Ephemeral:
    """The initiator's secret half; ``forget()`` drops the private keys."""

    mode: Mode
    x25519: X25519PrivateKey | None
    kem: KemPrivateKey | None
    x25519_public: bytes
    kem_public: bytes

    def shares(self) -> bytes:
        return self.x25519_public + self.kem_public

    def forget(self) -> None:
        self.x25519 = None
        self.kem = None


def initiate(mode: Mode, backend: Backend) -> Ephemeral:
    x_priv = X25519PrivateKey.generate() if mode.uses_classical else None
    x_pub = x_priv.public_key().public_bytes_raw() if x_priv is not None else b""
    kem_pub, kem_priv = backend.kem_generate() if mode.uses_pq else (b"", None)
    return Ephemeral(mode, x_priv, kem_priv, x_pub, kem_pub)


def read_initiator_shares(r: Reader, mode: Mode) -> tuple[bytes, bytes]:
    x = r.take(X25519_PUBLIC_SIZE) if mode.uses_classical else b""
    k = r.take(MLKEM_PUBLIC_SIZE) if mode.uses_pq else b""
    return x, k


def read_responder_shares(r: Reader, mode: Mode) -> tuple[bytes, bytes]:
    x = r.take(X25519_PUBLIC_SIZE) if mode.uses_classical else b""
    c = r.take(MLKEM_CIPHERTEXT_SIZE) if mode.uses_pq else b""
    return x, c


def respond(
    mode: Mode, backend: Backend, x25519_public: bytes, kem_public: bytes
) -> tuple[bytes, bytes, bytearray]:
    """(X25519 public, ML-KEM ciphertext, ikm); ``MalformedMessage`` on unusable peer keys."""
    ikm = bytearray()
    x_pub = ciphertext = b""
    try:
        if mode.uses_classical:
            mine = X25519PrivateKey.generate()
            ikm += mine.exchange(X25519PublicKey.from_public_bytes(x25519_public))
            x_pub = mine.public_key().public_bytes_raw()
        if mode.uses_pq:
            secret, ciphertext = backend.kem_encapsulate(kem_public)
            ikm += secret
    except ValueError:
        # A low-order X25519 point or an ML-KEM key that fails its modulus check.
        raise MalformedMessage("bad key share") from None
    return x_pub, ciphertext, ikm


def complete(eph: Ephemeral, x25519_public: bytes, ciphertext: bytes) -> bytearray:
    """The initiator's ikm from the responder's shares; forgets the private keys."""
    ikm = bytearray()
    try:
        if eph.mode.uses_classical:
            if eph.x25519 is None:
                raise StateError("exchange already completed")
            ikm += eph.x25519.exchange(X25519PublicKey.from_public_bytes(x25519_public))
        if eph.mode.uses_pq:
            if eph.kem is None:
                raise StateError("exchange already completed")
            ikm += eph.kem.decapsulate(ciphertext)
    except ValueError:
        raise MalformedMessage("bad key share") from None
    finally:
        eph.forget()
    return ikm
