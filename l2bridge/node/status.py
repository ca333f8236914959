"""The status listener of a running client or exit: status, metrics, health, management.

    GET  /health              per-component health (l2bridge.node.health); 503 if failed
    GET  /metrics             Prometheus text
    GET  /status              the Metrics snapshot + last error             (see AUTH)
    GET  /peers               the exit's devices (ManagementApi.peers)      (admin)
    POST /peers/NAME/disconnect   end NAME's tunnels                        (admin)
    POST /revocations         body: a signed revocation list; installed, written, and
                              the revoked devices disconnected              (admin)
    POST /reload              re-read what can change without a restart     (admin)

AUTH: "admin" paths need ``Authorization: Bearer <token>`` (the token in
``status.admin_token_file``, compared in constant time). On a loopback address without a
token file they are open to local users; on any other address a token file is required
(``StatusServer`` refuses to start without one) and ``/status`` needs it too. ``/health``
and ``/metrics`` are always open (monitoring).

One asyncio loop in one daemon thread serves every connection (no thread per client):
the accept backlog is ``STATUS_BACKLOG``, at most ``MAX_CONNECTIONS`` are open at once
(a new one past that closes the one that has waited longest without sending a request, so
idle connections cannot lock a scrape out), each has ``REQUEST_TIMEOUT_S`` to send its
request, a request head is bounded, one request per connection. A client that hangs up
mid-answer is ended quietly. Management calls run on the node's own loop
(``ManagementApi`` coroutines).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from l2bridge.errors import L2BridgeError
from l2bridge.identity.keys import read_private_file
from l2bridge.node.config import ConfigError, naming
from l2bridge.node.health import Component, verdict
from l2bridge.node.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_BACKLOG = 128
MAX_CONNECTIONS = 256
REQUEST_TIMEOUT_S = 5.0
MANAGEMENT_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 8192
MAX_BODY_BYTES = 1 << 20
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


class ManagementError(L2BridgeError):
    """A management request cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ManagementApi(Protocol):
    """What an exit offers the management paths; coroutines run on the node's loop."""

    async def peers(self) -> list[dict[str, Any]]: ...

    async def disconnect(self, name: str) -> int: ...

    async def install_revocations(self, armored: str) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...


def read_token(path: Path) -> bytes:
    """The management credential from its file (refused when group/others may read it)."""
    with naming("status.admin_token_file"):
        token = read_private_file(path).strip().encode("ascii")
        if len(token) < 32:
            raise ConfigError(f"{path}: shorter than 32 characters")
    return token


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LastError(logging.Handler):
    """Keeps the newest WARNING-or-worse log line in ``metrics.info['last_error']``."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.WARNING)
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
            text = f"{when}Z {record.levelname} {record.name}: {record.getMessage()}"
            self._metrics.set_info(last_error=text[:500])


class StatusServer:
    """Bind at construction (one-line ConfigError naming status.listen on failure);
    ``start()`` serves; ``stop()`` ends. ``port`` 0 picks a free port."""

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: bytes | None = None,
        api: ManagementApi | None = None,
        api_loop: asyncio.AbstractEventLoop | None = None,
        health: Callable[[], list[Component]] | None = None,
        setting: str = "status.listen",
        metrics_only: bool = False,
    ) -> None:
        self.metrics = metrics
        self.local = is_loopback(host)
        self.metrics_only = metrics_only  # status.metrics_listen: /metrics and /health only
        if not self.local and token is None and not metrics_only:
            raise ConfigError(
                f"{setting}: {host} is not a loopback address, so status.admin_token_file "
                "is required (the management API must not be open to the network)"
            )
        if token is None and api is not None:
            log.warning(
                "status.admin_token_file is not set: any local user can use the "
                "management API on %s:%d (shadowmesh init sets one)", host, port,
            )  # fmt: skip
        self._token = token
        self._api = api
        self._api_loop = api_loop
        self._health = health
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with naming(f"{setting} ({host}:{port})"):
            self._sock = socket.create_server((host, port), family=family, backlog=STATUS_BACKLOG)
        self._sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._open = 0
        self._waiting: dict[int, asyncio.StreamWriter] = {}  # oldest first
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="status", daemon=True)
        self._last_error = LastError(metrics)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> StatusServer:
        logging.getLogger().addHandler(self._last_error)
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        logging.getLogger().removeHandler(self._last_error)
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=5)
        elif not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()  # never started
        self._sock.close()

    # --- the server's own loop ------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=MAX_HEAD_BYTES)
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            # Full: the connection waiting longest for its request makes room, so idle
            # connections (a prober, a stuck client) cannot lock a scrape out.
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                writer.transport.abort()  # every slot is answering a request
                return
            self._waiting.pop(oldest).transport.abort()
        self._open += 1
        key = id(writer)
        self._waiting[key] = writer
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S + MANAGEMENT_TIMEOUT_S):
                code, ctype, body = await self._answer(reader, key)
                head = (
                    f"HTTP/1.1 {code} {_REASONS.get(code, 'OK')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode("ascii") + body)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client hung up, was too slow or sent too much: nothing to say
        except ValueError:
            pass  # a line longer than the limit
        finally:
            self._open -= 1
            self._waiting.pop(key, None)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, key: int) -> tuple[int, str, bytes]:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            self._waiting.pop(key, None)  # a request came: no longer evictable
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                return _json(400, {"error": "bad request line"})
            method, target = parts[0], parts[1]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length", "0")
            if not length.isdigit():
                return _json(400, {"error": "bad Content-Length"})
            if int(length) > MAX_BODY_BYTES:
                return _json(413, {"error": "body too large"})
            refusal = _browser_refusal(headers)
            if refusal is not None:
                return _json(403, {"error": refusal})
            path = urllib.parse.urlsplit(target).path
            if self._needs_admin(path) and not self._authorised(
                headers.get("authorization", ""), admin=True
            ):
                return _json(401, {"error": "admin credential required"})  # body never read
            body = await reader.readexactly(int(length)) if int(length) else b""
        return await self._route(method, path, headers.get("authorization", ""), body)

    def _needs_admin(self, path: str) -> bool:
        if self.metrics_only:
            return False
        return path in ("/peers", "/revocations", "/reload") or path.startswith("/peers/")

    def _authorised(self, header: str, *, admin: bool) -> bool:
        if self._token is None:
            return self.local  # loopback without a token file: local users only
        if not admin and self.local:
            return True
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("latin-1", "replace"), self._token
        )

    async def _route(
        self, method: str, path: str, auth: str, body: bytes
    ) -> tuple[int, str, bytes]:
        if path == "/health":
            code, doc = verdict(self._health() if self._health else [])
            return _json(code, doc)
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics.prometheus_text()
        if self.metrics_only:
            return _json(404, {"error": "not found"})
        if path == "/status":
            if not self._authorised(auth, admin=False):
                return _json(401, {"error": "admin credential required"})
            return _json(200, self.metrics.snapshot())
        if not self._needs_admin(path):
            return _json(404, {"error": "not found"})
        if not self._authorised(auth, admin=True):
            return _json(401, {"error": "admin credential required"})
        api = self._api
        if api is None:
            return _json(404, {"error": "no management API on this node"})
        want = "GET" if path == "/peers" else "POST"
        if method != want:
            return _json(405, {"error": f"use {want}"})
        try:
            if path == "/peers":
                return _json(200, {"peers": await self._call(api.peers())})
            if path == "/revocations":
                text = body.decode("ascii", "replace")
                return _json(200, await self._call(api.install_revocations(text)))
            if path == "/reload":
                return _json(200, await self._call(api.reload()))
            name, _, action = path.removeprefix("/peers/").partition("/")
            name = urllib.parse.unquote(name)
            if action != "disconnect" or not name:
                return _json(404, {"error": "not found"})
            count = await self._call(api.disconnect(name))
            return _json(200 if count else 404, {"device": name, "disconnected": count})
        except ManagementError as exc:
            return _json(exc.status, {"error": str(exc)})
        except TimeoutError:
            return _json(503, {"error": "the node did not answer in time"})
        except Exception as exc:  # a bug in a handler: logged here, not sent
            log.error("management request %s %s failed: %s: %s", method, path,
                      type(exc).__name__, exc)  # fmt: skip
            return _json(500, {"error": "internal error (see the node's log)"})

    async def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        loop = self._api_loop
        if loop is None:
            return await asyncio.wait_for(coro, MANAGEMENT_TIMEOUT_S)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), MANAGEMENT_TIMEOUT_S)
        finally:
            future.cancel()


def _browser_refusal(headers: dict[str, str]) -> str | None:
    """Requests a web page could make from the operator's browser are refused: anything
    carrying an Origin (cross-site POSTs), and a Host that is a name other than localhost
    (DNS rebinding). The CLI sends neither."""
    if "origin" in headers:
        return "requests from web pages are refused"
    host = headers.get("host")
    if host is None:
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return "use the listener's address, not a name"
    return None


def _json(code: int, doc: object) -> tuple[int, str, bytes]:
    return code, "application/json", json.dumps(doc, sort_keys=True).encode() + b"\n"
