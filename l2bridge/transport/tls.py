"""TLS contexts for wss:// tunnels: the exit's (certificate + key) and the client's (CAs).

Both ends accept TLS 1.2 and newer only. The client checks the exit's certificate chain
against the system's CAs, or only against ``ca_file`` when one is configured (a private
CA), and checks the certificate's name against the URL's host. A file that cannot be used
raises ``TlsError`` naming it.

Both offer ALPN ``http/1.1`` as a browser's wss:// connection and an nginx without HTTP/2
do: the client's ClientHello then carries the ALPN a browser's does, and the exit answers
it as nginx does (``http/1.1`` when offered, nothing otherwise). What else of the
ClientHello differs from Chrome's and what the ``ssl`` module cannot change:
bench/traffic/README.md.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from l2bridge.transport.errors import TransportError

ALPN_HTTP1 = "http/1.1"


class TlsError(TransportError):
    """A certificate, key or CA file could not be used (local configuration)."""


def _describe(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The exit's context: its certificate chain and private key, TLS 1.2+."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_HTTP1])
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        # The key file's contents never reach the message, only which file failed and why.
        raise TlsError(f"cannot load {cert_file} / {key_file}: {_describe(exc)}") from None
    return context


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The client's context: the system's CAs, or only ``ca_file``; host names checked."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load CA file {ca_file}: {_describe(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_HTTP1])
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
