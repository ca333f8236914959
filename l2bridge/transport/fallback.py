"""The fallback: hand a connection the gate refused to the operator's real web
server and splice both ways (asyncio driver).

``Splice(client, target, first_bytes, ...)`` connects to ``target`` (host,
port), writes the bytes the gate already read, then copies each side to the
other until either closes. A half-close is passed on (the peer's FIN becomes a
FIN to the web server and back), so a request sent with ``shutdown(SHUT_WR)``
still gets its answer. Flow control is end to end: when one side's write
buffer is full, reading from the other side pauses. With TLS on the exit the
client side is the decrypted stream, so the web server sees plain HTTP.

If the web server cannot be reached within ``FALLBACK_CONNECT_TIMEOUT_S`` the
connection goes to ``on_unreachable`` (the built-in decoy) with every byte
received so far, and the failure is logged: a prober then sees a web server,
not a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from l2bridge.transport.constants import FALLBACK_CONNECT_TIMEOUT_S

log = logging.getLogger(__name__)
# Strangers decide how often the fallback is tried: its failures are logged at most this
# often at WARNING (the rest at DEBUG), so a prober cannot flood the log.
_WARN_EVERY_S = 60.0
_last_warning = {"at": -_WARN_EVERY_S}


def _warn_unreachable(host: str, port: int, exc: BaseException) -> None:
    now = time.monotonic()
    level = logging.WARNING if now - _last_warning["at"] >= _WARN_EVERY_S else logging.DEBUG
    if level == logging.WARNING:
        _last_warning["at"] = now
    reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
    log.log(level, "fallback %s:%d unreachable (%s); the decoy answers", host, port, reason)


class _Upstream(asyncio.Protocol):
    def __init__(self, splice: Splice) -> None:
        self._splice = splice

    def data_received(self, data: bytes) -> None:
        self._splice.upstream_data(data)

    def eof_received(self) -> bool:
        return self._splice.upstream_eof()

    def pause_writing(self) -> None:
        self._splice.client.pause_reading()

    def resume_writing(self) -> None:
        self._splice.client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._splice.upstream_lost()


class Splice:
    """One client connection spliced to the fallback web server."""

    def __init__(
        self,
        client: asyncio.Transport,
        target: tuple[str, int],
        first_bytes: bytes,
        on_unreachable: Callable[[bytes], None],
        close_client: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        # Closes the client once what was written to it is out (see server.close_when_flushed).
        self._close_client = close_client or client.close
        self._target = target
        self._pending = bytearray(first_bytes)  # client bytes not yet sent upstream
        self._on_unreachable = on_unreachable
        self._upstream: asyncio.Transport | None = None
        self._client_eof = False
        self._upstream_eof = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.client.pause_reading()  # until the web server answers the connect
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._target
        try:
            async with asyncio.timeout(FALLBACK_CONNECT_TIMEOUT_S):
                transport, _ = await loop.create_connection(lambda: _Upstream(self), host, port)
        except (OSError, TimeoutError) as exc:
            if not self._closed:
                _warn_unreachable(host, port, exc)
                self._closed = True
                self.client.resume_reading()
                self._on_unreachable(bytes(self._pending))
            return
        if self._closed:
            transport.close()
            return
        self._upstream = transport
        if self._pending:
            transport.write(bytes(self._pending))
            self._pending.clear()
        if self._client_eof:
            self._send_eof(transport)
        else:
            self.client.resume_reading()

    # --- client side (called by the exit's connection) ---------------------------

    def client_data(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending += data  # arrived while connecting (reading is paused)
        else:
            self._upstream.write(data)

    def client_eof(self) -> None:
        self._client_eof = True
        if self._upstream is not None:
            self._send_eof(self._upstream)

    def client_pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def client_resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def client_lost(self) -> None:
        self._closed = True
        if self._upstream is not None:
            self._upstream.close()
        elif self._task is not None:
            self._task.cancel()

    # --- upstream side -------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if not self.client.is_closing():
            self.client.write(data)

    def upstream_eof(self) -> bool:
        self._upstream_eof = True
        if self._client_eof or not self.client.can_write_eof():
            self._close_client()
            return False
        self.client.write_eof()
        return True  # keep sending the client's bytes upstream

    def upstream_lost(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_client()

    def _send_eof(self, upstream: asyncio.Transport) -> None:
        if self._upstream_eof:
            upstream.close()
            self._close_client()
        elif upstream.can_write_eof():
            upstream.write_eof()
