"""The client's TLS context resumes sessions as a browser does, each ticket offered once,
only to the server name that issued it (real TLS through memory BIOs, no sockets)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from l2bridge.commands.initfiles import write_private_tls
from l2bridge.transport import tls
from l2bridge.transport.tls import ResumingContext, client_context, server_context

NAMES = ("a.test", "b.test")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per name in NAMES, a certificate and key (``write_private_tls``: a one-use CA each);
    ``ca.pem`` holds both CAs, as the client trusts them."""
    root = tmp_path_factory.mktemp("pki")
    out, cas = {}, []
    for name in NAMES:
        ca, cert, key = write_private_tls(root / name, name)
        out[name] = (cert, key)
        cas.append(ca.read_bytes())
    (root / "ca.pem").write_bytes(b"".join(cas))
    return out


def connect(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> ssl.SSLObject:
    """A whole TLS connection in memory: handshake, then one byte from the server (which
    carries its session tickets to the client, as the exit's 101 answer does)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for obj in (c, s):
            if not done[obj]:
                try:
                    obj.do_handshake()
                    done[obj] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    s.write(b"x")
    c_in.write(s_out.read())
    assert c.read(1) == b"x"
    return c


def server(pki: dict[str, tuple[Path, Path]], name: str) -> ssl.SSLContext:
    """A server for ``name`` (a new one: new ticket keys, as after a restart)."""
    return server_context(*pki[name])


@pytest.fixture()
def contexts(pki: dict[str, tuple[Path, Path]]) -> tuple[ResumingContext, ssl.SSLContext]:
    ca = next(iter(pki.values()))[0].parent.parent / "ca.pem"
    return client_context(ca), server(pki, "a.test")


def test_a_second_connection_resumes_with_a_fresh_ticket(contexts) -> None:
    client, server_a = contexts
    first = connect(client, server_a, "a.test")
    assert not first.session_reused
    assert client.remember(first)
    second = connect(client, server_a, "a.test")
    assert second.session_reused
    assert not client.remember(first)  # that ticket was offered: never again
    assert client.remember(second)  # the server's new ticket
    assert connect(client, server_a, "a.test").session_reused
    offered = list(client._offered)
    assert len(offered) == 2 and offered[0] != offered[1]


def test_without_a_remembered_session_a_connection_is_a_full_handshake(contexts) -> None:
    client, server_a = contexts
    first = connect(client, server_a, "a.test")
    assert client.remember(first)
    assert connect(client, server_a, "a.test").session_reused
    # the ticket was used and nothing was remembered since: a full handshake, not a reuse
    assert not connect(client, server_a, "a.test").session_reused


def test_a_session_is_offered_only_to_the_name_it_came_from(contexts, pki) -> None:
    client, server_a = contexts
    assert client.remember(connect(client, server_a, "a.test"))
    assert not connect(client, server(pki, "b.test"), "b.test").session_reused
    assert connect(client, server_a, "a.test").session_reused  # still there for a.test


def test_a_server_that_cannot_resume_gets_a_full_handshake(contexts, pki) -> None:
    client, server_a = contexts
    assert client.remember(connect(client, server_a, "a.test"))
    restarted = server(pki, "a.test")  # new ticket keys
    again = connect(client, restarted, "a.test")
    assert not again.session_reused
    assert client.remember(again)  # and the fresh session is kept for next time


def test_remember_takes_only_client_connections_with_a_ticket(contexts) -> None:
    client, server_a = contexts
    assert not client.remember(None)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    unfinished = client.wrap_bio(c_in, c_out, server_hostname="a.test")
    assert not client.remember(unfinished)  # no handshake yet: no session
    server_side = server_a.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert not client.remember(server_side)
    assert client._sessions == {}


def test_the_table_of_sessions_is_bounded(contexts, pki, monkeypatch: pytest.MonkeyPatch) -> None:
    client, server_a = contexts
    monkeypatch.setattr(tls, "MAX_REMEMBERED_SESSIONS", 1)
    assert client.remember(connect(client, server_a, "a.test"))
    assert client.remember(connect(client, server(pki, "b.test"), "b.test"))
    assert list(client._sessions) == ["b.test"]


def test_a_tls_1_2_session_is_not_kept(contexts, pki) -> None:
    """TLS 1.2 sends a new ticket in the clear: resuming with it would link the two
    connections for anyone watching, so it is not kept."""
    client, _server = contexts
    old = server(pki, "a.test")
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    first = connect(client, old, "a.test")
    assert first.version() == "TLSv1.2"
    assert not client.remember(first)
    assert not connect(client, old, "a.test").session_reused
