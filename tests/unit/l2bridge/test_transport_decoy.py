"""The built-in decoy as a state machine: bytes and time in, bytes and a closing
decision out (compared with a real nginx in tests/integration/l2bridge/test_transport_probes.py)."""

import email.utils
import gzip
import re

import pytest

from l2bridge.transport.constants import MAX_DECOY_FILE_BYTES
from l2bridge.transport.decoy import Closing, DecoyConnection, DecoySite, DecoyTimeouts
from l2bridge.transport.errors import DecoyError
from l2bridge.transport.site import DecoyFile

T0 = 1_800_000_000.0
PAGE = b"<p>" + b"a compressible sentence " * 4 + b"</p>\n"
TIMEOUTS = DecoyTimeouts(header=60, keepalive=65, send=60, lingering=5, lingering_time=30)


def site():
    files = {
        "/index.html": DecoyFile(b"<h1>hello</h1>\n", "text/html", 1_700_000_000),
        "/page.html": DecoyFile(PAGE, "text/html", 1_700_000_000),
        "/docs/a.css": DecoyFile(b"body{}", "text/css", 1_700_000_000),
        "/big.bin": DecoyFile(bytes(range(256)) * 1024, "application/octet-stream", 1_700_000_000),
    }
    return DecoySite(files)


def connect(now=T0, **kwargs):
    return DecoyConnection(site(), TIMEOUTS, now, local_port=8080, **kwargs)


def drain(conn, now=T0, limit=1 << 20):
    out = b""
    while chunk := conn.data_to_send(limit, now):
        out += chunk
    return out


def split(response):
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return lines[0], [tuple(line.split(": ", 1)) for line in lines[1:]], body


def test_keep_alive_get_like_nginx():
    conn = connect()
    conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", T0 + 1)
    status, headers, body = split(drain(conn, T0 + 1))
    assert status == "HTTP/1.1 200 OK"
    assert [k for k, _ in headers] == [
        "Server", "Date", "Content-Type", "Content-Length", "Last-Modified", "Connection",
        "ETag", "Accept-Ranges",
    ]  # fmt: skip
    values = dict(headers)
    assert values["Date"] == email.utils.formatdate(T0 + 1, usegmt=True)
    assert values["ETag"] == '"6553f100-f"'
    assert values["Connection"] == "keep-alive"
    assert body == b"<h1>hello</h1>\n"
    assert conn.closing is None
    # Idle: the keep-alive timer, then a silent close.
    assert conn.deadline() == T0 + 1 + 65
    conn.expire(T0 + 66)
    assert conn.closing is Closing.CLOSE
    assert drain(conn) == b""


def test_http10_closes_and_http09_gets_the_body_alone():
    conn = connect()
    conn.receive(b"GET /docs/a.css HTTP/1.0\r\n\r\n", T0)
    assert b"Connection: close" in drain(conn)
    assert conn.closing is Closing.CLOSE
    conn = connect()
    conn.receive(b"GET /docs/a.css\r\n", T0)
    assert drain(conn) == b"body{}"
    assert conn.closing is Closing.CLOSE


def test_pipelined_requests_answered_in_order_after_each_other():
    conn = connect()
    conn.receive(
        b"GET /docs/a.css HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /docs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        T0,
    )
    out = drain(conn)
    assert re.findall(rb"HTTP/1\.1 \d+ [A-Za-z ]+", out) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 301 Moved Permanently",
    ]
    assert b"Location: http://x:8080/docs/\r\n" in out
    assert conn.closing is Closing.CLOSE


def test_header_timeout_counts_from_the_connection_start():
    conn = connect()
    conn.receive(b"GET / HTTP/1.1\r\n", T0 + 59)
    assert conn.deadline() == T0 + 60
    conn.expire(T0 + 60)
    assert conn.closing is Closing.CLOSE
    assert drain(conn) == b""


def test_errors_close_and_bad_bytes_get_400():
    for data, status in (
        (b"\x16\x03\x01\x00", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/2.0\r\n", b"505 HTTP Version Not Supported"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"501 Not Implemented"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 9000, b"400 Bad Request"),
    ):
        conn = connect()
        conn.receive(data, T0)
        out = drain(conn)
        assert out.startswith(b"HTTP/1.1 " + status), data
        assert b"Connection: close" in out
        assert conn.closing in (Closing.CLOSE, Closing.LINGER)


def test_ranges_and_conditionals():
    conn = connect()
    conn.receive(b"GET /index.html HTTP/1.1\r\nHost: x\r\nRange: bytes=1-3\r\n\r\n", T0)
    status, headers, body = split(drain(conn))
    assert (status, dict(headers)["Content-Range"], body) == (
        "HTTP/1.1 206 Partial Content", "bytes 1-3/15", b"h1>",
    )  # fmt: skip
    conn.receive(b"GET /index.html HTTP/1.1\r\nHost: x\r\nRange: bytes=99-\r\n\r\n", T0)
    status, headers, _ = split(drain(conn))
    assert (status, dict(headers)["Content-Range"]) == (
        "HTTP/1.1 416 Requested Range Not Satisfiable", "bytes */15",
    )  # fmt: skip
    conn.receive(b'GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/"6553f100-f"\r\n\r\n', T0)
    status, headers, body = split(drain(conn))
    assert status == "HTTP/1.1 304 Not Modified" and body == b""
    assert [k for k, _ in headers] == ["Server", "Date", "Last-Modified", "Connection", "ETag"]
    assert conn.closing is None


def test_request_bodies_are_discarded_and_continue_sent():
    conn = connect()
    conn.receive(
        b"POST /nope HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nab",
        T0,
    )
    out = drain(conn)
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found")
    conn.receive(b"cde", T0)  # the rest of the body, then the next request
    conn.receive(b"GET /docs/a.css HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    assert drain(conn).endswith(b"body{}")
    conn.receive(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", T0)
    assert drain(conn).startswith(b"HTTP/1.1 405 Not Allowed")
    conn.receive(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    assert drain(conn).startswith(b"HTTP/1.1 200 OK")


def test_slow_reader_gets_everything_and_a_stalled_one_is_dropped():
    conn = connect()
    conn.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    received = b""
    now = T0
    while chunk := conn.data_to_send(4096, now):
        received += chunk
        conn.write_blocked(now)
        now += 50  # a write every 50 s is still progress (send_timeout 60)
        conn.expire(now)
        assert conn.closing is None
        conn.write_unblocked(now)
    assert received.endswith(bytes(range(256)) * 1024)
    conn.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", now)
    conn.data_to_send(4096, now)
    conn.write_blocked(now)
    conn.expire(now + 60)
    assert conn.closing is Closing.ABORT


def test_half_close_answers_what_arrived_then_closes():
    conn = connect()
    conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    conn.receive_eof(T0)
    assert drain(conn).count(b"HTTP/1.1 200 OK") == 2
    assert conn.closing is Closing.CLOSE
    partial = connect()
    partial.receive(b"GET / HTTP/1.1\r\n", T0)
    partial.receive_eof(T0)
    assert partial.closing is Closing.CLOSE and drain(partial) == b""


def test_lingering_close_after_an_error_with_unread_bytes():
    conn = connect()
    conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\nmore", T0)
    assert drain(conn).startswith(b"HTTP/1.1 400 Bad Request")
    assert conn.closing is Closing.LINGER
    conn.receive(b"still sending", T0 + 4)
    assert conn.deadline() == T0 + 9
    conn.expire(T0 + 9)
    assert conn.closing is Closing.CLOSE


def test_chrome_gets_padded_error_pages():
    conn = connect()
    agent = b"Mozilla/5.0 (X11) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    conn.receive(b"GET /nope HTTP/1.1\r\nHost: x\r\nUser-Agent: " + agent + b"\r\n\r\n", T0)
    out = drain(conn)
    assert out.count(b"a padding to disable MSIE and Chrome friendly error page") == 6


def test_directory_site(tmp_path):
    (tmp_path / "index.html").write_bytes(b"<h1>hi</h1>")
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "a.js").write_bytes(b"1;")
    (tmp_path / "empty").mkdir()
    loaded = DecoySite.from_directory(tmp_path, server="Apache")
    conn = DecoyConnection(loaded, TIMEOUTS, T0)
    conn.receive(b"GET /js/a.js HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    status, headers, body = split(drain(conn))
    # nginx's mime.types, not Python's ("text/javascript").
    assert (status, dict(headers)["Content-Type"], body) == (
        "HTTP/1.1 200 OK", "application/javascript", b"1;",
    )  # fmt: skip
    assert dict(headers)["Server"] == "Apache"
    conn.receive(b"GET /empty/ HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    assert drain(conn).startswith(b"HTTP/1.1 403 Forbidden")
    conn.receive(b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    assert drain(conn).startswith(b"HTTP/1.1 400 Bad Request")


def test_directory_errors(tmp_path):
    with pytest.raises(DecoyError):
        DecoySite.from_directory(tmp_path / "missing")
    (tmp_path / "big").write_bytes(b"x" * (MAX_DECOY_FILE_BYTES + 1))
    with pytest.raises(DecoyError):
        DecoySite.from_directory(tmp_path)


def test_gzip_like_debians_nginx():
    conn = connect()
    conn.receive(b"GET /page.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n", T0)
    status, headers, body = split(drain(conn))
    assert status == "HTTP/1.1 200 OK"
    assert [k for k, _ in headers] == [
        "Server", "Date", "Content-Type", "Last-Modified", "Transfer-Encoding", "Connection",
        "ETag", "Content-Encoding",
    ]  # fmt: skip
    assert dict(headers)["ETag"] == f'W/"6553f100-{len(PAGE):x}"'
    size, _, rest = body.partition(b"\r\n")
    payload = rest[: int(size, 16)]
    assert gzip.decompress(payload) == PAGE
    assert payload[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03"
    assert rest[int(size, 16) :] == b"\r\n0\r\n\r\n"
    for refused in (b"gzip;q=0", b"xgzip", b"deflate"):
        ask = b"GET /page.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: " + refused
        conn.receive(ask + b"\r\n\r\n", T0)
        assert b"Content-Length: %d\r\n" % len(PAGE) in drain(conn), refused
    # Shorter than gzip_min_length (20 bytes): sent as it is.
    conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n", T0)
    assert b"Content-Length: 15\r\n" in drain(conn)
    # Not for HTTP/1.0, nor through a proxy, nor when the operator's nginx has it off.
    conn.receive(
        b"GET /page.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nVia: 1\r\n\r\n", T0
    )
    assert b"Content-Encoding" not in drain(conn)
    plain = DecoyConnection(DecoySite(site()._files, gzip=False), TIMEOUTS, T0)
    plain.receive(b"GET /page.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n", T0)
    assert b"Content-Encoding" not in drain(plain)
