"""nginx's gzip filter as Debian's stock nginx.conf has it (``gzip on``, every other gzip
setting at its default), for the built-in decoy (sans-I/O).

When it applies: HTTP/1.1 or later, ``Accept-Encoding`` lists ``gzip`` with a non-zero
q-value (nginx's own parser), no ``Via`` header (``gzip_proxied off``), a ``text/html``
answer (``gzip_types``) of at least 20 bytes (``gzip_min_length``) with status 200, 403 or
404. Then the answer loses Content-Length and Accept-Ranges (so Range is ignored), its ETag
turns weak, ``Transfer-Encoding: chunked`` and ``Content-Encoding: gzip`` are added, and the
body is compressed as nginx does it (level 1; the window and memory level shrunk to the
body's size by nginx's rule; a 10-byte header with OS "unix" and no mtime) and cut into
chunks where nginx's buffers cut it.

The compressed bytes and the chunk sizes are zlib's doing, so they equal nginx's when both
use the same zlib (the tests compare them with Debian's nginx on Debian's zlib).
"""

from __future__ import annotations

import re
import struct
import zlib

GZIP_TYPES = frozenset({"text/html"})
GZIP_MIN_LENGTH = 20
GZIP_STATUSES = frozenset({200, 403, 404})
_LEVEL = 1  # gzip_comp_level
_WBITS = 15  # gzip_window 32k
_MEMLEVEL = 8  # from gzip_buffers' default
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03"  # no name, no mtime; fastest; unix
_INPUT_BUFFER = 32 * 1024  # output_buffers 2 32k: how nginx reads the file
_OUTPUT_BUFFER = 4 * 1024  # gzip_buffers 32 4k
_QVALUE = re.compile(r"([01])(?:\.(\d{0,3}))?")


def accepts_gzip(value: str | None) -> bool:
    """nginx's ngx_http_gzip_accept_encoding on an Accept-Encoding value."""
    if not value:
        return False
    lower = value.lower()
    start = 0
    while True:
        at = lower.find("gzip", start)
        if at < 0:
            return False
        if at == 0 or lower[at - 1] in ", ":
            break
        start = at + 4
    rest = lower[at + 4 :]
    i = 0
    while i < len(rest):
        ch = rest[i]
        i += 1
        if ch == ",":
            return True
        if ch == ";":
            return _quality(rest[i:])
        if ch != " ":
            return False
    return True


def _quality(rest: str) -> bool:
    """After "gzip;": a q-value of 0 (or a malformed one) refuses gzip."""
    text = rest.lstrip(" ")
    if not text.startswith("q"):
        return not text  # "gzip;" alone is accepted
    text = text[1:]
    if not text.startswith("="):
        return False
    match = _QVALUE.match(text[1:])
    if match is None:
        return False
    whole, fraction = match.group(1), (match.group(2) or "")
    return int(whole) * 1000 + int((fraction + "000")[:3]) > 0


def gzip_applies(version: str, headers: dict[str, str], status: int, content_type: str) -> bool:
    """Would nginx compress this answer? ``headers``: the request's, lower-case names."""
    return (
        version == "1.1"
        and status in GZIP_STATUSES
        and content_type in GZIP_TYPES
        and "via" not in headers
        and accepts_gzip(headers.get("accept-encoding"))
    )


def gzip_chunked(body: bytes) -> bytes:
    """The chunked gzip body nginx sends for ``body`` (whose length it knows).

    nginx reads the file in 32 KiB buffers and deflates each into 4 KiB output buffers
    (the 10-byte gzip header starts the first); after each input buffer the full output
    buffers go out as one chunk, and the rest, with the trailer, is the last chunk.
    """
    wbits, memlevel = _WBITS, _MEMLEVEL
    # nginx: "the actual zlib window size is smaller by 262 bytes".
    while len(body) < (1 << (wbits - 1)) - 262:
        wbits -= 1
        memlevel -= 1
    memlevel = max(memlevel, 1)
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -wbits, memlevel)
    pending = bytearray(_HEADER)
    chunks: list[bytes] = []
    for start in range(0, len(body), _INPUT_BUFFER):
        pending += compressor.compress(body[start : start + _INPUT_BUFFER])
        if start + _INPUT_BUFFER >= len(body):
            break
        full = len(pending) - len(pending) % _OUTPUT_BUFFER
        if full:
            chunks.append(bytes(pending[:full]))
            del pending[:full]
    pending += compressor.flush()
    pending += struct.pack("<II", zlib.crc32(body), len(body) & 0xFFFFFFFF)
    chunks.append(bytes(pending))
    out = bytearray()
    for chunk in chunks:
        out += f"{len(chunk):x}\r\n".encode("ascii") + chunk + b"\r\n"
    return bytes(out + b"0\r\n\r\n")
