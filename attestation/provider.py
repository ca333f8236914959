"""Exit side: evidence for the handshake, and attestation on a schedule.

``EvidenceProvider`` is the handshake's ``evidence_provider(nonce, node_id) -> bytes``. A
TPM answers one command at a time and slowly (tens to hundreds of milliseconds on real
chips), so quotes are serialised by a lock and clients are rate-limited by a token
bucket: past the burst, a handshake gets ``RateLimited`` rather than queueing behind the
TPM. ``ReattestationLoop`` attests at start and then every interval (hourly by default),
handing the evidence to a sink (the registry upkeep, the status page).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Protocol

from attestation import constants as c
from attestation.errors import AttestationError, EvidenceError, RateLimited
from attestation.evidence import Since

log = logging.getLogger(__name__)


class QuoteSource(Protocol):
    """What produces evidence: ``quote.Attester`` (a TPM) or ``fake.FakeAttester``."""

    def evidence(
        self, nonce: bytes, node_id: bytes, now: float, *, since: Since | None = None
    ) -> bytes: ...


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; time is passed in."""

    def __init__(self, burst: int, rate: float) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError("burst must be >= 1 and rate > 0")
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now if self._last is None else max(self._last, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class EvidenceProvider:
    """Thread-safe, rate-limited evidence for one node's own nodeId."""

    def __init__(
        self,
        source: QuoteSource,
        node_id: bytes,
        *,
        burst: int = c.RATE_BURST,
        rate: float = c.RATE_PER_SECOND,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(node_id) != c.NODE_ID_SIZE:
            raise AttestationError("nodeId must be 32 bytes")
        self.node_id = node_id
        self._source = source
        self._bucket = TokenBucket(burst, rate)
        self._bucket_lock = threading.Lock()
        self._tpm_lock = threading.Lock()
        self._clock = clock
        self._monotonic = monotonic

    def attest(self, nonce: bytes, since: Since | None = None) -> bytes:
        """Fresh evidence for ``nonce`` without the client rate limit (own schedule);
        ``since``: the IMA entries the verifier has (``evidence.Since``)."""
        if len(nonce) != c.NONCE_SIZE:
            raise EvidenceError("nonce must be 32 bytes")
        with self._tpm_lock:
            return self._source.evidence(nonce, self.node_id, self._clock(), since=since)

    def __call__(self, nonce: bytes, node_id: bytes, since: Since | None = None) -> bytes:
        """The handshake hook. Raises RateLimited when clients ask faster than allowed."""
        if node_id != self.node_id:
            raise AttestationError("asked to attest for a nodeId that is not ours")
        with self._bucket_lock:
            allowed = self._bucket.take(self._monotonic())
        if not allowed:
            raise RateLimited("too many attestation requests")
        return self.attest(nonce, since)


class ReattestationLoop:
    """Attest at start, then every ``interval_s``; retry sooner after a failure.

    ``nonce_source`` gives the nonce (random by default; the registry upkeep passes a
    recent block hash), ``sink`` receives (nonce, evidence).
    """

    def __init__(
        self,
        provider: EvidenceProvider,
        sink: Callable[[bytes, bytes], None],
        *,
        interval_s: float = c.DEFAULT_REATTEST_INTERVAL_S,
        retry_s: float = c.REATTEST_RETRY_S,
        nonce_source: Callable[[], bytes] = lambda: secrets.token_bytes(c.NONCE_SIZE),
    ) -> None:
        if interval_s <= 0 or retry_s <= 0:
            raise ValueError("intervals must be positive")
        self._provider = provider
        self._sink = sink
        self._interval = interval_s
        self._retry = retry_s
        self._nonce_source = nonce_source
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.successes = 0

    def run_once(self) -> bool:
        """One attestation; True if the sink got evidence. Never raises."""
        try:
            nonce = self._nonce_source()
            self._sink(nonce, self._provider.attest(nonce))
        except Exception as exc:  # a failed round must not kill the schedule
            self.failures += 1
            log.warning("scheduled attestation failed: %s", exc)
            return False
        self.successes += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._interval if self.run_once() else self._retry
            self._stop.wait(wait)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reattest", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
