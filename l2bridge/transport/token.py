"""Connection tokens: the client's right to open a WebSocket to one exit.

A token is ``base64url(nonce || mac)`` (43 characters, looks like any random
session id) sent as the ``Sec-WebSocket-Protocol`` value. ``mac`` is
HMAC-SHA-256 truncated to 16 bytes, keyed by the exit's access key (32 random
bytes handed out of band to authorised clients, like an obfs4 bridge line),
over a label, the exit's ``node_id``, the time window number and the nonce.

The window is not sent: the exit tries its current window and one either side,
so a token is valid for two to three windows and says nothing about the
client's clock. Each nonce is accepted once: the verifier keeps the nonces of
the live windows (bounded; when a window's cache is full it refuses rather
than grow).

Sans-I/O: time comes in as ``now`` (seconds since the epoch), randomness as
bytes.
"""

from __future__ import annotations

import base64
import binascii
import hmac as std_hmac
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac

from l2bridge.transport.constants import (
    ACCESS_KEY_BYTES,
    DEFAULT_TOKEN_WINDOW_S,
    REPLAY_CACHE_PER_WINDOW,
    TOKEN_BYTES,
    TOKEN_LABEL,
    TOKEN_MAC_BYTES,
    TOKEN_NONCE_BYTES,
    TOKEN_TEXT_LENGTH,
    TOKEN_WINDOW_SLACK,
)
from l2bridge.transport.errors import TokenError

_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class AccessKey:
    """A per-exit secret that authorised clients hold. ``repr`` never shows it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != ACCESS_KEY_BYTES:
            raise TokenError(f"access key must be {ACCESS_KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> AccessKey:
        return cls(os.urandom(ACCESS_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str) -> AccessKey:
        """Parse the base64url form kept in an access key file.

        Raises TokenError when the text is not 32 bytes of base64url.
        """
        raw = text.strip().encode("ascii", "replace")
        try:
            secret = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("access key is not base64url") from None
        return cls(secret)

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self.secret).rstrip(b"=").decode("ascii")


def window_of(now: float, window_s: int) -> int:
    return int(now // window_s)


def _mac(key: AccessKey, node_id: bytes, window: int, nonce: bytes) -> bytes:
    h = hmac.HMAC(key.secret, hashes.SHA256())
    h.update(TOKEN_LABEL)
    h.update(len(node_id).to_bytes(2, "big"))
    h.update(node_id)
    h.update(window.to_bytes(8, "big", signed=True))
    h.update(nonce)
    return h.finalize()[:TOKEN_MAC_BYTES]


def mint_token(
    key: AccessKey,
    node_id: bytes,
    now: float,
    *,
    window_s: int = DEFAULT_TOKEN_WINDOW_S,
    nonce: bytes | None = None,
) -> str:
    """Return a fresh token for the exit ``node_id`` in the window holding ``now``."""
    if nonce is None:
        nonce = os.urandom(TOKEN_NONCE_BYTES)
    if len(nonce) != TOKEN_NONCE_BYTES:
        raise TokenError(f"token nonce must be {TOKEN_NONCE_BYTES} bytes")
    mac = _mac(key, node_id, window_of(now, window_s), nonce)
    return base64.urlsafe_b64encode(nonce + mac).rstrip(b"=").decode("ascii")


def decode_token(text: str) -> bytes | None:
    """Return the token's 32 bytes, or None when the text cannot be a token."""
    raw = text.encode("ascii", "replace")
    if len(raw) != TOKEN_TEXT_LENGTH or not _B64URL.issuperset(raw):
        return None
    try:
        data = base64.urlsafe_b64decode(raw + b"=")
    except (binascii.Error, ValueError):
        return None
    # A 43-character string can hide low bits in its last character; only the
    # canonical encoding counts, so one token has exactly one spelling.
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw or len(data) != TOKEN_BYTES:
        return None
    return data


class TokenVerifier:
    """The exit's side: accepts each valid token once.

    ``check`` returns True for a token minted with this key for this node_id in
    the current window or one either side, never seen before; anything else
    returns False (the caller answers with the decoy site, so the reason is
    only counted, never told).
    """

    def __init__(
        self,
        key: AccessKey,
        node_id: bytes,
        *,
        window_s: int = DEFAULT_TOKEN_WINDOW_S,
        cache_per_window: int = REPLAY_CACHE_PER_WINDOW,
    ) -> None:
        if window_s <= 0:
            raise TokenError("token window must be positive")
        self._key = key
        self._node_id = bytes(node_id)
        self._window_s = window_s
        self._cache_per_window = cache_per_window
        self._seen: dict[int, set[bytes]] = {}
        self.rejected: dict[str, int] = {"malformed": 0, "mac": 0, "replay": 0, "full": 0}

    def _prune(self, current: int) -> None:
        for window in [w for w in self._seen if w < current - TOKEN_WINDOW_SLACK]:
            del self._seen[window]

    def cached_nonces(self) -> int:
        return sum(len(s) for s in self._seen.values())

    def check(self, text: str, now: float) -> bool:
        data = decode_token(text)
        if data is None:
            self.rejected["malformed"] += 1
            return False
        nonce, mac = data[:TOKEN_NONCE_BYTES], data[TOKEN_NONCE_BYTES:]
        current = window_of(now, self._window_s)
        self._prune(current)
        for window in range(current - TOKEN_WINDOW_SLACK, current + TOKEN_WINDOW_SLACK + 1):
            if std_hmac.compare_digest(_mac(self._key, self._node_id, window, nonce), mac):
                break
        else:
            self.rejected["mac"] += 1
            return False
        # A nonce is remembered under the window it was minted for, which stays
        # live for as long as the token could verify.
        seen = self._seen.setdefault(window, set())
        if nonce in seen:
            self.rejected["replay"] += 1
            return False
        if len(seen) >= self._cache_per_window:
            self.rejected["full"] += 1
            return False
        seen.add(nonce)
        return True
