"""TLS contexts for wss:// tunnels: the exit's (certificate + key) and the client's (CAs).

Both ends accept TLS 1.2 and newer only. The client checks the exit's certificate chain
against the system's CAs, or only against ``ca_file`` when one is configured (a private
CA), and checks the certificate's name against the URL's host. A file that cannot be used
raises ``TlsError`` naming it.

The client resumes TLS sessions as a browser does (``ResumingContext``).

Both offer ALPN ``http/1.1`` as a browser's wss:// connection and an nginx without HTTP/2
do: the client's ClientHello then carries the ALPN a browser's does, and the exit answers
it as nginx does (``http/1.1`` when offered, nothing otherwise). What else of the
ClientHello differs from Chrome's and what the ``ssl`` module cannot change:
bench/traffic/README.md.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from l2bridge.errors import KeyFileError
from l2bridge.identity.keys import check_directories, read_checked_file
from l2bridge.transport.errors import TransportError

ALPN_HTTP1 = "http/1.1"


class TlsError(TransportError):
    """A certificate, key or CA file could not be used (local configuration)."""


def _describe(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def read_key_file(key_file: Path) -> bytes:
    """The TLS private key's bytes, read as the identity keys are (``read_checked_file``):
    a regular file owned by this user or root, readable by nobody but them and its group
    (0600 or 0640, Debian's ``ssl-cert`` group), through directories no other user can
    change. A symbolic link is followed (certbot's ``live/`` names are links into
    ``archive/``), the directories of both the link's path and its target checked.
    ``TlsError`` names the file and the reason."""
    try:
        check_directories(key_file)
        return read_checked_file(os.path.realpath(key_file), private=True, group_read=True)
    except KeyFileError as exc:
        raise TlsError(f"TLS key {exc}") from None


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The exit's context: its certificate chain and private key (``read_key_file``), TLS
    1.2+. OpenSSL loads the key from the bytes that were checked (an anonymous memory
    file), never from the path again."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_HTTP1])
    key = read_key_file(key_file)
    fd = os.memfd_create("shadowmesh-tls-key", os.MFD_CLOEXEC)
    try:
        view = memoryview(key)
        while view:
            view = view[os.write(fd, view) :]
        context.load_cert_chain(cert_file, f"/proc/self/fd/{fd}")
    except (OSError, ssl.SSLError) as exc:
        # The key file's contents never reach the message, only which file failed and why.
        raise TlsError(f"cannot load {cert_file} / {key_file}: {_describe(exc)}") from None
    finally:
        os.close(fd)
    return context


class ResumingContext(ssl.SSLContext):
    """A client context that resumes TLS sessions as a browser does.

    A browser that connects again to a server it has just used resumes the TLS session
    (Chromium did in 316 of 320 of our corpus's sessions); a client that never does stands
    out, and pays a full handshake each time. ``remember`` keeps the session (the ticket)
    a connection left, per server name; the next connection to that name offers it. A
    ticket is offered once only: it travels in the clear, so offering it twice would let
    an observer link the two connections (RFC 8446, section C.4). Only TLS 1.3 sessions
    are kept: TLS 1.2 sends the ticket in the clear when it is issued too, which would
    link the two connections as well. A server that cannot use it (restarted, another
    server under that name) just makes a full handshake.
    """

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        # (ssl.SSLContext is built in __new__; this subclass only adds its two tables)
        self._sessions: dict[str, ssl.SSLSession] = {}  # server name -> session to offer
        self._offered: dict[bytes, None] = {}  # ids of sessions offered, oldest first

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side and isinstance(server_hostname, str):
            session = self._sessions.pop(server_hostname, None)
            if session is not None:
                self._offered[session.id] = None
                while len(self._offered) > MAX_REMEMBERED_SESSIONS:
                    del self._offered[next(iter(self._offered))]
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, ssl_object: ssl.SSLObject | None) -> bool:
        """Keep the session ``ssl_object``'s connection left for its server's next
        connection; True if there was a fresh one (never one already offered)."""
        if ssl_object is None or ssl_object.server_side or not ssl_object.server_hostname:
            return False
        if ssl_object.version() != "TLSv1.3":
            return False
        session = ssl_object.session
        table = self._sessions
        if session is None or not session.has_ticket or session.id in self._offered:
            return False
        if len(table) >= MAX_REMEMBERED_SESSIONS and ssl_object.server_hostname not in table:
            del table[next(iter(table))]
        table[ssl_object.server_hostname] = session
        return True


MAX_REMEMBERED_SESSIONS = 64


def client_context(ca_file: Path | None = None) -> ResumingContext:
    """The client's context: the system's CAs, or only ``ca_file``; host names checked;
    sessions resumed (``ResumingContext``)."""
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load CA file {ca_file}: {_describe(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_HTTP1])
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
