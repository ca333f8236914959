"""Errors of the WebSocket-mimicking transport.

TransportError (l2bridge.errors.L2BridgeError)  root of this package's errors
    TokenError                 a master key, credential or token could not be used (local input)
    DecoyError                 the decoy site directory could not be loaded
    TransportClosed            the WebSocket closed while a caller was using it
    UpgradeRefused             the exit answered the upgrade like a web server

None of these carries peer data or internals back to the peer: the server side
answers everything invalid with the decoy site and nothing else.
"""

from __future__ import annotations

from l2bridge.errors import L2BridgeError


class TransportError(L2BridgeError):
    """Root of the transport's errors."""


class TokenError(TransportError):
    """A master key, credential or token is malformed (local configuration input)."""


class DecoyError(TransportError):
    """The decoy site could not be loaded."""


class TransportClosed(TransportError):
    """The WebSocket is closed."""


class UpgradeRefused(TransportError):
    """The server did not switch protocols (wrong key, node id, clock or path)."""
