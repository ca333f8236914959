"""The exit's front door (sans-I/O): decide, from the first bytes of a
connection, whether it is an authorised WebSocket upgrade or a visitor of the
decoy site.

``Gate.feed(data, now)`` returns one of:
- ``Pending``: need more bytes (the driver arms the header timeout);
- ``Refuse(data)``: not an authorised upgrade; ``data`` is every byte received
  so far, which the driver hands to the decoy (transport.decoy) or to the
  operator's real web server (transport.fallback) for the rest of the connection;
- ``Admit(data, token)``: hand every byte received so far to the WebSocket
  library, which performs the upgrade and echoes ``token`` as the subprotocol.

The head is parsed incrementally (transport.headers), so a head fed a byte at
a time costs linear work. A gate without a verifier never admits.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from l2bridge.transport.headers import (
    Complete,
    HeadParser,
    Incomplete,
    RequestHead,
    header_has_token,
)
from l2bridge.transport.token import TokenVerifier


@dataclass(frozen=True, slots=True)
class Pending:
    pass


@dataclass(frozen=True, slots=True)
class Refuse:
    data: bytes  # every byte received so far, for the decoy or the fallback


@dataclass(frozen=True, slots=True)
class Admit:
    data: bytes
    token: str


Decision = Pending | Refuse | Admit


def _valid_ws_key(value: str | None) -> bool:
    if value is None:
        return False
    try:
        return len(base64.b64decode(value.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def _offered_token(head: RequestHead, ws_path: str) -> str | None:
    """The single subprotocol offered by a well-formed upgrade to ``ws_path``."""
    if head.method != "GET" or head.version != "1.1" or head.path != ws_path:
        return None
    if not head.strict:
        return None  # the WebSocket library would refuse it with its own error page
    if head.count("Host") != 1 or head.count("Sec-WebSocket-Key") != 1:
        return None
    if not header_has_token(head.get("Upgrade"), "websocket"):
        return None
    if not header_has_token(head.get("Connection"), "upgrade"):
        return None
    if head.get("Sec-WebSocket-Version") != "13" or head.count("Sec-WebSocket-Version") != 1:
        return None
    if not _valid_ws_key(head.get("Sec-WebSocket-Key")):
        return None
    if head.count("Sec-WebSocket-Protocol") != 1:
        return None
    offered = head.get("Sec-WebSocket-Protocol") or ""
    if "," in offered:
        return None
    return offered.strip() or None


class Gate:
    """Screens one connection. Not reusable: one decision per connection."""

    def __init__(self, *, ws_path: str, verifier: TokenVerifier | None) -> None:
        self._ws_path = ws_path
        self._verifier = verifier
        self._parser = HeadParser()
        self.decision: Decision = Pending()

    def feed(self, data: bytes, now: float) -> Decision:
        if not isinstance(self.decision, Pending):
            return self.decision
        scan = self._parser.feed(data)
        if isinstance(scan, Incomplete):
            return self.decision
        received = bytes(self._parser.buffer)
        self._parser = HeadParser()  # drop the buffer; the decision carries the bytes
        token = None
        if isinstance(scan, Complete) and self._verifier is not None:
            token = _offered_token(scan.head, self._ws_path)
            if token is not None and not self._verifier.check(token, now):
                token = None
        self.decision = Refuse(received) if token is None else Admit(received, token)
        return self.decision
