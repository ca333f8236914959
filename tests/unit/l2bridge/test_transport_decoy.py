import email.utils

import pytest

from l2bridge.transport.constants import MAX_DECOY_FILE_BYTES
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import DecoyError
from l2bridge.transport.headers import Complete, Problem, scan_request_head

NOW = 1_800_000_000.0


def respond(site, raw):
    result = scan_request_head(raw)
    assert isinstance(result, Complete)
    return site.respond(result.head, NOW)


def split(response):
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return lines[0], dict(line.split(": ", 1) for line in lines[1:]), body


def test_builtin_index_and_404():
    site = DecoySite.builtin()
    status, headers, body = split(respond(site, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Server"] == "nginx"
    assert headers["Date"] == email.utils.formatdate(NOW, usegmt=True)
    assert headers["Content-Length"] == str(len(body))
    assert headers["Connection"] == "close"
    assert b"Welcome to nginx!" in body
    status, headers, body = split(respond(site, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.1 404 Not Found"
    assert headers["Content-Length"] == str(len(body))


def test_head_has_no_body_but_same_length():
    site = DecoySite.builtin()
    get = respond(site, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = respond(site, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert get.startswith(head)
    assert head.endswith(b"\r\n\r\n")


def test_method_host_and_errors():
    site = DecoySite.builtin()
    assert respond(site, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert respond(site, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert respond(site, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    assert site.error(Problem.MALFORMED, NOW).startswith(b"HTTP/1.1 400 Bad Request")
    assert site.error(Problem.LINE_TOO_LONG, NOW).startswith(b"HTTP/1.1 414 ")
    assert b"Too Large" in site.error(Problem.HEAD_TOO_LARGE, NOW)


def test_directory_site(tmp_path):
    (tmp_path / "index.html").write_bytes(b"<h1>hi</h1>")
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "a.css").write_bytes(b"body{}")
    site = DecoySite.from_directory(tmp_path, server="Apache")
    status, headers, body = split(respond(site, b"GET /css/a.css HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert (status, headers["Content-Type"], body) == ("HTTP/1.1 200 OK", "text/css", b"body{}")
    assert headers["Server"] == "Apache"
    assert split(respond(site, b"GET /?q HTTP/1.1\r\nHost: x\r\n\r\n"))[2] == b"<h1>hi</h1>"
    assert respond(site, b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 404"
    )


def test_directory_errors(tmp_path):
    with pytest.raises(DecoyError):
        DecoySite.from_directory(tmp_path / "missing")
    (tmp_path / "big").write_bytes(b"x" * (MAX_DECOY_FILE_BYTES + 1))
    with pytest.raises(DecoyError):
        DecoySite.from_directory(tmp_path)
