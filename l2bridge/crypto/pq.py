"""Backend seam for the post-quantum primitives (ML-KEM-1024, ML-DSA-87).

``cryptography`` (OpenSSL 3.5+) is the default and the only backend that loads
seed-form private keys, which is what identity files hold.  liboqs-python can
supply ephemeral ML-KEM and ML-DSA signing/verification where its C library
loads; it is imported lazily, only when asked for, so its absence costs nothing.

Private keys come in two standard encodings (FIPS 203/204 seed, or the
expanded secret key); ``load_*`` take both and each backend uses the form it
supports, so the same known-answer vectors run on every backend present.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from l2bridge.constants import Cipher
from l2bridge.errors import BackendUnavailable

MLKEM_NAME = "ML-KEM-1024"
MLDSA_NAME = "ML-DSA-87"


class KemPrivateKey(Protocol):
    def decapsulate(self, ciphertext: bytes) -> bytes: ...


class Signer(Protocol):
    @property
    def public_bytes(self) -> bytes: ...

    def sign(self, message: bytes, context: bytes) -> bytes: ...


class Backend(Protocol):
    name: str

    def kem_generate(self) -> tuple[bytes, KemPrivateKey]:
        """A fresh key pair: (encapsulation key bytes, private key)."""
        ...

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext); ``ValueError`` on a malformed key."""
        ...

    def kem_load_private(self, seed: bytes, expanded: bytes) -> KemPrivateKey: ...

    def sig_generate(self) -> Signer: ...

    def sig_load_signer(self, seed: bytes, expanded: bytes | None = None) -> Signer: ...

    def sig_verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        """True only for a valid signature; never raises for bad input."""
        ...


class _CryptographySigner:
    __slots__ = ("_key", "public_bytes")

    def __init__(self, key: mldsa.MLDSA87PrivateKey) -> None:
        self._key = key
        self.public_bytes = key.public_key().public_bytes_raw()

    def sign(self, message: bytes, context: bytes) -> bytes:
        return self._key.sign(message, context)


class CryptographyBackend:
    name = "cryptography"

    def kem_generate(self) -> tuple[bytes, KemPrivateKey]:
        key = mlkem.MLKEM1024PrivateKey.generate()
        return key.public_key().public_bytes_raw(), key

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        shared, ciphertext = mlkem.MLKEM1024PublicKey.from_public_bytes(public).encapsulate()
        return shared, ciphertext

    def kem_load_private(self, seed: bytes, expanded: bytes) -> KemPrivateKey:
        return mlkem.MLKEM1024PrivateKey.from_seed_bytes(seed)

    def sig_generate(self) -> Signer:
        return _CryptographySigner(mldsa.MLDSA87PrivateKey.generate())

    def sig_load_signer(self, seed: bytes, expanded: bytes | None = None) -> Signer:
        return _CryptographySigner(mldsa.MLDSA87PrivateKey.from_seed_bytes(seed))

    def sig_verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        try:
            key = _mldsa_public(public)
            key.verify(signature, message, context)
        except (InvalidSignature, ValueError):
            return False
        return True


@functools.lru_cache(maxsize=64)
def _mldsa_public(public: bytes) -> mldsa.MLDSA87PublicKey:
    # Identities repeat (the exit's key, the admin key): parse each once.
    return mldsa.MLDSA87PublicKey.from_public_bytes(public)


class _OqsKem:
    __slots__ = ("_kem",)

    def __init__(self, kem: Any) -> None:
        self._kem = kem

    def decapsulate(self, ciphertext: bytes) -> bytes:
        return bytes(self._kem.decap_secret(ciphertext))


class _OqsSigner:
    __slots__ = ("_sig", "public_bytes")

    def __init__(self, sig: Any, public: bytes) -> None:
        self._sig = sig
        self.public_bytes = public

    def sign(self, message: bytes, context: bytes) -> bytes:
        return bytes(self._sig.sign_with_ctx_str(message, context))


class OqsBackend:
    """liboqs-python; constructing it raises ``BackendUnavailable`` where it cannot load."""

    name = "liboqs"

    def __init__(self) -> None:
        try:
            import oqs  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        except Exception as exc:  # liboqs-python raises various errors when its C lib is absent
            raise BackendUnavailable(
                f"liboqs-python not usable: {exc.__class__.__name__}"
            ) from None
        self._oqs: Any = oqs

    def kem_generate(self) -> tuple[bytes, KemPrivateKey]:
        kem = self._oqs.KeyEncapsulation(MLKEM_NAME)
        public = bytes(kem.generate_keypair())
        return public, _OqsKem(kem)

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        with self._oqs.KeyEncapsulation(MLKEM_NAME) as kem:
            try:
                ciphertext, shared = kem.encap_secret(public)
            except Exception as exc:  # liboqs raises RuntimeError/ValueError on bad keys
                raise ValueError("bad ML-KEM public key") from exc
        return bytes(shared), bytes(ciphertext)

    def kem_load_private(self, seed: bytes, expanded: bytes) -> KemPrivateKey:
        return _OqsKem(self._oqs.KeyEncapsulation(MLKEM_NAME, secret_key=expanded))

    def sig_generate(self) -> Signer:
        sig = self._oqs.Signature(MLDSA_NAME)
        public = bytes(sig.generate_keypair())
        return _OqsSigner(sig, public)

    def sig_load_signer(self, seed: bytes, expanded: bytes | None = None) -> Signer:
        raise BackendUnavailable("liboqs signers cannot be loaded from a seed")

    def sig_verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        try:
            with self._oqs.Signature(MLDSA_NAME) as sig:
                return bool(sig.verify_with_ctx_str(message, signature, context, public))
        except Exception:  # malformed input: liboqs raises rather than returning False
            return False


_BACKENDS: dict[str, type[CryptographyBackend] | type[OqsBackend]] = {
    "cryptography": CryptographyBackend,
    "liboqs": OqsBackend,
}
_DEFAULT = CryptographyBackend()


def default_backend() -> Backend:
    return _DEFAULT


def get_backend(name: str) -> Backend:
    """The named backend; ``BackendUnavailable`` if it is unknown or cannot load."""
    cls = _BACKENDS.get(name)
    if cls is None:
        raise BackendUnavailable(f"unknown backend {name!r}")
    return cls()


def available_backends() -> list[Backend]:
    """Every backend that loads here (always at least ``cryptography``)."""
    found: list[Backend] = []
    for name in _BACKENDS:
        try:
            found.append(get_backend(name))
        except BackendUnavailable:
            continue
    return found


def cpu_has_aes(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises AES-NI (the ``aes`` flag)."""
    try:
        with open(cpuinfo_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "aes" in line.split(":", 1)[-1].split()
    except OSError:
        return False
    return False


def default_cipher_preference() -> tuple[Cipher, ...]:
    """AES-256-GCM first where AES-NI makes it fast, else ChaCha20-Poly1305 first."""
    if cpu_has_aes():
        return (Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305)
    return (Cipher.CHACHA20_POLY1305, Cipher.AES_256_GCM)
