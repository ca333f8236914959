"""The client's WebSocket through curl_cffi, which makes Chrome's TLS ClientHello.

Python's ``ssl`` cannot make a ClientHello like a browser's (no GREASE, no Chrome
extensions, OpenSSL's own cipher and signature lists), so an observer reading its JA4 sees
a Python client (bench/traffic/README.md). curl_cffi (libcurl with BoringSSL, built to
impersonate browsers) makes Chrome's; ``endpoints.tls_impersonate`` picks its target.

``open_impersonated`` opens the tunnel WebSocket with the connection token as the one
offered subprotocol and returns a ``CurlTunnelSocket``, which gives the link the same
interface as the websockets-based transport (l2bridge.node.link.TunnelSocket): messages
wait in a small queue for ``next_message`` (the handshake) until ``deliver_to`` sets a sink;
``write_binary`` queues a message for one writer task, in order, and ``write_paused`` says
when more than ``write_limit`` bytes wait. Errors become ``UpgradeRefused`` (the server
answered as a web server), ``TransportClosed`` or ``TimeoutError``; curl's own error text
never leaves this module (it can name the server's certificate problems in detail for the
log, not for the peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from l2bridge.transport.constants import EARLY_MESSAGES, OPEN_TIMEOUT_S, WRITE_LIMIT_BYTES
from l2bridge.transport.errors import TransportClosed, TransportError, UpgradeRefused

log = logging.getLogger(__name__)

Message = bytes | bytearray | memoryview
Sink = Callable[[Message | None], None]
TARGETS = ("chrome",)  # curl_cffi's newest Chrome; what endpoints.tls_impersonate accepts
CLOSE_TIMEOUT_S = 3.0
CURLE_HTTP_RETURNED_ERROR = 22  # curl's code for an answer that is not the upgrade


class CurlTunnelSocket:
    """A curl_cffi AsyncWebSocket behind the link's TunnelSocket interface."""

    def __init__(
        self, ws: Any, session: Any, binary: int, write_limit: int = WRITE_LIMIT_BYTES
    ) -> None:
        """``binary``: curl's flag for a binary message."""
        self._ws = ws
        self._binary = binary
        self.write_paused = False
        self._session = session  # curl's session lives as long as its WebSocket
        self._write_limit = write_limit
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._out_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._early: deque[Message | None] = deque()
        self._early_ready = asyncio.Event()
        self._sink: Sink | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._closed = asyncio.Event()
        self._close_code: int | None = None
        self._tasks = [
            asyncio.create_task(self._reader(), name="curl-ws-reader"),
            asyncio.create_task(self._writer(), name="curl-ws-writer"),
        ]

    # --- the link's interface ------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    @property
    def close_code(self) -> int | None:
        return self._close_code

    remote_address = None

    def write_binary(self, data: Message) -> None:
        if self._closed.is_set():
            raise TransportClosed("closed")
        self._out.append(bytes(data))
        self._out_bytes += len(data)
        if self._out_bytes > self._write_limit:
            self.write_paused = True
            self._drained.clear()
        self._out_ready.set()

    async def drain(self) -> None:
        while self.write_paused and not self._closed.is_set():
            waiter = asyncio.ensure_future(self._drained.wait())
            closed = asyncio.ensure_future(self._closed.wait())
            await asyncio.wait([waiter, closed], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            closed.cancel()

    async def next_message(self) -> Message:
        while not self._early:
            if self._closed.is_set():
                raise TransportClosed("closed")
            self._early_ready.clear()
            waiter = asyncio.ensure_future(self._early_ready.wait())
            closed = asyncio.ensure_future(self._closed.wait())
            await asyncio.wait([waiter, closed], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            closed.cancel()
        message = self._early.popleft()
        if len(self._early) < EARLY_MESSAGES // 2:
            self._reading.set()
        if message is None:
            raise TransportClosed("unexpected text message")
        return message

    def deliver_to(self, sink: Sink) -> None:
        early, self._early = self._early, deque()
        self._sink = sink
        while early:
            sink(early.popleft())
        self._reading.set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self, code: int = 1000) -> None:
        if not self._closed.is_set():
            # What is queued goes first, as websockets' close does.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    while self._out:
                        self._out_ready.set()
                        await asyncio.sleep(0.01)
            with contextlib.suppress(Exception):  # curl's errors on an already broken link
                await self._ws.close(code, timeout=CLOSE_TIMEOUT_S)
            self._end(code)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._session.close()

    def abort(self) -> None:
        self._end(1006)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            self._ws.curl.close()

    # --- tasks ---------------------------------------------------------------------

    def _end(self, code: int | None) -> None:
        if not self._closed.is_set():
            self._close_code = code if self._close_code is None else self._close_code
            self._closed.set()
            self._drained.set()
            self._early_ready.set()

    async def _reader(self) -> None:
        try:
            while True:
                await self._reading.wait()
                data, flags = await self._ws.recv()
                message: Message | None = data if flags & self._binary else None
                if self._sink is not None:
                    self._sink(message)
                else:
                    self._early.append(message)
                    self._early_ready.set()
                    if len(self._early) >= EARLY_MESSAGES:
                        self._reading.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("impersonated WebSocket read ended: %s", type(exc).__name__)
            # The link's watcher (wait_closed) ends the tunnel.
            self._end(getattr(self._ws, "close_code", None) or 1006)

    async def _writer(self) -> None:
        try:
            while True:
                await self._out_ready.wait()
                while self._out:
                    data = self._out.popleft()
                    await self._ws.send(data, self._binary)
                    self._out_bytes -= len(data)
                    if self.write_paused and self._out_bytes <= self._write_limit:
                        self.write_paused = False
                        self._drained.set()
                self._out_ready.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("impersonated WebSocket write ended: %s", type(exc).__name__)
            self._end(1006)


_SHARE: Any = None


def _tls_sessions() -> Any:
    """curl's TLS session cache, shared by every connection of this process: a connection
    to a server this process has used resumes the session, as Chrome does (curl offers a
    TLS 1.3 ticket once only). DNS answers are shared too; connections never are."""
    global _SHARE  # noqa: PLW0603  # one per process, made on first use (optional import)
    if _SHARE is None:
        from curl_cffi.curl import CurlShare  # noqa: PLC0415

        _SHARE = CurlShare(connect=False, dns=True, ssl_session=True)
    return _SHARE


async def open_impersonated(
    url: str,
    token: str,
    *,
    target: str,
    origin: str,
    ca_file: Path | None = None,
    open_timeout: float = OPEN_TIMEOUT_S,
) -> CurlTunnelSocket:
    """Open the tunnel WebSocket to ``url`` (wss://) with curl_cffi impersonating ``target``."""
    if target not in TARGETS:
        raise TransportError(f"cannot impersonate {target!r}; one of {', '.join(TARGETS)}")
    try:
        # An optional dependency, loaded only when asked for (like liboqs).
        from curl_cffi.const import CurlWsFlag  # noqa: PLC0415
        from curl_cffi.curl import CurlError  # noqa: PLC0415
        from curl_cffi.requests import AsyncSession  # noqa: PLC0415
        from curl_cffi.requests.exceptions import RequestException  # noqa: PLC0415
    except ImportError:
        raise TransportError(
            "endpoints.tls_impersonate needs curl_cffi (pip install 'shadowmesh[impersonate]')"
        ) from None
    session: Any = AsyncSession(curl_share=_tls_sessions())
    try:
        async with asyncio.timeout(open_timeout):
            ws = await session.ws_connect(
                url,
                impersonate=target,
                verify=str(ca_file) if ca_file is not None else True,
                headers={"Sec-WebSocket-Protocol": token, "Origin": origin},
                timeout=open_timeout,
                autoclose=False,
            )
    except (RequestException, CurlError) as exc:
        await session.close()
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None and getattr(exc, "code", None) == CURLE_HTTP_RETURNED_ERROR:
            # "Refused WebSocket upgrade: 404": the server answered, as a web server.
            found = re.search(r"upgrade: (\d{3})", str(exc))
            status = found.group(1) if found else "error"
        if status is not None:
            raise UpgradeRefused(f"server answered HTTP {status}") from None
        raise TransportClosed(f"connection failed: {type(exc).__name__}") from None
    except BaseException:
        await session.close()
        raise
    return CurlTunnelSocket(ws, session, int(CurlWsFlag.BINARY))
