"""The decoy web site: what an ordinary web server answers (sans-I/O).

Every request that is not a valid, authorised WebSocket upgrade is answered
here, and the standalone decoy server answers *every* request here, so an
active prober sees the same bytes from both (except the Date header).

Behaviour, modelled on a stock nginx serving a static directory:
- GET/HEAD of a known path -> 200 with Server, Date, Content-Type,
  Content-Length, Last-Modified, Connection: close; HEAD without the body.
- unknown path -> 404; another method -> 405; HTTP/1.1 without Host -> 400;
  malformed request or bytes that are not HTTP -> 400; request line too long
  -> 414; header too large -> 400 "Request Header Or Cookie Too Large".
- every answer closes the connection after it is written (``Connection:
  close``); a request head not complete within the header timeout is closed
  without an answer.

Files are read once when the site is loaded (bounded count and size), so a
request never touches the file system.
"""

from __future__ import annotations

import email.utils
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from l2bridge.transport.constants import (
    DEFAULT_SERVER_HEADER,
    MAX_DECOY_FILE_BYTES,
    MAX_DECOY_FILES,
)
from l2bridge.transport.errors import DecoyError
from l2bridge.transport.headers import Problem, RequestHead

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
    414: "Request-URI Too Large",
}


def _error_body(status: int, title: str, server: str) -> bytes:
    text = f"{status} {title}"
    return (
        f"<html>\r\n<head><title>{text}</title></head>\r\n<body>\r\n"
        f"<center><h1>{text}</h1></center>\r\n<hr><center>{server}</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode("ascii", "replace")


_BUILTIN_INDEX = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""


@dataclass(frozen=True, slots=True)
class DecoyFile:
    body: bytes
    content_type: str
    last_modified: str  # HTTP date


class DecoySite:
    """Answers requests like a static web server. Immutable after construction."""

    def __init__(self, files: dict[str, DecoyFile], *, server: str = DEFAULT_SERVER_HEADER):
        self._files = dict(files)
        self._server = server

    @property
    def server(self) -> str:
        return self._server

    @classmethod
    def builtin(
        cls, *, server: str = DEFAULT_SERVER_HEADER, mtime: float = 1_700_000_000.0
    ) -> DecoySite:
        page = DecoyFile(_BUILTIN_INDEX, "text/html", _http_date(mtime))
        return cls({"/index.html": page}, server=server)

    @classmethod
    def from_directory(cls, root: Path, *, server: str = DEFAULT_SERVER_HEADER) -> DecoySite:
        """Load a static site. Raises DecoyError when it is missing or too big."""
        if not root.is_dir():
            raise DecoyError(f"decoy site directory {root} does not exist")
        files: dict[str, DecoyFile] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            if len(files) >= MAX_DECOY_FILES:
                raise DecoyError(f"decoy site has more than {MAX_DECOY_FILES} files")
            size = path.stat().st_size
            if size > MAX_DECOY_FILE_BYTES:
                raise DecoyError(f"decoy file {path} is larger than {MAX_DECOY_FILE_BYTES} bytes")
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            url = "/" + path.relative_to(root).as_posix()
            files[url] = DecoyFile(path.read_bytes(), ctype, _http_date(path.stat().st_mtime))
        return cls(files, server=server)

    def _lookup(self, path: str) -> DecoyFile | None:
        if path.endswith("/"):
            path += "index.html"
        return self._files.get(path)

    def respond(self, head: RequestHead, now: float) -> bytes:
        """The full response (head and body) to a well-formed request head."""
        if head.version == "1.1" and head.count("Host") != 1:
            return self.error(Problem.MALFORMED, now)
        if head.method not in ("GET", "HEAD"):
            return self._simple(405, now)
        page = self._lookup(head.path)
        if page is None:
            return self._simple(404, now, head_only=head.method == "HEAD")
        return self._response(
            200,
            now,
            page.content_type,
            page.body,
            last_modified=page.last_modified,
            head_only=head.method == "HEAD",
        )

    def error(self, problem: Problem, now: float) -> bytes:
        """The answer to bytes that are not a usable request."""
        if problem is Problem.LINE_TOO_LONG:
            return self._simple(414, now)
        if problem is Problem.HEAD_TOO_LARGE:
            body = _error_body(400, "Request Header Or Cookie Too Large", self._server)
            return self._response(400, now, "text/html", body)
        return self._simple(400, now)

    def _simple(self, status: int, now: float, *, head_only: bool = False) -> bytes:
        body = _error_body(status, _REASONS[status], self._server)
        return self._response(status, now, "text/html", body, head_only=head_only)

    def _response(
        self,
        status: int,
        now: float,
        content_type: str,
        body: bytes,
        *,
        last_modified: str | None = None,
        head_only: bool = False,
    ) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Server: {self._server}",
            f"Date: {_http_date(now)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        if last_modified is not None:
            lines.append(f"Last-Modified: {last_modified}")
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + body


def _http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)
