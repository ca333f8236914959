"""Connection tokens (v2): one device's right to open a WebSocket to one exit.

Each exit has its own **master key** ``K`` (32 random bytes that never leave it).
A device holds a **credential** for that exit, issued by the exit's operator:

    handle  16 random bytes naming the credential in the exit's table (not secret)
    secret  HKDF-SHA-256(K, info = CREDENTIAL_INFO || node id || handle)     32 bytes
    hide    HKDF-SHA-256(K, info = HIDE_KEY_INFO || node id)                 16 bytes

The exit recomputes ``secret`` from ``K`` and the handle, so its table holds no
secrets; another exit (another ``K``, another node id) derives nothing that verifies
here. A token is ``base64url(nonce 16 | sealed 16 | mac 16)`` without padding
(64 characters, one canonical spelling), sent as the ``Sec-WebSocket-Protocol`` value:

    tag    = HMAC-SHA-256(secret, WINDOW_TAG_LABEL || i64 window)[:16]
    sealed = AES-128-CTR(hide, IV = nonce) of the tag
    mac    = HMAC-SHA-256(secret, TOKEN_LABEL || u16 len || node id || i64 window
                          || nonce || sealed)[:16]

The tag names the credential for one time window only (the exit keeps tag -> handle for
the live windows), and it is encrypted afresh in every token: an observer without
``hide`` can link nothing; ``hide`` is the same for every credential of one exit (the
exit must open the tag before it knows whose token it is), so a fellow credential holder
of that exit who watches the path can open tags, but a tag changes every window and only
the device's ``secret`` maps it to the device, so it links a device's tokens within one
window at most (and forges none).

The window is not sent: the exit tries its current window and one either side, so a
token is valid for two to three windows and says nothing about the client's clock.

Sans-I/O: time comes in as ``now`` (seconds since the epoch), randomness as bytes.
"""

from __future__ import annotations

import base64
import binascii
import hmac as std_hmac
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from l2bridge.transport.constants import (
    CREDENTIAL_HANDLE_BYTES,
    CREDENTIAL_INFO,
    CREDENTIAL_SECRET_BYTES,
    DEFAULT_TOKEN_WINDOW_S,
    HIDE_KEY_BYTES,
    HIDE_KEY_INFO,
    MASTER_KEY_BYTES,
    TOKEN_BYTES,
    TOKEN_LABEL,
    TOKEN_MAC_BYTES,
    TOKEN_NONCE_BYTES,
    TOKEN_TEXT_LENGTH,
    WINDOW_TAG_LABEL,
)
from l2bridge.transport.errors import TokenError

_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
NODE_ID_BYTES = 32


def b64_text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_bytes(text: str, size: int, what: str) -> bytes:
    """Parse unpadded base64url of exactly ``size`` bytes; TokenError names ``what``."""
    raw = text.strip().encode("ascii", "replace")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"{what} is not base64url") from None
    if len(data) != size:
        raise TokenError(f"{what} must be {size} bytes")
    return data


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One exit's own secret (``endpoints.access_key_file``). ``repr`` never shows it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != MASTER_KEY_BYTES:
            raise TokenError(f"master key must be {MASTER_KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(MASTER_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Parse the base64url form kept in the key file; raises TokenError."""
        return cls(b64_bytes(text, MASTER_KEY_BYTES, "master key"))

    def to_text(self) -> str:
        return b64_text(self.secret)


def _hkdf(key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def _check_node(node_id: bytes) -> bytes:
    if len(node_id) != NODE_ID_BYTES:
        raise TokenError(f"exit node id must be {NODE_ID_BYTES} bytes")
    return bytes(node_id)


def credential_secret(master: MasterKey, node_id: bytes, handle: bytes) -> bytes:
    """The secret of credential ``handle`` at the exit ``node_id``."""
    return _hkdf(master.secret, CREDENTIAL_INFO + _check_node(node_id) + handle,
                 CREDENTIAL_SECRET_BYTES)  # fmt: skip


def hide_key(master: MasterKey, node_id: bytes) -> bytes:
    """The key that seals handles in tokens for the exit ``node_id``."""
    return _hkdf(master.secret, HIDE_KEY_INFO + _check_node(node_id), HIDE_KEY_BYTES)


def seal_handle(hide: bytes, nonce: bytes, tag: bytes) -> bytes:
    """AES-CTR with the token's nonce as IV; the same call opens a sealed tag."""
    coder = Cipher(algorithms.AES(hide), modes.CTR(nonce)).encryptor()
    return coder.update(tag) + coder.finalize()


def window_tag(secret: bytes, window: int) -> bytes:
    """What names a credential in tokens of ``window`` (16 bytes, only its holder and
    the exit can compute it)."""
    message = WINDOW_TAG_LABEL + window.to_bytes(8, "big", signed=True)
    return std_hmac.digest(secret, message, "sha256")[:CREDENTIAL_HANDLE_BYTES]


def token_mac(secret: bytes, node_id: bytes, window: int, nonce: bytes, sealed: bytes) -> bytes:
    # The standard library's one-shot HMAC (OpenSSL underneath): the exit may compute
    # three per refused token, and this is several times cheaper than an HMAC object.
    message = b"".join([TOKEN_LABEL, len(node_id).to_bytes(2, "big"), node_id,
                        window.to_bytes(8, "big", signed=True), nonce, sealed])  # fmt: skip
    return std_hmac.digest(secret, message, "sha256")[:TOKEN_MAC_BYTES]


def window_of(now: float, window_s: int) -> int:
    return int(now // window_s)


@dataclass(frozen=True, slots=True)
class Credential:
    """What a device holds for one exit. ``repr`` shows neither key."""

    exit_node_id: bytes
    handle: bytes
    secret: bytes = field(repr=False)
    hide: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_node(self.exit_node_id)
        if len(self.handle) != CREDENTIAL_HANDLE_BYTES:
            raise TokenError(f"credential handle must be {CREDENTIAL_HANDLE_BYTES} bytes")
        if len(self.secret) != CREDENTIAL_SECRET_BYTES:
            raise TokenError(f"credential secret must be {CREDENTIAL_SECRET_BYTES} bytes")
        if len(self.hide) != HIDE_KEY_BYTES:
            raise TokenError(f"credential hide key must be {HIDE_KEY_BYTES} bytes")

    @classmethod
    def derive(cls, master: MasterKey, node_id: bytes, handle: bytes) -> Credential:
        """The credential ``handle`` of the exit with ``master`` and ``node_id``."""
        return cls(node_id, handle, credential_secret(master, node_id, handle),
                   hide_key(master, node_id))  # fmt: skip

    def to_json(self) -> dict[str, str]:
        return {
            "exit_node_id": self.exit_node_id.hex(),
            "handle": b64_text(self.handle),
            "secret": b64_text(self.secret),
            "hide": b64_text(self.hide),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Credential:
        """Parse one entry of a credential file; raises TokenError naming the field."""
        if not isinstance(doc, dict):
            raise TokenError("a credential must be a JSON object")
        fields = {}
        for name in ("exit_node_id", "handle", "secret", "hide"):
            value = doc.get(name)
            if not isinstance(value, str):
                raise TokenError(f"credential: {name}: missing or not text")
            fields[name] = value
        try:
            node_id = bytes.fromhex(fields["exit_node_id"])
        except ValueError:
            raise TokenError("credential: exit_node_id: not hex") from None
        return cls(
            node_id,
            b64_bytes(fields["handle"], CREDENTIAL_HANDLE_BYTES, "credential: handle"),
            b64_bytes(fields["secret"], CREDENTIAL_SECRET_BYTES, "credential: secret"),
            b64_bytes(fields["hide"], HIDE_KEY_BYTES, "credential: hide"),
        )


def mint_token(
    credential: Credential,
    now: float,
    *,
    window_s: int = DEFAULT_TOKEN_WINDOW_S,
    nonce: bytes | None = None,
) -> str:
    """Return a fresh token for the credential's exit in the window holding ``now``."""
    if nonce is None:
        nonce = os.urandom(TOKEN_NONCE_BYTES)
    if len(nonce) != TOKEN_NONCE_BYTES:
        raise TokenError(f"token nonce must be {TOKEN_NONCE_BYTES} bytes")
    window = window_of(now, window_s)
    sealed = seal_handle(credential.hide, nonce, window_tag(credential.secret, window))
    mac = token_mac(credential.secret, credential.exit_node_id, window, nonce, sealed)
    return b64_text(nonce + sealed + mac)


@dataclass(frozen=True, slots=True)
class TokenParts:
    nonce: bytes
    sealed: bytes
    mac: bytes


def decode_token(text: str) -> TokenParts | None:
    """Split a token, or return None when the text cannot be one (any other spelling)."""
    raw = text.encode("ascii", "replace")
    if len(raw) != TOKEN_TEXT_LENGTH or not _B64URL.issuperset(raw):
        return None
    try:
        data = base64.urlsafe_b64decode(raw)
    except (binascii.Error, ValueError):
        return None
    if len(data) != TOKEN_BYTES:
        return None
    n, h = TOKEN_NONCE_BYTES, TOKEN_NONCE_BYTES + CREDENTIAL_HANDLE_BYTES
    return TokenParts(data[:n], data[n:h], data[h:])
