from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bridge.codec import u32
from l2bridge.constants import (
    MAX_FRAME_SIZE,
    MAX_RECORD_PLAINTEXT,
    RECORD_REKEY_INIT,
    REKEY_TIMEOUT_SECONDS,
    Mode,
)
from l2bridge.crypto.pq import default_backend
from l2bridge.errors import KeyExpired, NotAuthorized, ProtocolViolation, StateError
from l2bridge.identity.keys import AdminKey, HybridSigningKey
from l2bridge.node.link import Link
from l2bridge.protocol import kex
from l2bridge.protocol.pair import SessionPair
from l2bridge.protocol.session import MAX_FAILED_IN_A_ROW, Closed, RekeyCompleted, SessionConfig

T0 = 1_000_000.0


@pytest.fixture(scope="module")
def keys():
    return (
        HybridSigningKey.generate(),
        HybridSigningKey.generate(),
        AdminKey(HybridSigningKey.generate()),
    )


def test_rekey_in_the_middle_of_a_stream_loses_no_record(keys) -> None:
    """Records sealed in the old epoch are still in flight when the rekey happens."""
    p = SessionPair.connect(T0, keys=keys)
    up: list = []  # client -> exit, in transport order
    down: list = []  # exit -> client
    sent_up, sent_down, got_up, got_down = [], [], [], []

    def pump_up(n: int) -> None:
        for _ in range(n):
            f = os.urandom(64)
            sent_up.append(f)
            up.append(p.client.seal([f], T0))

    def pump_down(n: int) -> None:
        for _ in range(n):
            f = os.urandom(64)
            sent_down.append(f)
            down.append(p.exit.seal([f], T0))

    def deliver_up() -> None:
        while up:
            got = p.exit.receive(up.pop(0), T0)
            got_up.extend(bytes(f) for f in got.frames)
            down.extend(got.replies)

    def deliver_down() -> None:
        while down:
            got = p.client.receive(down.pop(0), T0)
            got_down.extend(bytes(f) for f in got.frames)

    pump_up(5)
    pump_down(5)
    up.append(p.client.start_rekey(7, T0))
    pump_up(5)  # still the old epoch: the client switches only on the reply
    pump_down(3)  # the exit has not seen the init yet
    deliver_up()  # exit: installs next, replies, switches send
    pump_down(4)  # new epoch, queued after the reply
    deliver_down()  # client: old-epoch records, reply, new-epoch records
    pump_up(6)  # new epoch
    deliver_up()
    assert got_up == sent_up and got_down == sent_down
    assert p.client.clock_epoch == p.exit.clock_epoch == 7
    assert p.client.epoch == p.exit.epoch == 1  # the first new key generation
    assert p.exit.stats.drops == {} and p.client.stats.drops == {}
    assert p.client.stats.rekeys == p.exit.stats.rekeys == 1


def test_many_rekeys_chain_and_wipe_old_keys(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    first_send = p.client._keys.send
    first_chain = p.client._keys.chain
    for i, epoch in enumerate(range(10, 15)):
        now = T0 + i * 10
        p.rekey(epoch, now)
        assert p.client_to_exit([b"up%d" % epoch], now) == [b"up%d" % epoch]
        assert p.exit_to_client([b"dn%d" % epoch], now) == [b"dn%d" % epoch]
    assert first_send.wiped and first_send._key == bytearray(32)
    assert first_chain == bytearray(48)
    done = [e for n, e in p.events if n == "client" and isinstance(e, RekeyCompleted)]
    assert [e.epoch for e in done] == [10, 11, 12, 13, 14]
    assert [e.generation for e in done] == [1, 2, 3, 4, 5]


def test_previous_epoch_accepted_for_grace_then_wiped(keys) -> None:
    # Over an unordered path (strict_order off) an old-epoch record may arrive after the switch.
    p = SessionPair.connect(
        T0, keys=keys, config=SessionConfig(grace_seconds=2.0, strict_order=False)
    )
    late = p.exit.seal([b"sealed before the rekey, sent after"], T0)
    late2 = p.exit.seal([b"too late"], T0)
    p.rekey(1, T0)
    old = p.client._keys.previous
    assert old is not None and not old.wiped
    assert [bytes(f) for f in p.client.receive(late, T0 + 1).frames] == [
        b"sealed before the rekey, sent after"
    ]
    assert p.client.receive(late2, T0 + 3).frames == []
    assert p.client.stats.drops["unknown_epoch"] == 1
    assert old.wiped and old._key == bytearray(32)


def test_reject_after_time_and_records(keys) -> None:
    cfg = SessionConfig(reject_after_seconds=100, rekey_after_seconds=50, reject_after_records=5,
                        rekey_after_records=3)  # fmt: skip
    p = SessionPair.connect(T0, keys=keys, config=cfg)
    assert not p.client.needs_rekey(T0)
    assert p.client.needs_rekey(T0 + 60)
    with pytest.raises(KeyExpired):
        p.client.seal([b"x"], T0 + 100)
    assert p.client.stats.key_expired == 1
    p.rekey(1, T0 + 99)  # a rekey restores sending
    p.client.seal([b"x"], T0 + 150)
    for _ in range(3):
        p.exit.seal([b"x"], T0 + 150)
    assert p.exit.needs_rekey(T0 + 150)
    p.exit.seal([b"x"], T0 + 150)
    p.exit.seal([b"x"], T0 + 150)
    with pytest.raises(KeyExpired):
        p.exit.seal([b"x"], T0 + 150)  # records 0..4 used: the sixth is refused


def test_receiver_drops_records_of_an_expired_key(keys) -> None:
    p = SessionPair.connect(
        T0, keys=keys, config=SessionConfig(reject_after_seconds=10, grace_seconds=1)
    )
    record = p.client.seal([b"x"], T0 + 9)
    assert p.exit.receive(record, T0 + 11.5).frames == []
    assert p.exit.stats.drops["expired"] == 1


def test_exit_refuses_epochs_that_go_backwards_or_jump(keys) -> None:
    cfg = SessionConfig(rekey_interval=60.0)
    now = 6000.0  # clock epoch 100
    p = SessionPair.connect(now, keys=keys, config=cfg)
    p.rekey(100, now)
    init = p.client.start_rekey(100 + 50, now)
    with pytest.raises(ProtocolViolation):
        p.exit.receive(init, now)
    assert p.exit.closed
    p2 = SessionPair.connect(now, keys=keys)
    p2.rekey(100, now)
    # A client whose clock runs backwards asks for an epoch before the last one.
    eph = kex.initiate(Mode.HYBRID, default_backend())
    body = u32(2) + u32(99) + u32(0) + eph.shares()
    init = p2.client._seal_control(RECORD_REKEY_INIT, body, now)
    with pytest.raises(ProtocolViolation):
        p2.exit.receive(init, now)
    # A generation that skips ahead (or repeats) is refused too.
    p3 = SessionPair.connect(now, keys=keys)
    p3.rekey(100, now)
    for generation in (1, 3):
        eph = kex.initiate(Mode.HYBRID, default_backend())
        body = u32(generation) + u32(100) + u32(0) + eph.shares()
        init = p3.client._seal_control(RECORD_REKEY_INIT, body, now)
        with pytest.raises(ProtocolViolation):
            p3.exit.receive(init, now)
        p3 = SessionPair.connect(now, keys=keys)
        p3.rekey(100, now)
    with pytest.raises(StateError):
        p3.client.start_rekey(99, now)  # the client itself refuses to go back


def test_each_end_keeps_its_rotation_interval_and_the_exit_counts_in_the_clients(keys) -> None:
    # The spec's ultra-secure client rotates every 10 s; the exit it uses, every minute.
    now = 60_000.0
    client = SessionConfig(rekey_interval=10.0)
    exit_cfg = SessionConfig(rekey_interval=60.0)
    p = SessionPair.connect(now, keys=keys, config=client, exit_config=exit_cfg)
    for step in range(3):
        t = now + 10 * step
        got = p.exit.receive(p.client.start_rekey(int(t // 10), t), t)
        p.client.receive(got.replies[0], t)
    assert p.exit.stats.rekeys == 3 and not p.exit.closed
    # far from the exit's clock in the client's own interval: refused
    with pytest.raises(ProtocolViolation) as far:
        p.exit.receive(p.client.start_rekey(int(now // 10) + 5, now + 20), now + 20)
    assert "far from clock epoch" in far.value.detail

    def init(interval_ms: int, epoch: int, pair: SessionPair) -> bytearray:
        eph = kex.initiate(Mode.HYBRID, default_backend())
        body = u32(pair.client.epoch + 1) + u32(epoch) + u32(interval_ms) + eph.shares()
        return pair.client._seal_control(RECORD_REKEY_INIT, body, now)

    # an interval outside key_rotation_interval's range, or one that changes: refused
    for bad in (999, 86_400_001):
        q = SessionPair.connect(now, keys=keys, config=client, exit_config=exit_cfg)
        with pytest.raises(ProtocolViolation) as out:
            q.exit.receive(init(bad, int(now // (bad / 1000)), q), now)
        assert "out of range" in out.value.detail
    q = SessionPair.connect(now, keys=keys, config=client, exit_config=exit_cfg)
    q.client.receive(q.exit.receive(q.client.start_rekey(int(now // 10), now), now).replies[0], now)
    with pytest.raises(ProtocolViolation) as changed:
        q.exit.receive(init(60_000, int(now // 60), q), now)
    assert "changed" in changed.value.detail


def test_volume_rekeys_share_a_clock_epoch_and_keep_the_tunnel_alive(keys) -> None:
    # Record limits far below the defaults: a busy tunnel must rekey between clock
    # boundaries, in the same clock epoch, and never hit reject-after.
    cfg = SessionConfig(rekey_interval=60.0, rekey_after_records=8, reject_after_records=16)
    now = 6000.0  # clock epoch 100
    p = SessionPair.connect(now, keys=keys, config=cfg)
    p.rekey(100, now)
    sent = got = 0
    for i in range(200):
        frame = b"frame %d" % i
        assert p.client_to_exit([frame], now) == [frame]
        assert p.exit_to_client([frame], now) == [frame]  # the exit's send key ages too
        sent += 2
        got += 2
        if p.client.needs_rekey(now):
            p.rekey(100, now)
    assert got == sent == 400
    assert p.client.clock_epoch == p.exit.clock_epoch == 100
    assert p.client.epoch == p.exit.epoch > 20
    assert p.client.stats.key_expired == p.exit.stats.key_expired == 0
    assert p.exit.stats.drops == {} and p.client.stats.drops == {}


def test_needs_rekey_counts_the_peers_send_key(keys) -> None:
    cfg = SessionConfig(rekey_after_records=4, reject_after_records=8)
    p = SessionPair.connect(T0, keys=keys, config=cfg)
    for _ in range(4):
        p.exit_to_client([b"down"], T0)
    # The client sent nothing, yet the exit's key (which only a client rekey replaces)
    # is due: the client must notice through its receive key.
    assert p.client.needs_rekey(T0)


def test_start_rekey_misuse(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    with pytest.raises(StateError):
        p.exit.start_rekey(3, T0)
    with pytest.raises(StateError):
        p.client.start_rekey(0, T0)
    p.client.start_rekey(3, T0)
    with pytest.raises(StateError):
        p.client.start_rekey(4, T0 + 1)
    # A rekey whose reply never came may be restarted after the timeout.
    init = p.client.start_rekey(4, T0 + REKEY_TIMEOUT_SECONDS + 1)
    got = p.exit.receive(init, T0 + 20)
    p.client.receive(got.replies[0], T0 + 20)
    assert p.client.clock_epoch == 4 and p.client.epoch == 1


def test_stale_rekey_reply_is_a_protocol_violation(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    got = p.exit.receive(p.client.start_rekey(3, T0), T0)
    p.client.receive(got.replies[0], T0)
    # A second REKEY_REPLY without an INIT pending (forged or buggy exit).
    reply = p.exit._seal_control(0x04, got.replies[0][:0] + bytes(4 + 32 + 1568), T0)
    with pytest.raises(ProtocolViolation):
        p.client.receive(reply, T0)


@pytest.mark.parametrize("mode", list(Mode))
def test_rekey_in_every_mode(keys, mode) -> None:
    p = SessionPair.connect(T0, keys=keys, mode=mode)
    p.rekey(2, T0)
    assert p.client_to_exit([b"m"], T0) == [b"m"]


def test_close_notice(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    notice = p.client.close_notice(0)
    assert p.client.closed
    with pytest.raises(StateError):
        p.client.seal([b"x"], T0)
    got = p.exit.receive(notice, T0)
    assert got.events == (Closed(0, by_peer=True),)
    assert p.exit.closed and p.exit._keys.send.wiped
    assert p.exit.receive(notice, T0).frames == []
    assert p.exit.stats.drops["closed"] == 1


def test_replayed_reordered_tampered_are_counted(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    r1, r2 = p.client.seal([b"1"], T0), p.client.seal([b"2"], T0)
    r3 = p.client.seal([b"3"], T0)
    assert p.exit.receive(r2, T0).frames
    assert not p.exit.receive(r2, T0).frames
    assert not p.exit.receive(r1, T0).frames
    bad = bytearray(r3)
    bad[-1] ^= 1
    assert not p.exit.receive(bad, T0).frames
    assert not p.exit.receive(r3[:10], T0).frames
    assert p.exit.receive(r3, T0).frames
    assert p.exit.stats.drops == {"replayed": 1, "reordered": 1, "auth_failed": 1, "truncated": 1}
    assert p.exit.stats.as_dict()["drop_replayed"] == 1


def test_a_run_of_records_that_fail_authentication_ends_the_session(keys) -> None:
    """A lone bad record is dropped; one short of the limit in a row, then an authentic
    record, starts the count again; the limit in a row ends the session (keys wiped)."""
    p = SessionPair.connect(T0, keys=keys)

    def garbage() -> bytearray:
        bad = bytearray(p.client.seal([b"payload"], T0))
        bad[-1] ^= 1
        return bad

    for _ in range(2):
        for _ in range(MAX_FAILED_IN_A_ROW - 1):
            assert p.exit.receive(garbage(), T0).frames == []
        assert p.exit.receive(p.client.seal([b"fine"], T0), T0).frames == [b"fine"]
    assert p.exit.stats.drops["auth_failed"] == 2 * (MAX_FAILED_IN_A_ROW - 1)
    for _ in range(MAX_FAILED_IN_A_ROW - 1):
        p.exit.receive(garbage(), T0)
    with pytest.raises(ProtocolViolation) as info:
        p.exit.receive(garbage(), T0)
    assert info.value.detail == f"{MAX_FAILED_IN_A_ROW} records in a row failed authentication"
    assert p.exit.closed and p.exit._keys.send.wiped
    # Other drops (replays, truncation) do not count toward it: the stream is not garbage.
    q = SessionPair.connect(T0, keys=keys)
    record = q.client.seal([b"once"], T0)
    assert q.exit.receive(record, T0).frames
    for _ in range(2 * MAX_FAILED_IN_A_ROW):
        assert q.exit.receive(record, T0).frames == []
        assert q.exit.receive(record[:10], T0).frames == []
    assert not q.exit.closed


def test_padding_hides_frame_sizes(keys) -> None:
    p = SessionPair.connect(T0, keys=keys, config=SessionConfig(pad_to=256))
    sizes = {len(p.client.seal([os.urandom(n)], T0)) for n in (1, 50, 200, 240)}
    assert len(sizes) == 1
    assert p.client_to_exit([b"a", b"bc"], T0) == [b"a", b"bc"]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(1, MAX_FRAME_SIZE), max_size=12))
def test_seal_batches_splits_long_batches(keys, sizes) -> None:
    p = SessionPair.connect(T0, keys=keys, mode=Mode.CLASSICAL)
    frames = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    records = p.client.seal_batches(frames, T0)
    assert all(len(r) <= MAX_RECORD_PLAINTEXT + 29 for r in records)
    out = [bytes(f) for r in records for f in p.exit.receive(r, T0).frames]
    assert out == frames


def test_exit_cannot_send_before_the_client_finished(keys) -> None:
    from l2bridge.identity.keys import Authorizer
    from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake

    client, exit_key, admin = keys
    cert = admin.issue(client.public, "d", "o", int(T0) - 5, int(T0) + 60)
    hs = ClientHandshake(client, certificate=cert)
    exit_session, _ = ServerHandshake(exit_key, Authorizer([admin.public])).receive(hs.hello(), T0)
    with pytest.raises(StateError):
        exit_session.seal([b"x"], T0)


def test_previous_key_is_wiped_by_ordinary_traffic_after_grace(keys) -> None:
    p = SessionPair.connect(T0, keys=keys, config=SessionConfig(grace_seconds=2.0))
    p.rekey(1, T0)
    old = p.client._keys.previous
    assert old is not None and not old.wiped
    assert p.exit_to_client([b"within grace"], T0 + 1) == [b"within grace"]
    assert not old.wiped
    assert p.exit_to_client([b"after grace"], T0 + 3) == [b"after grace"]
    assert old.wiped and p.client._keys.previous is None


def test_rekey_asks_the_authorizer_again(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    p.rekey(1, T0)  # still admitted
    cert = p.exit._admitted.certificate
    p.authorizer.update_revocations(p.admin.revoke(None, cert.serial, "lost laptop", int(T0)))
    init = p.client.start_rekey(2, T0 + 1)
    with pytest.raises(NotAuthorized):
        p.exit.receive(init, T0 + 1)
    assert p.exit.closed


def test_session_ends_when_the_device_certificate_expires(keys) -> None:
    long_keys = SessionConfig(reject_after_seconds=3 * 86400.0, rekey_after_seconds=86400.0)
    p = SessionPair.connect(T0, keys=keys, config=long_keys)
    expires = p.exit.authorization.expires
    assert expires is not None
    assert p.client_to_exit([b"before"], expires - 1) == [b"before"]
    with pytest.raises(NotAuthorized):
        p.client_to_exit([b"after"], expires)
    assert p.exit.closed


def test_reauthorize_asks_again_without_a_rekey(keys) -> None:
    p = SessionPair.connect(T0, keys=keys)
    assert p.exit.reauthorize(T0 + 1).name == p.exit.authorization.name
    cert = p.exit._admitted.certificate
    p.authorizer.update_revocations(p.admin.revoke(None, cert.serial, "lost laptop", int(T0)))
    with pytest.raises(NotAuthorized):
        p.exit.reauthorize(T0 + 2)
    with pytest.raises(StateError):
        p.client.reauthorize(T0 + 2)  # only the exit admitted anyone


def test_a_link_counts_only_authentic_records_as_heard_and_ends_on_a_run_of_garbage() -> None:
    """Liveness: garbage does not keep a link alive (only records that open count as
    heard), and a run of ``MAX_FAILED_IN_A_ROW`` of it ends the link as a protocol error."""

    async def body() -> None:
        p = SessionPair.connect(T0)
        link = Link(object(), p.client, is_client=True, clock=lambda: T0)  # type: ignore[arg-type]
        link._last_heard = time.monotonic() - 100.0
        bad = bytearray(p.exit.seal_cover(0, T0))
        bad[-1] ^= 1
        link._on_message(bad)
        assert link.silent_for >= 100.0 and link.close_reason is None
        link._on_message(p.exit.seal_cover(0, T0))
        assert link.silent_for < 100.0
        for _ in range(MAX_FAILED_IN_A_ROW):
            bad = bytearray(p.exit.seal_cover(0, T0))
            bad[-1] ^= 1
            link._on_message(bad)
        assert link.close_reason == "protocol error" and p.client.closed

    asyncio.run(body())
