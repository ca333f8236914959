from l2bridge.transport.constants import HEAD_LARGE_BUFFER
from l2bridge.transport.headers import (
    Complete,
    HeadParser,
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
    assert head.strict


def test_every_prefix_of_a_good_head_is_incomplete():
    for cut in range(len(GOOD) - 4):
        assert isinstance(scan_request_head(GOOD[:cut]), Incomplete), cut


def test_byte_at_a_time_equals_one_shot():
    heads = [GOOD, b"\r\n\r\nGET / HTTP/1.0\nA_b: 1\nX: y\n\n", b"GET /\r\n", b"get / HTTP/1.1\r\n"]
    for data in heads:
        parser = HeadParser()
        for i in range(len(data)):
            result = parser.feed(data[i : i + 1])
        assert result == scan_request_head(data), data


def test_tls_client_hello_rejected_on_first_byte():
    assert scan_request_head(b"\x16") == Invalid(Problem.MALFORMED)
    assert scan_request_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == Invalid(
        Problem.MALFORMED
    )


def test_what_nginx_refuses():
    for data in (
        b"get / HTTP/1.1\r\n\r\n",
        b" GET",
        b"GET *",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/0.9\r\n",
        b"GET / HTTP/1.100\r\n",
    ):
        assert scan_request_head(data) == Invalid(Problem.MALFORMED), data
    # Refused at the offending byte, before the line ends (as nginx does).
    for data in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\x16\x03",
        b"GET / HTTP/1.1\r\nHo st",
        b"GET / HTTP/1.1\r\nHost: a\x00",
        b"GET / HTTP/1.1\r\nHost: a\rb",
        b"GET / HTTP/1.1\r\nX: y\r\n\rx",
    ):
        assert scan_request_head(data) == Invalid(Problem.MALFORMED), data
    assert scan_request_head(b"GET / HTTP/1.1\r\nHost: a\r") == Incomplete()
    assert scan_request_head(b"GET / HTTP/1.1\r\nX_y: \x01") == Incomplete()
    assert scan_request_head(b"GET / HTTP/2") == Invalid(Problem.BAD_VERSION)
    assert scan_request_head(b"GET / HTTP/10.0") == Invalid(Problem.BAD_VERSION)
    assert scan_request_head(b"HEAD /\r\n") == Invalid(Problem.MALFORMED, http09=True)


def test_what_nginx_accepts():
    lenient = scan_request_head(b"\r\nGET  /  HTTP/1.1 \nHost: x\nX_y: 1\nNoColon\nA: \x01\n\n")
    assert isinstance(lenient, Complete)
    assert lenient.head.headers == (("Host", "x"), ("NoColon", ""), ("A", "\x01"))
    assert not lenient.head.strict  # LF endings, a dropped header: never a WebSocket
    http09 = scan_request_head(b"GET /index.html\r\n")
    assert isinstance(http09, Complete) and http09.head.version == "0.9"
    assert scan_request_head(b"\r\n\r\n\r\n") == Incomplete()


def test_nginx_buffer_limits():
    line = b"GET /" + b"a" * (HEAD_LARGE_BUFFER - 16) + b" HTTP/1.1\r\n"
    assert len(line) == HEAD_LARGE_BUFFER
    assert isinstance(scan_request_head(line + b"Host: x\r\n\r\n"), Complete)
    longer = b"GET /a" + line[5:]
    assert scan_request_head(longer) == Invalid(Problem.LINE_TOO_LONG)
    # Detected as soon as the 8 KiB buffer is full, without waiting for the end of line.
    assert scan_request_head(longer[:HEAD_LARGE_BUFFER]) == Invalid(Problem.LINE_TOO_LONG)
    cookie = b"GET / HTTP/1.1\r\nCookie: " + b"c" * HEAD_LARGE_BUFFER + b"\r\n\r\n"
    assert scan_request_head(cookie) == Invalid(Problem.HEAD_TOO_LARGE)
    # Lines that fit one by one, but more than the four large buffers hold.
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
    assert scan_request_head(many + b"\r\n") == Invalid(Problem.HEAD_TOO_LARGE)
    fewer = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(30))
    assert isinstance(scan_request_head(fewer + b"\r\n"), Complete)


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
