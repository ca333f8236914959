"""The exit's duplicate-hello cache and per-device attested-hello quota (helloguard.py)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from l2bridge.errors import HelloRefused, MalformedMessage
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.protocol.handshake import ClientHandshake, ClientHello
from l2bridge.protocol.helloguard import REFUSED_DUPLICATE, REFUSED_QUOTA, HelloGuard

DEVICE = HybridSigningKey.generate()
TEMPLATE = ClientHello.decode(ClientHandshake(DEVICE).hello())


def hello(attested: bool = False) -> bytes:
    """A fresh hello (new random), asking for evidence or not."""
    nonce = os.urandom(32) if attested else None
    return dataclasses.replace(TEMPLATE, random=os.urandom(32), nonce=nonce).encode()


def test_a_hello_seen_before_is_refused_within_the_window() -> None:
    guard = HelloGuard(window_s=600)
    first = hello()
    assert guard.check(first, quota_key="a", now=0.0).random == ClientHello.decode(first).random
    for now, key in ((1.0, "a"), (599.0, "another source")):
        with pytest.raises(HelloRefused) as exc:
            guard.check(first, quota_key=key, now=now)
        assert exc.value.detail == REFUSED_DUPLICATE
    assert guard.refused[REFUSED_DUPLICATE] == 2
    # The same random with other shares is the same hello as far as replays go.
    altered = dataclasses.replace(ClientHello.decode(first), mtu=1400).encode()
    with pytest.raises(HelloRefused):
        guard.check(altered, quota_key="a", now=2.0)
    guard.check(hello(), quota_key="a", now=3.0)  # a new hello passes
    # Past the window a random is forgotten (the token's window refuses such a replay).
    guard.check(first, quota_key="a", now=700.0)


def test_a_full_cache_forgets_the_oldest_and_never_refuses_everyone() -> None:
    guard = HelloGuard(capacity=3)
    hellos = [hello() for _ in range(4)]
    for h in hellos:
        guard.check(h, quota_key="a", now=1.0)
    assert guard.forgotten == 1
    guard.check(hellos[0], quota_key="a", now=2.0)  # the oldest was forgotten
    with pytest.raises(HelloRefused):
        guard.check(hellos[3], quota_key="a", now=2.0)  # the newest is still known
    assert len(guard._seen) == 3


def test_attested_hellos_past_the_quota_are_refused_per_device() -> None:
    guard = HelloGuard(quotes_per_minute=3)
    for _ in range(3):
        guard.check(hello(attested=True), quota_key=b"device-1", now=0.0)
    with pytest.raises(HelloRefused) as exc:
        guard.check(hello(attested=True), quota_key=b"device-1", now=0.0)
    assert exc.value.detail == REFUSED_QUOTA
    # Another device is not refused because of it; plain hellos are not counted.
    guard.check(hello(attested=True), quota_key=b"device-2", now=0.0)
    for _ in range(10):
        guard.check(hello(), quota_key=b"device-1", now=0.0)
    # One quote comes back every 20 s (3 a minute).
    with pytest.raises(HelloRefused):
        guard.check(hello(attested=True), quota_key=b"device-1", now=19.0)
    guard.check(hello(attested=True), quota_key=b"device-1", now=40.0)
    assert guard.refused[REFUSED_QUOTA] == 2


def test_a_refused_hello_is_remembered() -> None:
    """Retrying the same hello after a quota refusal is a duplicate, not a new chance."""
    guard = HelloGuard(quotes_per_minute=1)
    guard.check(hello(attested=True), quota_key="k", now=0.0)
    over = hello(attested=True)
    with pytest.raises(HelloRefused):
        guard.check(over, quota_key="k", now=0.0)
    with pytest.raises(HelloRefused) as exc:
        guard.check(over, quota_key="k", now=120.0)
    assert exc.value.detail == REFUSED_DUPLICATE


def test_the_quota_table_is_bounded() -> None:
    guard = HelloGuard(quotes_per_minute=1, quota_keys=2)
    for key in ("a", "b", "c"):
        guard.check(hello(attested=True), quota_key=key, now=0.0)
    assert list(guard._buckets) == ["b", "c"]
    with pytest.raises(HelloRefused):
        guard.check(hello(attested=True), quota_key="c", now=0.0)


def test_garbage_is_refused_as_malformed_and_not_remembered() -> None:
    guard = HelloGuard()
    for junk in (b"", b"\x51\x02", os.urandom(3000)):
        with pytest.raises(MalformedMessage):
            guard.check(junk, quota_key="k", now=0.0)
    assert not guard._seen


def test_arguments_are_checked() -> None:
    for kwargs in ({"quotes_per_minute": 0}, {"window_s": 0}, {"capacity": 0},
                   {"quota_keys": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            HelloGuard(**kwargs)  # type: ignore[arg-type]
