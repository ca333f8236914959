from l2bridge.transport.constants import MAX_REQUEST_HEAD, MAX_REQUEST_LINE
from l2bridge.transport.headers import (
    Complete,
    Incomplete,
    Invalid,
    Problem,
    browser_headers,
    header_has_token,
    scan_request_head,
)

GOOD = b"GET /ws?x=1 HTTP/1.1\r\nHost: a.example\r\nUpgrade:  websocket \r\nX-E:\r\n\r\nrest"


def test_complete_head_parsed():
    result = scan_request_head(GOOD)
    assert isinstance(result, Complete)
    assert result.consumed == len(GOOD) - 4
    head = result.head
    assert (head.method, head.target, head.path, head.version) == ("GET", "/ws?x=1", "/ws", "1.1")
    assert head.get("upgrade") == "websocket"
    assert head.get("x-e") == ""
    assert head.get("missing") is None
    assert head.count("HOST") == 1


def test_every_prefix_of_a_good_head_is_incomplete():
    for cut in range(len(GOOD) - 4):
        assert isinstance(scan_request_head(GOOD[:cut]), Incomplete), cut


def test_tls_client_hello_rejected_on_first_byte():
    assert scan_request_head(b"\x16") == Invalid(Problem.MALFORMED)
    assert scan_request_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == Invalid(
        Problem.MALFORMED
    )


def test_garbage_and_bad_lines():
    for data in (
        b"get / HTTP/1.1\r\n\r\n",
        b" GET",
        b"GET x",
        b"GET / HTTP/2.0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\nC: d\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n\r\n",
    ):
        assert scan_request_head(data) == Invalid(Problem.MALFORMED), data


def test_limits():
    long_line = b"GET /" + b"a" * MAX_REQUEST_LINE
    assert scan_request_head(long_line) == Invalid(Problem.LINE_TOO_LONG)
    assert scan_request_head(long_line + b" HTTP/1.1\r\n\r\n") == Invalid(Problem.LINE_TOO_LONG)
    big = b"GET / HTTP/1.1\r\nCookie: " + b"c" * MAX_REQUEST_HEAD
    assert scan_request_head(big) == Invalid(Problem.HEAD_TOO_LARGE)
    many = b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 100 + b"\r\n"
    assert scan_request_head(many) == Invalid(Problem.HEAD_TOO_LARGE)


def test_header_has_token():
    assert header_has_token("keep-alive, Upgrade", "upgrade")
    assert not header_has_token("upgrades", "upgrade")
    assert not header_has_token(None, "upgrade")


def test_browser_header_order():
    names = [
        name for name, _ in browser_headers(host="h", origin="https://h", key="k", protocol="p")
    ]
    assert names == [
        "Host",
        "Connection",
        "Pragma",
        "Cache-Control",
        "User-Agent",
        "Upgrade",
        "Origin",
        "Sec-WebSocket-Version",
        "Accept-Encoding",
        "Accept-Language",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
    ]
