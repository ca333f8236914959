"""The exit's front door (sans-I/O): decide, from the first bytes of a
connection, whether it is an authorised WebSocket upgrade or a visitor of the
decoy site.

``Gate.feed(data, now)`` returns one of:
- ``Pending``: need more bytes (the driver arms the header timeout);
- ``Refuse(data)``: not an authorised upgrade; ``data`` is every byte received
  so far, which the driver hands to the decoy (transport.decoy) or to the
  operator's real web server (transport.fallback) for the rest of the connection;
- ``Admit(data, token, admission)``: hand every byte received so far to the WebSocket
  library, which performs the upgrade and echoes ``token`` as the subprotocol;
  ``admission`` names the device whose credential minted it (transport.admission),
  which its handshake must then prove to be.

The head is parsed incrementally (transport.headers), so a head fed a byte at
a time costs linear work. A gate without a verifier never admits.

Before a token is checked (and so spent), the request must pass the WebSocket
library's own handshake rules, applied by the library itself (``library_accepts``:
its request parser and ``ServerProtocol.accept``, sans-I/O, configured as the
exit's server is). Anything it would refuse (``Upgrade: websocket, h2c``, a body
on the GET, ``Transfer-Encoding``, two Origin headers...) is answered by the decoy
like any other request, instead of being admitted, spending the token, and then
closed by the library without a word.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from l2bridge.transport.admission import Admission, TokenVerifier
from l2bridge.transport.headers import (
    Complete,
    HeadParser,
    Incomplete,
    RequestHead,
    header_has_token,
)


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
    admission: Admission


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


_QUIET = logging.getLogger(__name__ + ".library_check")
_QUIET.disabled = True


def library_accepts(head: bytes, token: str) -> bool:
    """Whether websockets' server handshake accepts the request ``head`` and selects
    ``token`` as its subprotocol (as ``transport.server`` configures it: no extensions,
    no origin list). Pure: no I/O, nothing logged, nothing spent."""

    def select(_protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return Subprotocol(token) if token in offered else None

    protocol = ServerProtocol(select_subprotocol=select, logger=_QUIET)
    protocol.receive_data(head)
    events = protocol.events_received()
    if protocol.handshake_exc is not None or len(events) != 1:
        return False
    request = events[0]
    if not isinstance(request, Request):
        return False
    response = protocol.accept(request)
    headers: Headers = response.headers
    return response.status_code == 101 and headers.get("Sec-WebSocket-Protocol") == token


class Gate:
    """Screens one connection. Not reusable: one decision per connection."""

    def __init__(self, *, ws_path: str, verifier: TokenVerifier | None, source: str = "") -> None:
        self._ws_path = ws_path
        self._verifier = verifier
        self._source = source  # the peer's address key (per-source handshake quota)
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
        admission = None
        if isinstance(scan, Complete) and self._verifier is not None:
            token = _offered_token(scan.head, self._ws_path)
            if token is not None and library_accepts(received[: scan.consumed], token):
                # Last: it spends the token (and a quota) when it admits.
                admission = self._verifier.check(token, now, self._source)
        self.decision = (
            Refuse(received) if admission is None else Admit(received, admission.token, admission)
        )
        return self.decision
