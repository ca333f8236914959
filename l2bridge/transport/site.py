"""The decoy web site: what a stock Debian nginx 1.22 (``server_tokens off``, the
Debian default site ``try_files $uri $uri/ =404``) answers to one request (sans-I/O).

``DecoySite.answer(request)`` returns the ``Reply`` nginx would send for one
parsed request head: the status, the header fields in nginx's order (the
connection adds ``Connection``), and the body. Copied from nginx: ETag
(``"<mtime hex>-<size hex>"``), Last-Modified, Accept-Ranges, single and
multipart Range answers (206/416), If-None-Match / If-Modified-Since (304),
If-Match / If-Unmodified-Since (412), directory redirects (301) and forbidden
directory listings (403), 404/405 and the error pages byte for byte, including
the padding nginx appends to error pages for MSIE and Chrome.

Files are read once when the site is loaded (bounded count and size), so a
request never touches the file system.
"""

from __future__ import annotations

import email.utils
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from l2bridge.transport.compression import GZIP_MIN_LENGTH, gzip_applies, gzip_chunked
from l2bridge.transport.constants import (
    DEFAULT_SERVER_HEADER,
    MAX_DECOY_FILE_BYTES,
    MAX_DECOY_FILES,
)
from l2bridge.transport.errors import DecoyError
from l2bridge.transport.mime import content_type

REASONS = {
    200: "OK",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    412: "Precondition Failed",
    414: "Request-URI Too Large",
    416: "Requested Range Not Satisfiable",
    494: "Bad Request",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
# nginx answers these and closes (ngx_http_special_response_handler).
CLOSING_STATUSES = frozenset({400, 414, 494, 501, 505})
_MSIE_PADDING = b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6

Fields = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer. ``before``/``after``: header fields either side of Connection."""

    status: int
    before: Fields
    after: Fields
    body: bytes | memoryview
    head_only: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """What the site needs of a request (the connection has validated the head)."""

    method: str
    path: str  # decoded, normalised, without the query
    args: str  # the query string, "" when none
    version: str
    headers: dict[str, str]  # lower-case name -> first value
    host: str  # Host without port, lower-cased ("" when none)
    local_host: str  # the address the connection reached
    local_port: int
    secure: bool


@dataclass(frozen=True, slots=True)
class DecoyFile:
    body: bytes
    content_type: str
    mtime: int  # seconds since the epoch

    @property
    def etag(self) -> str:
        return f'"{self.mtime:x}-{len(self.body):x}"'

    @property
    def last_modified(self) -> str:
        return http_date(self.mtime)


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


def http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def error_body(status: int, server: str) -> bytes:
    """nginx's built-in error page for ``status`` (494: the header-too-large page)."""
    if status == 494:
        text = (
            "<html>\r\n<head><title>400 Request Header Or Cookie Too Large</title></head>\r\n"
            "<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
            "<center>Request Header Or Cookie Too Large</center>\r\n"
        )
    else:
        title = f"{status} {REASONS[status]}"
        text = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n"
        )
    text += f"<hr><center>{server}</center>\r\n</body>\r\n</html>\r\n"
    return text.encode("latin-1", "replace")


def _pads_error_pages(user_agent: str | None) -> bool:
    """nginx's msie_padding: MSIE and Chrome (not Opera, not Gecko) get padded error pages."""
    if not user_agent:
        return False
    msie = user_agent.find("MSIE ")
    if msie >= 0 and msie + 7 < len(user_agent) and "Opera" not in user_agent:
        return True
    if "Opera" in user_agent or "Gecko/" in user_agent:
        return False
    return "Chrome/" in user_agent


class DecoySite:
    """Answers requests like nginx serving a static directory."""

    def __init__(
        self,
        files: dict[str, DecoyFile],
        *,
        server: str = DEFAULT_SERVER_HEADER,
        gzip: bool = True,
    ):
        self._files = dict(files)
        self._gzip = gzip  # Debian's stock nginx.conf says "gzip on"
        self._gzipped: dict[str, bytes] = {}  # url -> chunked gzip body, made on first use
        self._dirs = {"/"}
        for url in self._files:
            parts = url.split("/")[1:-1]
            for i in range(len(parts)):
                self._dirs.add("/" + "/".join(parts[: i + 1]) + "/")
        self._server = server
        # nginx numbers multipart boundaries with one counter per worker.
        self._boundaries: Iterator[int] = itertools.count(1)

    @property
    def server(self) -> str:
        return self._server

    @classmethod
    def builtin(
        cls,
        *,
        server: str = DEFAULT_SERVER_HEADER,
        mtime: float = 1_700_000_000.0,
        gzip: bool = True,
    ) -> DecoySite:
        page = DecoyFile(_BUILTIN_INDEX, "text/html", int(mtime))
        return cls({"/index.html": page}, server=server, gzip=gzip)

    @classmethod
    def from_directory(
        cls, root: Path, *, server: str = DEFAULT_SERVER_HEADER, gzip: bool = True
    ) -> DecoySite:
        """Load a static site. Raises DecoyError when it is missing or too big."""
        if not root.is_dir():
            raise DecoyError(f"decoy site directory {root} does not exist")
        files: dict[str, DecoyFile] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            if len(files) >= MAX_DECOY_FILES:
                raise DecoyError(f"decoy site has more than {MAX_DECOY_FILES} files")
            stat = path.stat()
            if stat.st_size > MAX_DECOY_FILE_BYTES:
                raise DecoyError(f"decoy file {path} is larger than {MAX_DECOY_FILE_BYTES} bytes")
            url = "/" + path.relative_to(root).as_posix()
            files[url] = DecoyFile(path.read_bytes(), content_type(path.name), int(stat.st_mtime))
        site = cls(files, server=server, gzip=gzip)
        # Empty directories exist too (nginx answers 403 for them, not 404).
        for path in root.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                site._dirs.add("/" + path.relative_to(root).as_posix() + "/")
        return site

    # --- answers -----------------------------------------------------------------

    def error(self, status: int, request_headers: dict[str, str] | None = None) -> Reply:
        """nginx's error page for ``status`` (494: request header too large)."""
        body = error_body(status, self._server)
        if request_headers is not None and _pads_error_pages(request_headers.get("user-agent")):
            body += _MSIE_PADDING
        return Reply(
            400 if status == 494 else status,
            (("Content-Type", "text/html"), ("Content-Length", str(len(body)))),
            (),
            body,
        )

    def answer(self, request: Request) -> Reply:
        """The reply to a request that reached the content phase."""
        method, path = request.method, request.path
        static_method = method in ("GET", "HEAD", "POST")
        if path.endswith("/"):
            if path not in self._dirs:
                return self._error(404, request)
            page = self._files.get(path + "index.html")
            if not static_method:
                return self._error(405, request)
            if page is None:
                return self._error(403, request)  # no autoindex
            if method == "POST":
                return self._error(405, request)
            return self._file(page, request)
        page = self._files.get(path)
        if page is None and path + "/" not in self._dirs:
            return self._error(404, request)
        if not static_method:
            return self._error(405, request)
        if page is None:
            return self._redirect(request)
        if method == "POST":
            return self._error(405, request)
        return self._file(page, request)

    def _error(self, status: int, request: Request) -> Reply:
        reply = self.error(status, request.headers)
        if self._compresses(request, status, "text/html", len(reply.body)):
            body = gzip_chunked(bytes(reply.body))
            reply = _gzipped(status, reply.before[:1], (), body, request.method == "HEAD")
        return _head_only(reply) if request.method == "HEAD" else reply

    def _compresses(self, request: Request, status: int, ctype: str, length: int) -> bool:
        return (
            self._gzip
            and length >= GZIP_MIN_LENGTH
            and gzip_applies(request.version, request.headers, status, ctype)
        )

    def _redirect(self, request: Request) -> Reply:
        host = request.host or request.local_host
        scheme = "https" if request.secure else "http"
        default_port = 443 if request.secure else 80
        port = "" if request.local_port == default_port else f":{request.local_port}"
        location = f"{scheme}://{host}{port}{request.path}/"
        if request.args:
            location += "?" + request.args
        reply = self.error(301, request.headers)
        reply = Reply(301, (*reply.before, ("Location", location)), (), reply.body)
        return _head_only(reply) if request.method == "HEAD" else reply

    def _file(self, page: DecoyFile, request: Request) -> Reply:
        headers = request.headers
        validators = (("Last-Modified", page.last_modified),)
        tagged = (("ETag", page.etag),)
        precondition = _preconditions(page, headers)
        if precondition == 412:
            return self._error(412, request)
        if precondition == 304:
            return Reply(304, validators, tagged, b"", head_only=True)
        head_only = request.method == "HEAD"
        if self._compresses(request, 200, page.content_type, len(page.body)):
            # gzip runs before nginx's range filter and hides the length: no ranges.
            body = self._gzipped.get(request.path)
            if body is None:
                body = self._gzipped.setdefault(request.path, gzip_chunked(page.body))
            return _gzipped(
                200,
                (("Content-Type", page.content_type), *validators),
                (("ETag", "W/" + page.etag),),
                body,
                head_only,
            )
        ranged = _ranges(headers, page) if request.version != "0.9" else None
        if ranged == "unsatisfiable":
            reply = self.error(416, headers)
            return Reply(
                416,
                reply.before,
                (("Content-Range", f"bytes */{len(page.body)}"),),
                reply.body,
                head_only=head_only,
            )
        if isinstance(ranged, list) and len(ranged) == 1:
            start, end = ranged[0]
            return Reply(
                206,
                (
                    ("Content-Type", page.content_type),
                    ("Content-Length", str(end - start)),
                    *validators,
                ),
                (*tagged, ("Content-Range", f"bytes {start}-{end - 1}/{len(page.body)}")),
                memoryview(page.body)[start:end],
                head_only=head_only,
            )
        if isinstance(ranged, list):
            boundary = f"{next(self._boundaries):020d}"
            body = self._multipart(page, ranged, boundary)
            ctype = f"multipart/byteranges; boundary={boundary}"
            return Reply(
                206,
                (("Content-Type", ctype), ("Content-Length", str(len(body))), *validators),
                tagged,
                body,
                head_only=head_only,
            )
        return Reply(
            200,
            (
                ("Content-Type", page.content_type),
                ("Content-Length", str(len(page.body))),
                *validators,
            ),
            (*tagged, ("Accept-Ranges", "bytes")),
            page.body,
            head_only=head_only,
        )

    @staticmethod
    def _multipart(page: DecoyFile, ranges: list[tuple[int, int]], boundary: str) -> bytes:
        parts = []
        size = len(page.body)
        for start, end in ranges:
            parts.append(
                f"\r\n--{boundary}\r\nContent-Type: {page.content_type}\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n".encode("latin-1")
            )
            parts.append(page.body[start:end])
        parts.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
        return b"".join(parts)


def _gzipped(status: int, before: Fields, after: Fields, body: bytes, head_only: bool) -> Reply:
    """A compressed answer's fields in nginx's order (no Content-Length; chunked unless
    HEAD, where nginx sends neither length nor Transfer-Encoding)."""
    coding = () if head_only else (("Transfer-Encoding", "chunked"),)
    return Reply(
        status,
        (*before, *coding),
        (*after, ("Content-Encoding", "gzip")),
        body,
        head_only=head_only,
    )


def _head_only(reply: Reply) -> Reply:
    return Reply(reply.status, reply.before, reply.after, reply.body, head_only=True)


def _parse_date(value: str) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp())


def _etag_listed(value: str, etag: str, *, weak: bool) -> bool:
    """nginx's ngx_http_test_if_match: "*" or one of the listed tags."""
    if value == "*":
        return True
    for item in value.split(","):
        tag = item.strip(" ")
        if weak and tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _preconditions(page: DecoyFile, headers: dict[str, str]) -> int | None:
    """412, 304 or None, in the order of nginx's not_modified filter."""
    unmodified = headers.get("if-unmodified-since")
    if unmodified is not None:
        when = _parse_date(unmodified)
        if when is None or when < page.mtime:
            return 412
    if_match = headers.get("if-match")
    if if_match is not None and not _etag_listed(if_match, page.etag, weak=False):
        return 412
    modified_since = headers.get("if-modified-since")
    none_match = headers.get("if-none-match")
    if modified_since is None and none_match is None:
        return None
    # "if_modified_since exact": only the very same date counts as unmodified.
    if modified_since is not None and _parse_date(modified_since) != page.mtime:
        return None
    if none_match is not None and not _etag_listed(none_match, page.etag, weak=True):
        return None
    return 304


def _ranges(headers: dict[str, str], page: DecoyFile) -> list[tuple[int, int]] | str | None:
    """nginx's ngx_http_range_parse: ranges, "unsatisfiable", or None (send it all)."""
    value = headers.get("range")
    if value is None or not value.lower().startswith("bytes="):
        return None
    if_range = headers.get("if-range")
    if if_range is not None:
        if if_range.startswith('"'):
            if if_range != page.etag:
                return None
        elif _parse_date(if_range) != page.mtime:
            return None
    size = len(page.body)
    spec = value[6:]
    ranges: list[tuple[int, int]] = []
    total = 0
    for item in spec.split(","):
        first, dash, last = item.strip(" ").partition("-")
        first, last = first.strip(" "), last.strip(" ")
        if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
            return "unsatisfiable"
        if not first:
            if not last:
                return "unsatisfiable"
            suffix = int(last)
            start, end = (size - suffix if suffix < size else 0), size
        else:
            start = int(first)
            end = size if not last else min(int(last) + 1, size)
        if start < end:
            ranges.append((start, end))
            total += end - start
        elif start == 0:
            return None
    if not ranges:
        return "unsatisfiable"
    if total > size:
        return None
    return ranges
