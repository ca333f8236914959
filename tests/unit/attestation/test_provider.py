import threading

import pytest

from attestation import evidence as ev
from attestation.errors import AttestationError, EvidenceError, RateLimited
from attestation.provider import EvidenceProvider, ReattestationLoop, TokenBucket

from .conftest import NODE_ID, NOW


def test_token_bucket():
    bucket = TokenBucket(2, 1.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.5)
    assert bucket.take(1.5)
    assert not bucket.take(1.5)
    assert not bucket.take(1.0)  # a clock going back gives nothing back
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_provider_rate_limits_clients_but_not_its_schedule(attester, nonce):
    mono = Clock()
    provider = EvidenceProvider(
        attester, NODE_ID, burst=2, rate=1.0, clock=lambda: NOW, monotonic=mono
    )
    first = provider(nonce, NODE_ID)
    assert ev.decode(first).nonce == nonce
    provider(nonce, NODE_ID)
    with pytest.raises(RateLimited):
        provider(nonce, NODE_ID)
    provider.attest(nonce)  # own schedule is not rate-limited
    mono.t = 1.0
    provider(nonce, NODE_ID)
    assert attester.calls == 4


def test_provider_refuses_other_node_ids_and_bad_nonces(attester, nonce):
    provider = EvidenceProvider(attester, NODE_ID)
    with pytest.raises(AttestationError, match="not ours"):
        provider(nonce, bytes(32))
    with pytest.raises(EvidenceError):
        provider(b"short", NODE_ID)
    with pytest.raises(AttestationError):
        EvidenceProvider(attester, b"short")


def test_provider_serialises_the_tpm(nonce):
    inside = 0
    most = 0
    lock = threading.Lock()

    class Slow:
        def evidence(self, n, node_id, now, since=None):
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.002)
            with lock:
                inside -= 1
            return b"e"

    provider = EvidenceProvider(Slow(), NODE_ID, burst=100, rate=1.0)
    threads = [threading.Thread(target=provider, args=(nonce, NODE_ID)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1


def test_reattestation_loop_survives_failures(attester):
    provider = EvidenceProvider(attester, NODE_ID)
    got = []
    nonces = iter([b"\x01" * 32, b"short", b"\x02" * 32])
    loop = ReattestationLoop(
        provider, lambda n, e: got.append(n), nonce_source=lambda: next(nonces)
    )
    assert loop.run_once()
    assert not loop.run_once()
    assert loop.run_once()
    assert got == [b"\x01" * 32, b"\x02" * 32]
    assert (loop.successes, loop.failures) == (2, 1)


def test_reattestation_loop_attests_at_start_and_stops(attester):
    provider = EvidenceProvider(attester, NODE_ID)
    done = threading.Event()
    loop = ReattestationLoop(provider, lambda n, e: done.set(), interval_s=3600)
    loop.start()
    assert done.wait(10)
    loop.stop()
    assert loop.successes == 1
    with pytest.raises(ValueError):
        ReattestationLoop(provider, print, interval_s=0)
