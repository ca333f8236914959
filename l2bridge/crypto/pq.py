"""Backend seam for the post-quantum primitives (ML-KEM-1024, ML-DSA-87).

``cryptography`` (OpenSSL 3.5+) is the default and the only backend that loads
seed-form private keys, which is what identity files hold.  liboqs-python can
supply ephemeral ML-KEM and ML-DSA signing/verification where its C library
loads (``security.pq_backend: liboqs``); it is imported lazily, only when asked
for and only once the C library was found, so its absence costs nothing and
never starts liboqs-python's download-and-build.

Private keys come in two standard encodings (FIPS 203/204 seed, or the
expanded secret key); ``load_*`` take both and each backend uses the form it
supports, so the same known-answer vectors run on every backend present.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from l2bridge.constants import (
    MLDSA_PUBLIC_SIZE,
    MLDSA_SIGNATURE_SIZE,
    MLKEM_CIPHERTEXT_SIZE,
    MLKEM_PUBLIC_SIZE,
    Cipher,
)
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


# Sizes of ML-KEM-1024 / ML-DSA-87 values liboqs reads (FIPS 203 / FIPS 204). liboqs
# takes a pointer and reads as much as the algorithm needs, whatever Python passed: every
# value is checked against these before it reaches C.
MLKEM_SECRET_KEY_SIZE = 3168
MLKEM_SHARED_SIZE = 32
MLDSA_SECRET_KEY_SIZE = 4896
MAX_CONTEXT_SIZE = 255  # FIPS 204: the context string is at most 255 bytes
_MLKEM_Q = 3329
_MLKEM_POLY_BYTES = 384 * 4  # k = 4 polynomials of 256 12-bit coefficients


def mlkem_public_key_ok(public: bytes) -> bool:
    """FIPS 203 section 7.2 input check of an ML-KEM-1024 encapsulation key: its size,
    and every 12-bit coefficient below q (what re-encoding the decoded key would change)."""
    if len(public) != MLKEM_PUBLIC_SIZE:
        return False
    packed = public[:_MLKEM_POLY_BYTES]
    for i in range(0, _MLKEM_POLY_BYTES, 3):
        b0, b1, b2 = packed[i], packed[i + 1], packed[i + 2]
        if b0 | (b1 & 0x0F) << 8 >= _MLKEM_Q or b1 >> 4 | b2 << 4 >= _MLKEM_Q:
            return False
    return True


def find_liboqs() -> str | None:
    """Where liboqs' shared library loads from, found without importing liboqs-python.

    Looks where liboqs-python looks (the system's library path, then
    ``$OQS_INSTALL_PATH`` or ``~/_oqs``, ``lib`` and ``lib64``) and loads the candidate to be
    sure. Importing ``oqs`` when this finds nothing would start liboqs-python's
    download-and-build of liboqs and end in ``SystemExit``: never do that.
    """
    install = Path(os.environ.get("OQS_INSTALL_PATH") or Path.home() / "_oqs")
    candidates = [ctypes.util.find_library(name) for name in ("oqs", "liboqs")]
    candidates += [str(install / sub / "liboqs.so") for sub in ("lib", "lib64")]
    for path in candidates:
        if not path:
            continue
        try:
            ctypes.CDLL(path)
        except OSError:
            continue
        return path
    return None


class _OqsKem:
    __slots__ = ("_kem",)

    def __init__(self, kem: Any) -> None:
        self._kem = kem

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != MLKEM_CIPHERTEXT_SIZE:
            raise ValueError("bad ML-KEM ciphertext size")
        return bytes(self._kem.decap_secret(bytes(ciphertext)))


class _OqsSigner:
    __slots__ = ("_sig", "public_bytes")

    def __init__(self, sig: Any, public: bytes) -> None:
        self._sig = sig
        self.public_bytes = public

    def sign(self, message: bytes, context: bytes) -> bytes:
        if len(context) > MAX_CONTEXT_SIZE:
            raise ValueError("ML-DSA context longer than 255 bytes")
        return bytes(self._sig.sign_with_ctx_str(bytes(message), bytes(context)))


class OqsBackend:
    """liboqs-python over the liboqs C library; ``BackendUnavailable`` where it cannot load.

    The C library is looked for first (``find_liboqs``); ``oqs`` is imported only when it is
    there, so a missing library never starts liboqs-python's build, and whatever the import
    still raises (``SystemExit`` included) becomes ``BackendUnavailable``. The library must
    offer ML-KEM-1024 and ML-DSA-87 with context strings. Seed-form signing keys cannot be
    loaded (liboqs has no seed import), so identities always sign with ``cryptography``.
    """

    name = "liboqs"

    def __init__(self) -> None:
        if find_liboqs() is None:
            raise BackendUnavailable("liboqs shared library not found (set OQS_INSTALL_PATH)")
        try:
            import oqs  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        except (Exception, SystemExit) as exc:
            raise BackendUnavailable(
                f"liboqs-python not usable: {exc.__class__.__name__}"
            ) from None
        try:
            usable = (
                bool(oqs.is_kem_enabled(MLKEM_NAME))
                and bool(oqs.is_sig_enabled(MLDSA_NAME))
                and bool(oqs.sig_supports_context(MLDSA_NAME))
            )
        except Exception as exc:
            raise BackendUnavailable(f"liboqs not usable: {exc.__class__.__name__}") from None
        if not usable:
            raise BackendUnavailable(f"liboqs lacks {MLKEM_NAME} or {MLDSA_NAME} with contexts")
        self._oqs: Any = oqs

    def kem_generate(self) -> tuple[bytes, KemPrivateKey]:
        kem = self._oqs.KeyEncapsulation(MLKEM_NAME)
        public = bytes(kem.generate_keypair())
        return public, _OqsKem(kem)

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        if not mlkem_public_key_ok(public):
            raise ValueError("bad ML-KEM public key")
        with self._oqs.KeyEncapsulation(MLKEM_NAME) as kem:
            try:
                ciphertext, shared = kem.encap_secret(bytes(public))
            except Exception as exc:  # liboqs raises RuntimeError when C refuses the key
                raise ValueError("bad ML-KEM public key") from exc
        if len(ciphertext) != MLKEM_CIPHERTEXT_SIZE or len(shared) != MLKEM_SHARED_SIZE:
            raise ValueError("liboqs returned a wrongly sized encapsulation")
        return bytes(shared), bytes(ciphertext)

    def kem_load_private(self, seed: bytes, expanded: bytes) -> KemPrivateKey:
        if len(expanded) != MLKEM_SECRET_KEY_SIZE:
            raise ValueError("liboqs needs the expanded ML-KEM-1024 secret key")
        return _OqsKem(self._oqs.KeyEncapsulation(MLKEM_NAME, secret_key=bytes(expanded)))

    def sig_generate(self) -> Signer:
        sig = self._oqs.Signature(MLDSA_NAME)
        public = bytes(sig.generate_keypair())
        return _OqsSigner(sig, public)

    def sig_load_signer(self, seed: bytes, expanded: bytes | None = None) -> Signer:
        raise BackendUnavailable("liboqs signers cannot be loaded from a seed")

    def sig_verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        if (
            len(public) != MLDSA_PUBLIC_SIZE
            or len(signature) != MLDSA_SIGNATURE_SIZE
            or len(context) > MAX_CONTEXT_SIZE
        ):
            return False
        try:
            with self._oqs.Signature(MLDSA_NAME) as sig:
                return bool(
                    sig.verify_with_ctx_str(
                        bytes(message), bytes(signature), bytes(context), bytes(public)
                    )
                )
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
    """The named backend (``security.pq_backend``); ``BackendUnavailable`` if it is unknown
    or cannot load here."""
    if name == _DEFAULT.name:
        return _DEFAULT
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
