"""The gate's token check (sans-I/O): which device, if any, a token admits.

``TokenVerifier.check(token, now, source)`` returns an ``Admission`` (the device the
token names) or None. In order, each step refusing with a counted reason:

1. ``malformed``  not a v2 token spelling (transport.token.decode_token);
2. ``unknown``    the tag (opened with the exit's hide key) names no credential of the
                  table in the current window or one either side (the verifier keeps
                  tag -> handle for those windows, rebuilt when credentials are issued);
3. ``revoked``    the entry is revoked, or its certificate serial is on a revocation list;
4. ``mac``        the MAC for that window does not verify under the credential's secret;
5. ``replay``     the nonce was already admitted (single use);
6. ``full``       the window's nonce cache is full (fail closed, bounded memory);
7. ``device quota`` / ``source quota``: the device's, or the source address's, token
   bucket of handshakes is empty.

The quotas are charged only for tokens that passed 1-5 (a deliberate change from
"quota before MAC"): nobody without a device's secret may drain that device's quota
with forged or replayed tokens, and a stranger flooding from a shared address (NAT, the
same loopback in tests) must not lock out the credential holders behind it. What the quotas
bound is the handshake work (signatures, KEM, TPM quote) an admitted token causes;
what a refused token costs is one AES block, a few dictionary lookups and one HMAC.
(The tag index costs one HMAC per credential per window, made at the first check of a
window or after the table changed: about 10 ms for 4,096 credentials once a minute, 60 ms
the first time, when their secrets are derived; measured on the shared test machine.)
A nonce is cached only once it is admitted, so refused tokens never fill the cache.

The caller answers every refusal the same way (the decoy or the fallback), so the
reason is only counted, never told. A refusal of a genuine token of a known device
(revoked, or over its quota: the MAC verified, so nobody can cause it without the
device's secret) is also reported to ``on_device_refused(name, reason)``, at most once
per device per ``DEVICE_REPORT_INTERVAL_S`` (a captured token replayed at line rate must
not flood the operator's log).
"""

from __future__ import annotations

import hmac as std_hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from l2bridge.transport.constants import (
    DEFAULT_HANDSHAKES_PER_DEVICE,
    DEFAULT_HANDSHAKES_PER_SOURCE,
    DEFAULT_TOKEN_WINDOW_S,
    MAX_CREDENTIALS,
    MAX_QUOTA_SOURCES,
    REPLAY_CACHE_PER_WINDOW,
    TOKEN_WINDOW_SLACK,
)
from l2bridge.transport.credentials import CredentialEntry, CredentialTable
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import (
    MasterKey,
    TokenParts,
    credential_secret,
    decode_token,
    hide_key,
    seal_handle,
    token_mac,
    window_of,
    window_tag,
)

DEVICE_REPORT_INTERVAL_S = 60.0

REASONS = ("malformed", "unknown", "revoked", "mac", "replay", "full", "device quota",
           "source quota")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Admission:
    """A token the gate accepted: the device it names (the handshake must prove it)."""

    token: str
    device: bytes  # node id of the device the credential was issued to
    handle: bytes
    name: str


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


@dataclass(slots=True)
class Quota:
    """Token buckets per key: ``per_minute`` admissions at once, refilled at that rate.

    At most ``max_keys`` buckets are held; past that, buckets that have refilled are
    forgotten (they equal a new one), and if none has, a new key is refused."""

    per_minute: int
    max_keys: int = MAX_QUOTA_SOURCES
    _buckets: dict[object, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_minute <= 0:
            raise TokenError("a handshake quota must be positive")

    def _level(self, key: object, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.per_minute)
        elapsed = max(0.0, now - bucket.stamp)
        return min(float(self.per_minute), bucket.level + elapsed * self.per_minute / 60.0)

    def available(self, key: object, now: float) -> bool:
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._forget_full(now)
            if len(self._buckets) >= self.max_keys:
                return False
        return self._level(key, now) >= 1.0

    def take(self, key: object, now: float) -> None:
        self._buckets[key] = _Bucket(self._level(key, now) - 1.0, now)

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._level(k, now) >= self.per_minute]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


# What a quota refusal of a genuine token tells the operator (``on_device_refused``).
_REPORTED = {
    "device quota": "over endpoints.handshakes_per_device",
    "source quota": "its address is over endpoints.handshakes_per_source",
}


class Ledger(Protocol):
    def admit(
        self, window: int, nonce: bytes, device: bytes, source: str, *, now: float, current: int
    ) -> str | None: ...


class AdmissionLedger:
    """Steps 5-7 of a check, for a token whose MAC verified: the nonce not seen before (in
    the window it was minted for), room in that window's cache, and the device's and the
    source's quotas. ``admit`` returns the refusal reason or None (then it is admitted:
    nonce cached, quotas charged). ``current`` is the current window: older windows past
    the slack are forgotten."""

    def __init__(
        self,
        *,
        cache_per_window: int = REPLAY_CACHE_PER_WINDOW,
        per_device: int = DEFAULT_HANDSHAKES_PER_DEVICE,
        per_source: int = DEFAULT_HANDSHAKES_PER_SOURCE,
    ) -> None:
        self._cache_per_window = cache_per_window
        self._seen: dict[int, set[bytes]] = {}
        self.device_quota = Quota(per_device)
        self.source_quota = Quota(per_source)

    def admit(
        self, window: int, nonce: bytes, device: bytes, source: str, *, now: float, current: int
    ) -> str | None:
        for old in [w for w in self._seen if w < current - TOKEN_WINDOW_SLACK]:
            del self._seen[old]
        # A nonce is remembered under the window it was minted for, which stays live for
        # as long as the token could verify.
        seen = self._seen.setdefault(window, set())
        if nonce in seen:
            return "replay"
        if len(seen) >= self._cache_per_window:
            return "full"
        if not self.device_quota.available(device, now):
            return "device quota"
        if not self.source_quota.available(source, now):
            return "source quota"
        self.device_quota.take(device, now)
        self.source_quota.take(source, now)
        seen.add(nonce)
        return None

    def cached_nonces(self) -> int:
        return sum(len(s) for s in self._seen.values())


class TokenVerifier:
    """The exit's side: admits each valid token of a live credential once.

    ``table`` may be replaced (``verifier.table = ...``) when its file is reloaded;
    ``revoked_serials`` is asked on every check (the live revocation lists)."""

    def __init__(
        self,
        master: MasterKey,
        node_id: bytes,
        table: CredentialTable,
        *,
        window_s: int = DEFAULT_TOKEN_WINDOW_S,
        cache_per_window: int = REPLAY_CACHE_PER_WINDOW,
        revoked_serials: Callable[[], frozenset[bytes]] = frozenset,
        per_device: int = DEFAULT_HANDSHAKES_PER_DEVICE,
        per_source: int = DEFAULT_HANDSHAKES_PER_SOURCE,
        on_device_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        if window_s <= 0:
            raise TokenError("token window must be positive")
        self._master = master
        self._node_id = bytes(node_id)
        self._hide = hide_key(master, node_id)
        self.table = table
        self._window_s = window_s
        self._revoked_serials = revoked_serials
        # Steps 5-7: single-use nonces and the quotas (one ledger per exit, however many
        # processes verify tokens for it: ``exitnode.workers`` shares the supervisor's).
        self.ledger: Ledger = AdmissionLedger(
            cache_per_window=cache_per_window, per_device=per_device, per_source=per_source
        )
        # Derived credential secrets by handle (HKDF costs more than the MAC); only for
        # handles in the table, and forgotten once more than a table's worth were kept.
        self._secrets: dict[bytes, bytes] = {}
        # window -> (tag -> handle) for the live windows, and which table they were made of.
        self._tags: dict[int, dict[bytes, bytes]] = {}
        self._tags_of: tuple[CredentialTable | None, int] = (None, -1)
        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._on_device_refused = on_device_refused
        self._reported: dict[bytes, float] = {}  # device -> when last reported

    def _secret(self, handle: bytes) -> bytes:
        secret = self._secrets.get(handle)
        if secret is None:
            if len(self._secrets) >= MAX_CREDENTIALS:
                self._secrets.clear()
            secret = credential_secret(self._master, self._node_id, handle)
            self._secrets[handle] = secret
        return secret

    def _live_windows(self, now: float) -> list[int]:
        """The current window first (a client with a right clock), then the slack."""
        current = window_of(now, self._window_s)
        slack = range(1, TOKEN_WINDOW_SLACK + 1)
        return [current, *(current - d for d in slack), *(current + d for d in slack)]

    def _refresh_tags(self, windows: list[int]) -> None:
        # The table object itself (not its id, which a replaced table may reuse) and how
        # many credentials it had issued when the index was made.
        made_of, generation = self._tags_of
        if made_of is not self.table or generation != self.table.generation:
            self._tags, self._tags_of = {}, (self.table, self.table.generation)
        for window in [w for w in self._tags if w not in windows]:
            del self._tags[window]
        for window in windows:
            if window not in self._tags:
                self._tags[window] = {
                    window_tag(self._secret(h), window): h for h in self.table.handles()
                }

    def _find(self, tag: bytes, windows: list[int]) -> tuple[bytes, int] | None:
        for window in windows:
            handle = self._tags[window].get(tag)
            if handle is not None:
                return handle, window
        return None

    def _mac_ok(self, handle: bytes, window: int, parts: TokenParts) -> bool:
        expected = token_mac(self._secret(handle), self._node_id, window, parts.nonce,
                             parts.sealed)  # fmt: skip
        return std_hmac.compare_digest(expected, parts.mac)

    def _report(self, entry: CredentialEntry, reason: str, now: float) -> None:
        if self._on_device_refused is None:
            return
        last = self._reported.get(entry.device)
        if last is not None and now - last < DEVICE_REPORT_INTERVAL_S:
            return
        if len(self._reported) >= MAX_CREDENTIALS:
            self._reported.clear()
        self._reported[entry.device] = now
        self._on_device_refused(entry.name, reason)

    def _refuse(self, reason: str) -> None:
        self.rejected[reason] += 1

    def check(self, text: str, now: float, source: str = "") -> Admission | None:
        parts = decode_token(text)
        if parts is None:
            self._refuse("malformed")
            return None
        windows = self._live_windows(now)
        self._refresh_tags(windows)
        found = self._find(seal_handle(self._hide, parts.nonce, parts.sealed), windows)
        entry = None if found is None else self.table.get(found[0])
        if found is None or entry is None:
            self._refuse("unknown")
            return None
        handle, window = found
        if entry.revoked or (entry.serial is not None and entry.serial in self._revoked_serials()):
            self._refuse("revoked")
            if self._on_device_refused is not None and self._mac_ok(handle, window, parts):
                self._report(entry, "credential revoked", now)
            return None
        if not self._mac_ok(handle, window, parts):
            self._refuse("mac")
            return None
        refused = self.ledger.admit(
            window, parts.nonce, entry.device, source, now=now, current=windows[0]
        )
        if refused is not None:
            self._refuse(refused)
            report = _REPORTED.get(refused)
            if report is not None:
                self._report(entry, report, now)
            return None
        return Admission(text, entry.device, handle, entry.name)
