"""The exit's first look at a ClientHello, before it does any work for it (sans-I/O).

Answering a hello costs the exit an ML-KEM encapsulation and a hybrid signature, and, when
the hello asks for attestation, a TPM quote (tens to hundreds of milliseconds on a chip,
and a global budget of a few per second). The gate already admits only connections with
a fresh, valid token; this guard bounds what a token holder can make the exit do:

* **Duplicate hellos**: a hello whose ``random`` was seen within ``window_s`` is refused
  (a captured hello replayed under another token). At most ``capacity`` randoms are kept;
  past that the oldest is forgotten first (counted in ``forgotten``), so memory is bounded
  and the guard never refuses everyone because it is full.
* **Attested hellos per device**: a token bucket per ``quota_key`` (the device the token
  named, else the source address): ``quotes_per_minute`` refill, a burst of the same
  number (at least 1). Past it the hello is refused *before* the TPM is asked, so one
  device cannot spend the exit's global quote budget (``attestation.provider``) that
  every other device shares. At most ``quota_keys`` buckets are kept (least recently
  used forgotten first; a forgotten key starts again with a full bucket).

``check`` raises ``MalformedMessage`` / ``UnsupportedParameters`` (the hello does not
parse) or ``HelloRefused`` (``detail`` "duplicate" or "quote quota"), and returns the
parsed hello otherwise. Refusals are counted in ``refused``. Not thread-safe: the driver
calls it from its event loop, before handing the hello to a worker.
"""

from __future__ import annotations

from collections import Counter

from l2bridge.constants import (
    HELLO_REPLAY_CAPACITY,
    HELLO_REPLAY_WINDOW_S,
    QUOTE_QUOTA_KEYS,
    QUOTES_PER_DEVICE_PER_MINUTE,
)
from l2bridge.errors import HelloRefused
from l2bridge.protocol.handshake import ClientHello

QuotaKey = bytes | str

REFUSED_DUPLICATE = "duplicate"
REFUSED_QUOTA = "quote quota"


class HelloGuard:
    """Duplicate-hello cache and per-device attested-hello quota; see the module docstring."""

    def __init__(
        self,
        *,
        quotes_per_minute: float = QUOTES_PER_DEVICE_PER_MINUTE,
        window_s: float = HELLO_REPLAY_WINDOW_S,
        capacity: int = HELLO_REPLAY_CAPACITY,
        quota_keys: int = QUOTE_QUOTA_KEYS,
    ) -> None:
        if quotes_per_minute <= 0 or window_s <= 0 or capacity < 1 or quota_keys < 1:
            raise ValueError("quota, window, capacity and key count must be positive")
        self._rate = quotes_per_minute / 60.0
        self._burst = max(1.0, float(int(quotes_per_minute)))
        self._window = window_s
        self._capacity = capacity
        self._quota_keys = quota_keys
        # random -> time first seen, in the order seen (so the front is the oldest).
        self._seen: dict[bytes, float] = {}
        # key -> (tokens, time of the last refill), least recently used first.
        self._buckets: dict[QuotaKey, tuple[float, float]] = {}
        self.refused: Counter[str] = Counter()
        self.forgotten = 0  # randoms dropped from a full cache before their window ended

    def check(self, data: bytes, *, quota_key: QuotaKey, now: float) -> ClientHello:
        """Parse ``data`` and refuse it when it is a duplicate or over its quota."""
        hello = ClientHello.decode(data)
        refused = self.judge(hello.random, hello.nonce is not None, quota_key, now)
        if refused is not None:
            self.refused[refused] += 1
            raise HelloRefused(refused)
        return hello

    def judge(self, random: bytes, attested: bool, quota_key: QuotaKey, now: float) -> str | None:
        """The decision on a parsed hello (its ``random``, whether it asks for evidence):
        ``REFUSED_DUPLICATE``, ``REFUSED_QUOTA`` or None (remembered and charged). Apart
        from ``check`` so that one guard can judge for several processes
        (``exitnode.workers``)."""
        self._expire(now)
        if random in self._seen:
            return REFUSED_DUPLICATE
        if len(self._seen) >= self._capacity:
            del self._seen[next(iter(self._seen))]
            self.forgotten += 1
        self._seen[random] = now
        if attested and not self._take(quota_key, now):
            return REFUSED_QUOTA
        return None

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if now - seen[oldest] < self._window:
                break
            del seen[oldest]

    def _take(self, key: QuotaKey, now: float) -> bool:
        buckets = self._buckets
        tokens, last = buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(buckets) >= self._quota_keys:
            del buckets[next(iter(buckets))]
        buckets[key] = (tokens, now)  # now the most recently used
        return allowed
