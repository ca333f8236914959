"""Every l2bridge parser, fed random and mutated input, raises only its documented exceptions."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bridge import codec
from l2bridge.constants import RECORD_CLOSE, RECORD_FINISH, RECORD_REKEY_INIT, RECORD_REKEY_REPLY
from l2bridge.errors import MalformedMessage, PeerError, RecordRejected, UnsupportedParameters
from l2bridge.identity.keys import (
    AdminKey,
    AllowList,
    Authorizer,
    DeviceCertificate,
    HybridPublicKey,
    HybridSigningKey,
    RevocationList,
)
from l2bridge.protocol.handshake import (
    ClientHandshake,
    ClientHello,
    EvidenceSince,
    ServerHandshake,
    ServerHello,
)
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.protocol.pair import SessionPair
from l2bridge.protocol.records import split_frames
from l2bridge.protocol.session import ClientFinish

NOW = 1_000_000.0
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

CLIENT, EXIT = HybridSigningKey.generate(), HybridSigningKey.generate()
ADMIN = AdminKey(HybridSigningKey.generate())
CERT = ADMIN.issue(CLIENT.public, "fuzz", "org", int(NOW) - 10, int(NOW) + 3600)
CRL = ADMIN.revoke(None, bytes(16), "reason", int(NOW))
HELLO = ClientHandshake(
    CLIENT, certificate=CERT, attestation_nonce=bytes(32), evidence_checker=lambda *a: None,
    pinned_node_id=EXIT.node_id, evidence_since=EvidenceSince(7, 1234),
).hello()  # fmt: skip
SERVER = ServerHandshake(
    EXIT, Authorizer([ADMIN.public]), evidence_provider=lambda n, i: b"ev",
    evidence_since_provider=lambda n, i, since: b"ev since",
)  # fmt: skip
_, REPLY = SERVER.receive(HELLO, NOW)


def mutated(valid: bytes):
    """Bit flips, truncations, extensions and splices of a valid message."""
    flip = st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)).map(
        lambda p: valid[: p[0]] + bytes([valid[p[0]] ^ p[1]]) + valid[p[0] + 1 :]
    )
    cut = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    grow = st.binary(min_size=1, max_size=64).map(lambda extra: valid + extra)
    splice = st.tuples(st.integers(0, len(valid)), st.binary(max_size=16)).map(
        lambda p: valid[: p[0]] + p[1] + valid[p[0] + len(p[1]) :]
    )
    return st.one_of(flip, cut, grow, splice, st.binary(max_size=256))


@FAST
@given(mutated(HELLO))
def test_client_hello_decode(data: bytes) -> None:
    try:
        hello = ClientHello.decode(data)
    except (MalformedMessage, UnsupportedParameters):
        return
    assert ClientHello.decode(hello.encode()) == hello


@FAST
@given(mutated(REPLY))
def test_server_hello_decode(data: bytes) -> None:
    try:
        parsed = ServerHello.decode(data)
    except (MalformedMessage, UnsupportedParameters):
        return
    assert parsed.encode() == data  # canonical: what parses re-encodes to the same bytes


@SLOW
@given(mutated(HELLO))
def test_server_handshake_on_bad_hellos(data: bytes) -> None:
    try:
        session, _ = SERVER.receive(data, NOW)
    except PeerError:
        return
    assert not session.established  # a mutated hello may pass, but no frame before ClientFinish


@SLOW
@given(mutated(REPLY))
def test_client_handshake_on_bad_replies(data: bytes) -> None:
    hs = ClientHandshake(CLIENT, certificate=CERT)
    with pytest.raises(PeerError):
        hs.receive(data, NOW)  # never a valid reply for this fresh hello


def _finish_body() -> bytes:
    hs = ClientHandshake(CLIENT, certificate=CERT)
    _, reply = SERVER.receive(hs.hello(), NOW)
    session, _record = hs.receive(reply, NOW)
    return ClientFinish.signed(CLIENT, CERT, bytes(48), session.mode).encode()


FINISH = _finish_body()


@FAST
@given(mutated(FINISH))
def test_client_finish_decode(data: bytes) -> None:
    try:
        parsed = ClientFinish.decode(data)
    except MalformedMessage:
        return
    assert parsed.encode() == data  # canonical: what parses re-encodes to the same bytes


@SLOW
@given(mutated(FINISH))
def test_exit_session_on_bad_finishes(data: bytes) -> None:
    """Any finish body under the right keys but not made for this handshake is refused
    with a peer error and closes the session; none admits the device."""
    hs = ClientHandshake(CLIENT, certificate=CERT)
    exit_session, reply = SERVER.receive(hs.hello(), NOW)
    client_session, _finish = hs.receive(reply, NOW)
    send = client_session._keys.send
    send.next_counter = 0
    with pytest.raises(PeerError):
        exit_session.receive(send.seal_body(RECORD_FINISH, data), NOW)
    assert exit_session.closed and not exit_session.established


@FAST
@given(mutated(HELLO))
def test_hello_guard_on_bad_hellos(data: bytes) -> None:
    guard = HelloGuard()
    try:
        guard.check(data, quota_key="k", now=NOW)
    except PeerError:
        return
    with pytest.raises(PeerError):
        guard.check(data, quota_key="k", now=NOW)  # what passed once is a duplicate now


@FAST
@given(mutated(CERT.encode()))
def test_certificate_decode(data: bytes) -> None:
    try:
        parsed = DeviceCertificate.decode(data)
    except MalformedMessage:
        return
    assert parsed.encode() == data  # canonical: what parses re-encodes to the same bytes


@FAST
@given(mutated(CRL.encode()))
def test_revocation_list_decode(data: bytes) -> None:
    try:
        parsed = RevocationList.decode(data)
    except MalformedMessage:
        return
    assert parsed.encode() == data  # canonical: what parses re-encodes to the same bytes


@FAST
@given(mutated(CLIENT.public.encode()))
def test_public_key_decode(data: bytes) -> None:
    try:
        parsed = HybridPublicKey.decode(data)
    except MalformedMessage:
        return
    assert parsed.encode() == data  # canonical: what parses re-encodes to the same bytes


@FAST
@given(st.one_of(st.text(max_size=300), mutated(codec.armor("PUBLIC KEY", b"x" * 50).encode()).map(
    lambda b: b.decode("latin-1"))))  # fmt: skip
def test_dearmor_and_allow_list(text: str) -> None:
    try:
        codec.dearmor("PUBLIC KEY", text)
    except MalformedMessage:
        pass
    else:
        assert text.strip().startswith("-----BEGIN SHADOWMESH PUBLIC KEY-----")
    try:
        allow = AllowList.parse(text)
    except ValueError:
        return
    assert AllowList.parse(allow.format()) == allow


@FAST
@given(st.binary(max_size=200))
def test_split_frames(data: bytes) -> None:
    try:
        frames = split_frames(data)
    except RecordRejected:
        return
    assert sum(len(f) + 4 for f in frames) <= len(data)


PAIR = SessionPair.connect(NOW, keys=(CLIENT, EXIT, ADMIN))
RECORD = bytes(PAIR.client.seal([b"a frame", b"another"], NOW))


@FAST
@given(mutated(RECORD))
def test_session_receive_never_raises_on_garbage(data: bytes) -> None:
    got = PAIR.exit.receive(data, NOW)
    assert got.frames == [] or data == RECORD
    assert not PAIR.exit.closed


@SLOW
@given(
    rtype=st.sampled_from([RECORD_FINISH, RECORD_REKEY_INIT, RECORD_REKEY_REPLY, RECORD_CLOSE]),
    body=st.binary(max_size=2000),
    to_exit=st.booleans(),
)
def test_authentic_control_records_with_garbage_bodies(
    rtype: int, body: bytes, to_exit: bool
) -> None:
    pair = SessionPair.connect(NOW, keys=(CLIENT, EXIT, ADMIN))
    sender, receiver = (pair.client, pair.exit) if to_exit else (pair.exit, pair.client)
    record = sender._seal_control(rtype, body, NOW)
    try:
        got = receiver.receive(record, NOW)
    except PeerError:
        assert receiver.closed  # fatal errors close the session
        return
    assert rtype == RECORD_CLOSE and receiver.closed and got.events
