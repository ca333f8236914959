"""Exceptions of the l2bridge package.

One root, two branches: *local* errors (our own misuse or environment: a wrong
call order, a key file with loose permissions, a key past its reject-after
limit) and *peer* errors (caused by bytes a peer sent).  Peer errors carry a
fixed message that reveals nothing about our internals; a driver may log them
but never sends exception text to a peer.  ``detail`` on a peer error is for
local logs only.

::

    L2BridgeError
    +-- LocalError
    |   +-- StateError            call made in the wrong protocol state
    |   +-- KeyFileError          identity / certificate / list file unusable
    |   +-- KeyExpired            a key past its reject-after limit (time or records)
    |   +-- RecordTooLarge        a batch does not fit in one record
    |   +-- BackendUnavailable    a requested crypto backend cannot be loaded
    |   +-- NoExitAvailable       no exit in the registry (or its cache) could be used
    |   +-- DeviceRevoked         the exit said this device's certificate is revoked
    +-- RecordRejected            a record dropped (reason = stats key); caught
    |                             inside the session, never reaches a driver
    +-- PeerError (fixed messages, safe to count and log)
        +-- MalformedMessage      bytes that do not parse
        +-- UnsupportedParameters version, mode or cipher we do not accept
        +-- AuthenticationFailed  a signature, node id or evidence check failed
        +-- NotAuthorized         identity not certified, expired, revoked, not allowed
        |   +-- CertificateRevoked  on its admin's revocation list
        +-- ProtocolViolation     a well-formed message at the wrong time (fatal)
        +-- HelloRefused          a replayed hello, or one past its quota (no work done)
"""

from __future__ import annotations


class L2BridgeError(Exception):
    """Root of every exception raised by l2bridge."""


class LocalError(L2BridgeError):
    """Our side got something wrong; never caused by peer bytes."""


class StateError(LocalError):
    """A method was called in a state where it is not allowed."""


class KeyFileError(LocalError):
    """A key, certificate or list file is missing, malformed or too widely readable."""


class KeyExpired(LocalError):
    """A key reached its reject-after limit; a rekey (or a new session) is needed."""


class RecordTooLarge(LocalError):
    """The frames given to seal do not fit in one record."""


class BackendUnavailable(LocalError):
    """A cryptographic backend (e.g. liboqs) cannot be loaded here."""


class RecordRejected(L2BridgeError):
    """A record was dropped; ``reason`` names the counter it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerError(L2BridgeError):
    """Raised on bad peer input.  ``str()`` is a fixed message; ``detail`` is local only."""

    message = "peer error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(self.message)
        self.detail = detail


class MalformedMessage(PeerError):
    message = "malformed message"


class UnsupportedParameters(PeerError):
    message = "unsupported parameters"


class AuthenticationFailed(PeerError):
    message = "authentication failed"


class NotAuthorized(PeerError):
    message = "not authorized"


class CertificateRevoked(NotAuthorized):
    """The device's certificate is on its admin's revocation list."""


class ProtocolViolation(PeerError):
    message = "protocol violation"


class HelloRefused(PeerError):
    """The exit refused a ClientHello before doing any work for it; ``detail`` (local
    only) is the reason: ``"duplicate"`` or ``"quote quota"``."""

    message = "hello refused"


class NoExitAvailable(LocalError):
    """No usable exit: every registry candidate was refused, unreachable or unhealthy."""


class DeviceRevoked(LocalError):
    """The exit closed the tunnel saying this device is revoked: retrying cannot help."""
