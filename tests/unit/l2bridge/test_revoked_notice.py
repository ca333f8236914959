"""A revoked device is told so in a record it can authenticate, and only that is believed.

A client that hears "revoked" stops retrying for good, so the word must come from the exit:
the exit seals a CLOSE record (reason revoked) under the handshake's keys before it closes
the connection with WebSocket code 4403, and the client acts on the record alone. A close
code is not authenticated: on a plain ws:// path anyone could forge one (an injected close
frame) and, if it were believed, stop a client permanently with one packet.
"""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from l2bridge.constants import CLOSE_REVOKED as RECORD_REVOKED
from l2bridge.errors import CertificateRevoked, DeviceRevoked
from l2bridge.identity.keys import AdminKey, Authorizer, HybridSigningKey
from l2bridge.node.link import CLOSE_REVOKED, Link, _admission
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.pair import SessionPair
from l2bridge.protocol.session import Closed, Session
from l2bridge.transport.errors import TransportClosed

NOW = 1_700_000_000.0


def _refused(revoked: bool) -> tuple[Session, Session, BaseException]:
    """A full handshake whose ClientFinish the exit refuses: (client, exit, the error)."""
    client_key, exit_key = HybridSigningKey.generate(), HybridSigningKey.generate()
    admin = AdminKey(HybridSigningKey.generate())
    cert = admin.issue(client_key.public, "laptop", "org", int(NOW) - 60, int(NOW) + 86400)
    authorizer = Authorizer([admin.public] if revoked else [])
    if revoked:
        authorizer.update_revocations(admin.revoke(None, cert.serial, "lost", int(NOW)))
    hs = ClientHandshake(client_key, certificate=cert, pinned_node_id=exit_key.node_id)
    exit_session, reply = ServerHandshake(exit_key, authorizer).receive(hs.hello(), NOW)
    client_session, finish = hs.receive(reply, NOW)
    with pytest.raises(Exception) as info:
        exit_session.receive(finish, NOW)
    return client_session, exit_session, info.value


def test_the_exit_seals_a_revoked_notice_the_client_can_open() -> None:
    client, exit_session, error = _refused(revoked=True)
    assert isinstance(error, CertificateRevoked)
    assert exit_session.closed and exit_session.parting is not None
    got = client.receive(exit_session.parting, NOW)
    assert got.events == (Closed(RECORD_REVOKED, by_peer=True),)


def test_other_refusals_tell_nothing() -> None:
    _client, exit_session, error = _refused(revoked=False)  # no admin key: not authorised
    assert not isinstance(error, CertificateRevoked)
    assert exit_session.parting is None


class Messages:
    """The tunnel socket ``_admission`` reads: these messages, then a close with ``code``."""

    def __init__(self, *messages: bytes, code: int | None = None) -> None:
        self.messages = deque(messages)
        self.close_code = code

    async def next_message(self) -> bytes:
        if not self.messages:
            raise TransportClosed("connection closed")
        return self.messages.popleft()


def test_the_client_stops_on_the_authenticated_notice_only() -> None:
    client, exit_session, _error = _refused(revoked=True)
    assert exit_session.parting is not None
    ws = Messages(bytes(exit_session.parting), code=CLOSE_REVOKED)
    with pytest.raises(DeviceRevoked):
        asyncio.run(_admission(ws, client, lambda: NOW))  # type: ignore[arg-type]
    # A forged close code with no record (or a record that does not open): retried.
    client, exit_session, _error = _refused(revoked=True)
    forged = bytearray(exit_session.parting or b"")
    forged[-1] ^= 1
    for ws in (Messages(code=CLOSE_REVOKED), Messages(bytes(forged), code=CLOSE_REVOKED)):
        with pytest.raises(TransportClosed):
            asyncio.run(_admission(ws, client, lambda: NOW))  # type: ignore[arg-type]


class ClosedSocket:
    """A tunnel socket the path closed with code 4403 (a forged close frame)."""

    close_code = CLOSE_REVOKED

    async def wait_closed(self) -> None:
        return None


def test_a_close_code_alone_does_not_end_a_link_as_revoked() -> None:
    client, _exit, _error = _refused(revoked=False)

    async def body() -> None:
        link = Link(ClosedSocket(), client, is_client=True)  # type: ignore[arg-type]
        await link._watch()
        assert link.close_reason == "connection closed"

    asyncio.run(body())


def test_a_live_session_refused_later_parts_with_a_notice_sealed_before_its_keys_go() -> None:
    """Revoked while connected: the exit wipes the keys at once (nothing more passes) but
    seals the notice first, and the link sends it before closing."""
    pair = SessionPair.connect(NOW)
    pair.exit.close(parting=RECORD_REVOKED)
    assert pair.exit.closed and pair.exit.parting is not None
    assert pair.client.receive(pair.exit.parting, NOW).events == (
        Closed(RECORD_REVOKED, by_peer=True),
    )
    # A session closed without a reason parts with nothing.
    other = SessionPair.connect(NOW)
    other.exit.close()
    assert other.exit.parting is None
