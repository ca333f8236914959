"""The local status endpoint of a running client or exit.

Serves, on a loopback address by default:
  ``GET /status``  the JSON snapshot of :meth:`Metrics.snapshot`
  ``GET /metrics`` Prometheus text
  ``GET /health``  ``ok``
Anything else is a 404. It runs in a daemon thread so it never blocks the data path.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from l2bridge.node.metrics import Metrics


class StatusServer:
    """Start with :meth:`start`, stop with :meth:`stop`; ``port`` 0 picks a free port."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        handler = _handler_for(metrics)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="status", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_for(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "shadowmesh-status"
        sys_version = ""

        def do_GET(self) -> None:
            if self.path == "/status":
                body = json.dumps(metrics.snapshot(), sort_keys=True).encode()
                self._send(200, "application/json", body)
            elif self.path == "/metrics":
                self._send(200, "text/plain; version=0.0.4", metrics.prometheus_text())
            elif self.path == "/health":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes every few seconds would drown the node's own log.
            return

    return Handler
