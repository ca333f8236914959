from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bridge.constants import (
    MAX_EVIDENCE_SIZE,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MAX_SERVER_HELLO_SIZE,
    Cipher,
    Mode,
)
from l2bridge.errors import (
    AuthenticationFailed,
    CertificateRevoked,
    MalformedMessage,
    NotAuthorized,
    PeerError,
    UnsupportedParameters,
)
from l2bridge.identity.keys import (
    AdminKey,
    AllowList,
    Authorizer,
    HybridSignature,
    HybridSigningKey,
)
from l2bridge.protocol.handshake import (
    ClientHandshake,
    ClientHello,
    EvidenceSince,
    ServerHandshake,
    ServerHello,
)
from l2bridge.protocol.session import FINISH_LABEL, ClientFinish, PeerAuthenticated

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def keys():
    client, exit_key, admin = (HybridSigningKey.generate() for _ in range(3))
    admin = AdminKey(admin)
    cert = admin.issue(client.public, "dev", "org", int(NOW) - 60, int(NOW) + 3600)
    return client, exit_key, admin, cert


def run(keys, mode=Mode.HYBRID, **client_kw):
    client, exit_key, admin, cert = keys
    hs = ClientHandshake(client, certificate=cert, mode=mode, **client_kw)
    srv = ServerHandshake(exit_key, Authorizer([admin.public]), modes=list(Mode))
    exit_session, reply = srv.receive(hs.hello(), NOW)
    return hs, exit_session, reply


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("cipher", list(Cipher))
def test_round_trip_every_mode_and_cipher(keys, mode, cipher) -> None:
    hs, exit_session, reply = run(keys, mode, ciphers=[cipher], pinned_node_id=keys[1].node_id)
    client_session, finish = hs.receive(reply, NOW)
    assert not exit_session.established
    got = exit_session.receive(finish, NOW)
    assert isinstance(got.events[0], PeerAuthenticated)
    assert exit_session.established and client_session.established
    assert (client_session.mode, client_session.cipher) == (mode, cipher)
    assert client_session.peer == keys[1].public and exit_session.peer == keys[0].public
    frames = [os.urandom(100), os.urandom(1500)]
    assert [
        bytes(f) for f in exit_session.receive(client_session.seal(frames, NOW), NOW).frames
    ] == frames
    assert [
        bytes(f) for f in client_session.receive(exit_session.seal(frames, NOW), NOW).frames
    ] == frames


def test_hello_sizes_per_mode(keys) -> None:
    sizes = {m: len(ClientHandshake(keys[0], mode=m).hello()) for m in Mode}
    assert sizes[Mode.HYBRID] - sizes[Mode.PQC_ONLY] == 32
    assert sizes[Mode.HYBRID] - sizes[Mode.CLASSICAL] == 1568


def test_codecs_round_trip(keys) -> None:
    hs, _, reply = run(keys, attestation_nonce=os.urandom(32), evidence_checker=lambda *a: None,
                       pinned_node_id=keys[1].node_id)  # fmt: skip
    assert ClientHello.decode(hs.hello()).encode() == hs.hello()
    assert ServerHello.decode(reply).encode() == reply


def _resign(reply: bytes, sig: HybridSignature) -> bytes:
    sh = ServerHello.decode(reply)
    return dataclasses.replace(sh, signature=sig).encode()


def test_forged_ed25519_half_alone_fails(keys) -> None:
    hs, _, reply = run(keys)
    sh = ServerHello.decode(reply)
    forged = bytearray(sh.signature.ed25519)
    forged[0] ^= 1
    with pytest.raises(AuthenticationFailed) as exc:
        hs.receive(_resign(reply, HybridSignature(bytes(forged), sh.signature.mldsa)), NOW)
    assert exc.value.detail == "ed25519 signature"


def test_forged_mldsa_half_alone_fails(keys) -> None:
    hs, _, reply = run(keys)
    sh = ServerHello.decode(reply)
    forged = bytearray(sh.signature.mldsa)
    forged[-40] ^= 1
    with pytest.raises(AuthenticationFailed) as exc:
        hs.receive(_resign(reply, HybridSignature(sh.signature.ed25519, bytes(forged))), NOW)
    assert exc.value.detail == "ml-dsa signature"


def test_impostor_exit_with_its_own_valid_signature_fails_the_pin(keys) -> None:
    client, exit_key, admin, cert = keys
    hs = ClientHandshake(client, certificate=cert, pinned_node_id=exit_key.node_id)
    impostor = HybridSigningKey.generate()
    srv = ServerHandshake(impostor, Authorizer([admin.public]))
    hello = bytearray(hs.hello())
    hello[-32:] = impostor.node_id  # the impostor also rewrites the pin it was sent
    _, reply = srv.receive(bytes(hello), NOW)
    with pytest.raises(AuthenticationFailed) as exc:
        hs.receive(reply, NOW)
    assert "pinned" in exc.value.detail


def test_tampered_client_hello_breaks_the_server_signature(keys) -> None:
    client, exit_key, admin, cert = keys
    hs = ClientHandshake(client, certificate=cert)
    hello = bytearray(hs.hello())
    hello[50] ^= 1  # inside the client's X25519 share / ML-KEM key
    srv = ServerHandshake(exit_key, Authorizer([admin.public]))
    try:
        _, reply = srv.receive(bytes(hello), NOW)
    except PeerError:
        return  # the exit noticed first: fine
    with pytest.raises(AuthenticationFailed):
        hs.receive(reply, NOW)


def test_any_tampered_server_hello_byte_fails(keys) -> None:
    for i in (0, 3, 40, 1700, 3500, -10):
        hs, _, reply = run(keys)
        bad = bytearray(reply)
        bad[i] ^= 0x20
        with pytest.raises(PeerError):
            hs.receive(bytes(bad), NOW)


def _reseal(client_session, body: bytes) -> bytearray:
    """A ClientFinish record with ``body``, under the client's handshake keys."""
    send = client_session._keys.send
    send.next_counter = 0
    return send.seal_body(0x02, body)


def test_the_hello_names_no_one(keys) -> None:
    """An observer of the hello learns neither the long-term key nor the certificate."""
    client, _exit_key, _admin, cert = keys
    hello = ClientHandshake(client, certificate=cert, mtu=1400).hello()
    secrets_of_identity = [
        client.public.encode(), client.public.ed25519, client.public.mldsa, client.node_id,
        cert.encode(), cert.name.encode(), cert.organisation.encode(), cert.serial,
    ]  # fmt: skip
    for part in secrets_of_identity:
        assert part not in hello
    # ...but all of it reaches the exit, in the sealed finish.
    hs, exit_session, reply = run(keys)
    _, finish = hs.receive(reply, NOW)
    assert client.public.ed25519 not in finish and cert.name.encode() not in finish
    (event,) = exit_session.receive(finish, NOW).events
    assert event.authorization.name == cert.name
    assert exit_session.peer == client.public and exit_session.peer_certificate == cert


def test_forged_client_finish_is_refused(keys) -> None:
    client, _exit_key, _admin, cert = keys
    hs, exit_session, reply = run(keys)
    client_session, _finish = hs.receive(reply, NOW)
    # The victim's identity and certificate, signed by another key (whoever holds the
    # handshake keys but not the device key).
    other = HybridSigningKey.generate()
    unsigned = ClientFinish(client.public, cert, HybridSignature(b"", b""))
    sig = other.sign(FINISH_LABEL, b"x" * 48 + unsigned.signed_part())
    bad = _reseal(client_session, ClientFinish(client.public, cert, sig).encode())
    with pytest.raises(AuthenticationFailed):
        exit_session.receive(bad, NOW)
    assert exit_session.closed and exit_session.peer is None


def test_a_finish_signed_for_another_certificate_is_refused(keys) -> None:
    """The signature covers the certificate sent with it: swapping it in fails."""
    client, _exit_key, _admin, cert = keys
    hs, exit_session, reply = run(keys)
    client_session, _finish = hs.receive(reply, NOW)
    # Re-sign correctly for H2 with no certificate, then attach the certificate.
    h2 = exit_session._finish.transcript
    honest = ClientFinish.signed(client, None, h2, Mode.HYBRID)
    swapped = ClientFinish(client.public, cert, honest.signature)
    with pytest.raises(AuthenticationFailed):
        exit_session.receive(_reseal(client_session, swapped.encode()), NOW)


def test_finish_must_prove_the_device_the_token_named(keys) -> None:
    client, exit_key, admin, cert = keys
    srv = ServerHandshake(exit_key, Authorizer([admin.public]))
    # Another certified device holding a valid token for ``client``: refused at the finish
    # although its own signature and certificate are fine.
    other = HybridSigningKey.generate()
    other_cert = admin.issue(other.public, "other", "org", int(NOW) - 60, int(NOW) + 3600)
    hs = ClientHandshake(other, certificate=other_cert)
    session, reply = srv.receive(hs.hello(), NOW, token="t", expected_device=client.node_id)
    assert srv.peer_label == client.node_id.hex()[:16]
    _, finish = hs.receive(reply, NOW, token="t")
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        session.receive(finish, NOW)
    assert session.closed
    # The named device itself passes.
    hs = ClientHandshake(client, certificate=cert)
    session, reply = srv.receive(hs.hello(), NOW, token="t", expected_device=client.node_id)
    _, finish = hs.receive(reply, NOW, token="t")
    assert isinstance(session.receive(finish, NOW).events[0], PeerAuthenticated)
    with pytest.raises(ValueError):
        srv.receive(hs.hello(), NOW, expected_device=b"short")


def test_a_revoked_certificate_fails_at_the_finish(keys) -> None:
    client, exit_key, admin, cert = keys
    authorizer = Authorizer([admin.public])
    authorizer.update_revocations(admin.revoke(None, cert.serial, "lost", int(NOW)))
    srv = ServerHandshake(exit_key, authorizer)
    hs = ClientHandshake(client, certificate=cert)
    session, reply = srv.receive(hs.hello(), NOW, expected_device=client.node_id)
    _, finish = hs.receive(reply, NOW)
    with pytest.raises(CertificateRevoked):
        session.receive(finish, NOW)
    assert session.closed and not session.established


def test_the_token_is_bound_into_the_transcript(keys) -> None:
    """A hello moved to another connection (another token) fails on both sides."""
    client, exit_key, admin, cert = keys
    srv = ServerHandshake(exit_key, Authorizer([admin.public]))
    hs = ClientHandshake(client, certificate=cert)
    _, reply = srv.receive(hs.hello(), NOW, token="token-the-exit-admitted")
    with pytest.raises(AuthenticationFailed):
        hs.receive(reply, NOW, token="token-the-client-sent")
    # Same token on both sides: fine; str and bytes spell the same token.
    hs = ClientHandshake(client, certificate=cert)
    session, reply = srv.receive(hs.hello(), NOW, token="abc")
    _, finish = hs.receive(reply, NOW, token=b"abc")
    assert isinstance(session.receive(finish, NOW).events[0], PeerAuthenticated)
    with pytest.raises(ValueError):
        srv.receive(hs.hello(), NOW, token="x" * 2000)


def test_data_before_finish_is_a_protocol_violation(keys) -> None:
    hs, exit_session, reply = run(keys)
    client_session, _finish = hs.receive(reply, NOW)
    data = client_session.seal([b"early"], NOW)
    from l2bridge.errors import ProtocolViolation

    with pytest.raises(ProtocolViolation):
        exit_session.receive(data, NOW)


def _finish_with(srv, hs, now):
    session, reply = srv.receive(hs.hello(), now)
    _, finish = hs.receive(reply, now)
    return session, finish


def test_unauthorized_clients_are_refused_at_the_finish(keys) -> None:
    client, exit_key, admin, cert = keys
    srv = ServerHandshake(exit_key, Authorizer([admin.public]))
    session, finish = _finish_with(srv, ClientHandshake(HybridSigningKey.generate()), NOW)
    with pytest.raises(NotAuthorized, match=r"^not authorized$"):
        session.receive(finish, NOW)
    session, finish = _finish_with(srv, ClientHandshake(client, certificate=cert), NOW + 7200)
    with pytest.raises(NotAuthorized) as exc:
        session.receive(finish, NOW + 7200)
    assert exc.value.detail == "certificate expired"
    # ...and the allow-list admits a device without a certificate.
    allow = ServerHandshake(exit_key, Authorizer(allow_list=AllowList().add(client.node_id, "x")))
    session, finish = _finish_with(allow, ClientHandshake(client), NOW)
    assert session.receive(finish, NOW).events[0].authorization.method == "allow-list"


def test_mode_and_cipher_negotiation_failures(keys) -> None:
    client, exit_key, admin, cert = keys
    hybrid_only = ServerHandshake(exit_key, Authorizer([admin.public]))
    with pytest.raises(UnsupportedParameters):
        hybrid_only.receive(
            ClientHandshake(client, certificate=cert, mode=Mode.CLASSICAL).hello(), NOW
        )
    chacha_only = ServerHandshake(
        exit_key, Authorizer([admin.public]), ciphers=[Cipher.CHACHA20_POLY1305]
    )
    with pytest.raises(UnsupportedParameters):
        chacha_only.receive(
            ClientHandshake(client, certificate=cert, ciphers=[Cipher.AES_256_GCM]).hello(), NOW
        )


def test_downgraded_mode_is_detected_by_the_client(keys) -> None:
    client, exit_key, admin, cert = keys
    hs = ClientHandshake(client, certificate=cert, mode=Mode.HYBRID)
    hello = ClientHello.decode(hs.hello())
    downgraded = dataclasses.replace(hello, mode=Mode.CLASSICAL, kem=b"").encode()
    srv = ServerHandshake(exit_key, Authorizer([admin.public]), modes=list(Mode))
    _, reply = srv.receive(downgraded, NOW)
    with pytest.raises(PeerError):
        hs.receive(reply, NOW)


def test_attestation_nonce_evidence_flow(keys) -> None:
    client, exit_key, admin, cert = keys
    nonce = os.urandom(32)
    calls = []

    def provider(n: bytes, nid: bytes) -> bytes:
        calls.append(("provide", n, nid))
        return b"quote:" + n + nid

    def checker(evidence: bytes, n: bytes, nid: bytes) -> None:
        calls.append(("check", n, nid))
        if evidence != b"quote:" + n + nid:
            raise ValueError("bad quote")

    hs = ClientHandshake(
        client, certificate=cert, attestation_nonce=nonce, evidence_checker=checker
    )
    srv = ServerHandshake(exit_key, Authorizer([admin.public]), evidence_provider=provider)
    _, reply = srv.receive(hs.hello(), NOW)
    hs.receive(reply, NOW)
    assert calls == [("provide", nonce, exit_key.node_id), ("check", nonce, exit_key.node_id)]
    assert hs.evidence == b"quote:" + nonce + exit_key.node_id

    # Evidence for another nonce (a replayed quote) is refused.
    def stale_quote(n: bytes, nid: bytes) -> bytes:
        return b"quote:" + bytes(32) + nid

    stale = ServerHandshake(exit_key, Authorizer([admin.public]), evidence_provider=stale_quote)
    hs2 = ClientHandshake(
        client, certificate=cert, attestation_nonce=nonce, evidence_checker=checker
    )
    _, reply2 = stale.receive(hs2.hello(), NOW)
    with pytest.raises(AuthenticationFailed) as exc:
        hs2.receive(reply2, NOW)
    assert "evidence" in exc.value.detail


def test_client_argument_checks(keys) -> None:
    with pytest.raises(ValueError):
        ClientHandshake(keys[0], attestation_nonce=b"short", evidence_checker=lambda *a: None)
    with pytest.raises(ValueError):
        ClientHandshake(keys[0], attestation_nonce=bytes(32))
    with pytest.raises(ValueError):
        ClientHandshake(keys[0], pinned_node_id=b"x")


def test_handshake_cannot_be_finished_twice(keys) -> None:
    from l2bridge.errors import StateError

    hs, _, reply = run(keys)
    hs.receive(reply, NOW)
    with pytest.raises(StateError):
        hs.receive(reply, NOW)


def test_garbage_hellos(keys) -> None:
    srv = ServerHandshake(keys[1], Authorizer())
    for junk in (b"", b"\x51", b"\x51\x02", b"\x51\x01\x07", os.urandom(5000), bytes(70000)):
        with pytest.raises((MalformedMessage, UnsupportedParameters)):
            srv.receive(junk, NOW)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mode=st.sampled_from(list(Mode)),
    cipher=st.sampled_from(list(Cipher)),
    options=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    frames=st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=5),
)
def test_handshake_round_trip_property(keys, mode, cipher, options, frames) -> None:
    client, exit_key, admin, cert = keys
    with_cert, with_nonce, with_pin = options
    allow = AllowList() if with_cert else AllowList().add(client.node_id, "allowed")
    hs = ClientHandshake(
        client,
        certificate=cert if with_cert else None,
        mode=mode,
        ciphers=[cipher],
        pinned_node_id=exit_key.node_id if with_pin else None,
        attestation_nonce=os.urandom(32) if with_nonce else None,
        evidence_checker=(lambda ev, n, nid: None) if with_nonce else None,
    )
    srv = ServerHandshake(
        exit_key, Authorizer([admin.public], allow_list=allow), modes=[mode],
        evidence_provider=lambda n, nid: n + nid,
    )  # fmt: skip
    exit_session, reply = srv.receive(hs.hello(), NOW)
    client_session, finish = hs.receive(reply, NOW)
    (event,) = exit_session.receive(finish, NOW).events
    assert isinstance(event, PeerAuthenticated)
    assert event.authorization.method == ("certificate" if with_cert else "allow-list")
    assert hs.evidence == (ClientHello.decode(hs.hello()).nonce or b"") + (
        exit_key.node_id if with_nonce else b""
    )
    got = exit_session.receive(client_session.seal(frames, NOW), NOW).frames
    assert [bytes(f) for f in got] == frames
    back = client_session.receive(exit_session.seal(frames[::-1], NOW), NOW).frames
    assert [bytes(f) for f in back] == frames[::-1]


def test_the_clients_mtu_reaches_the_exit_session(keys) -> None:
    hs, exit_session, _reply = run(keys, mtu=1400, pinned_node_id=keys[1].node_id)
    assert ClientHello.decode(hs.hello()).mtu == 1400
    assert ClientHello.decode(hs.hello()).encode() == hs.hello()
    assert exit_session.peer_mtu == 1400
    _hs, plain_session, _ = run(keys)
    assert plain_session.peer_mtu is None  # an older client says nothing: no warning
    with pytest.raises(ValueError, match="mtu"):
        ClientHandshake(keys[0], mtu=70000)


def test_hello_size_limits_differ_by_direction() -> None:
    """The exit's hello may carry up to 3 MiB of evidence; what an exit reads (the
    ClientHello) stays within the 320 KiB of every other handshake message."""
    assert MAX_HANDSHAKE_MESSAGE_SIZE < MAX_EVIDENCE_SIZE < MAX_SERVER_HELLO_SIZE
    with pytest.raises(MalformedMessage) as caught:
        ClientHello.decode(bytes([0x51]) + bytes(MAX_HANDSHAKE_MESSAGE_SIZE))
    assert caught.value.detail == "hello too large"
    with pytest.raises(MalformedMessage) as caught:
        ServerHello.decode(bytes([0x52]) + bytes(MAX_SERVER_HELLO_SIZE))
    assert caught.value.detail == "hello too large"
    # just under the ServerHello limit it is parsed (and refused for what it holds)
    with pytest.raises(UnsupportedParameters):
        ServerHello.decode(bytes([0x52]) + bytes(MAX_SERVER_HELLO_SIZE - 1))


def test_evidence_since_reaches_the_exits_since_provider(keys) -> None:
    """A hello that says how far the client replayed the exit's IMA list gets the since
    provider's evidence; one that does not (or an exit without that provider) gets the
    whole list's."""
    client, exit_key, admin, cert = keys
    calls: list[tuple[str, EvidenceSince | None]] = []

    def whole(n: bytes, nid: bytes) -> bytes:
        calls.append(("whole", None))
        return b"whole:" + n

    def since_provider(n: bytes, nid: bytes, since: EvidenceSince) -> bytes:
        calls.append(("since", since))
        return b"since:" + n

    def hello(since: EvidenceSince | None) -> tuple[ClientHandshake, bytes]:
        hs = ClientHandshake(
            client, certificate=cert, attestation_nonce=nonce, evidence_checker=lambda *a: None,
            pinned_node_id=exit_key.node_id, evidence_since=since,
        )  # fmt: skip
        return hs, hs.hello()

    nonce = os.urandom(32)
    since = EvidenceSince(3, 4_000)
    authorizer = Authorizer([admin.public])
    srv = ServerHandshake(
        exit_key, authorizer, evidence_provider=whole, evidence_since_provider=since_provider
    )
    hs, data = hello(since)
    assert ClientHello.decode(data).since == since
    _, reply = srv.receive(data, NOW)
    hs.receive(reply, NOW)
    assert hs.evidence == b"since:" + nonce and calls == [("since", since)]
    hs, data = hello(None)
    _, reply = srv.receive(data, NOW)
    hs.receive(reply, NOW)
    assert hs.evidence == b"whole:" + nonce and calls[-1] == ("whole", None)
    old_exit = ServerHandshake(exit_key, authorizer, evidence_provider=whole)
    hs, data = hello(since)
    _, reply = old_exit.receive(data, NOW)
    hs.receive(reply, NOW)
    assert hs.evidence == b"whole:" + nonce


def test_evidence_since_needs_a_nonce_and_a_pinned_exit(keys) -> None:
    client, exit_key, _admin, _cert = keys
    since = EvidenceSince(1, 10)
    with pytest.raises(ValueError):
        ClientHandshake(client, pinned_node_id=exit_key.node_id, evidence_since=since)
    with pytest.raises(ValueError):
        ClientHandshake(
            client, attestation_nonce=bytes(32), evidence_checker=lambda *a: None,
            evidence_since=since,
        )  # fmt: skip
    with pytest.raises(ValueError):
        EvidenceSince(-1, 0)
    with pytest.raises(ValueError):
        EvidenceSince(0, 2**32)
    # On the wire: the flag without a nonce or without a pin is malformed.
    good = ClientHandshake(
        client, attestation_nonce=bytes(32), evidence_checker=lambda *a: None,
        pinned_node_id=exit_key.node_id, evidence_since=since,
    ).hello()  # fmt: skip
    hello = ClientHello.decode(good)
    for changed in (
        dataclasses.replace(hello, nonce=None),
        dataclasses.replace(hello, pinned=None),
    ):
        with pytest.raises(ValueError):
            changed.encode()
    plain = dataclasses.replace(hello, nonce=None, pinned=None, since=None).encode()
    flags_at = plain.index(bytes(hello.x25519)) - 1
    forged = plain[:flags_at] + bytes([16]) + plain[flags_at + 1 :] + bytes(8)
    with pytest.raises(MalformedMessage):
        ClientHello.decode(forged)
