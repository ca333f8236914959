import base64

from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.gate import Admit, Answer, Gate, Pending
from l2bridge.transport.headers import browser_headers
from l2bridge.transport.token import AccessKey, TokenVerifier, mint_token

NODE = b"\x01" * 32
NOW = 1_800_000_000.0
KEY = AccessKey(b"k" * 32)


def upgrade(token, path="/ws", drop=()):
    headers = browser_headers(
        host="exit.example",
        origin="https://exit.example",
        key=base64.b64encode(b"0123456789abcdef").decode(),
        protocol=token,
    )
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def make_gate(verifier=True):
    site = DecoySite.builtin()
    return Gate(site, ws_path="/ws", verifier=TokenVerifier(KEY, NODE) if verifier else None)


def test_valid_upgrade_admitted_byte_by_byte():
    gate = make_gate()
    data = upgrade(mint_token(KEY, NODE, NOW)) + b"\x82\x00"
    for i in range(len(data) - 3):
        assert gate.feed(data[i : i + 1], NOW) == Pending()
    decision = gate.feed(data[len(data) - 3 :], NOW)
    assert isinstance(decision, Admit)
    assert decision.data == data
    # Decided once; more bytes change nothing.
    assert gate.feed(b"more", NOW) is decision


def test_invalid_upgrades_get_the_decoy_404():
    site = DecoySite.builtin()
    expected = Gate(site, ws_path="/ws", verifier=None).feed(upgrade("x"), NOW)
    assert isinstance(expected, Answer) and expected.response.startswith(b"HTTP/1.1 404")
    good = mint_token(KEY, NODE, NOW)
    cases = [
        upgrade("not-a-token"),
        upgrade(good, path="/other"),
        upgrade(good, drop=("Sec-WebSocket-Protocol",)),
        upgrade(good, drop=("Upgrade",)),
        upgrade(good, drop=("Sec-WebSocket-Key",)),
        upgrade(mint_token(KEY, b"\x02" * 32, NOW)),
        upgrade(mint_token(KEY, NODE, NOW - 600)),
        upgrade(good + ", " + good),
    ]
    for raw in cases:
        decision = make_gate().feed(raw, NOW)
        assert decision == expected, raw


def test_replayed_token_gets_decoy():
    verifier = TokenVerifier(KEY, NODE)
    site = DecoySite.builtin()
    raw = upgrade(mint_token(KEY, NODE, NOW))
    assert isinstance(Gate(site, ws_path="/ws", verifier=verifier).feed(raw, NOW), Admit)
    second = Gate(site, ws_path="/ws", verifier=verifier).feed(raw, NOW)
    assert isinstance(second, Answer) and second.response.startswith(b"HTTP/1.1 404")


def test_decoy_only_gate_never_admits():
    decision = make_gate(verifier=False).feed(upgrade(mint_token(KEY, NODE, NOW)), NOW)
    assert isinstance(decision, Answer)


def test_garbage_answered_400():
    decision = make_gate().feed(b"\x16\x03\x01", NOW)
    assert isinstance(decision, Answer) and decision.response.startswith(b"HTTP/1.1 400")


class CountingVerifier(TokenVerifier):
    """Counts the tokens checked (and so spent)."""

    def __init__(self):
        super().__init__(KEY, NODE)
        self.checked = 0

    def check(self, text, now):
        self.checked += 1
        return super().check(text, now)


def with_headers(raw, *extra, replace=None):
    head, _, _ = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if replace is not None:
        name, value = replace
        lines = [
            name + b": " + value if line.lower().startswith(name.lower() + b":") else line
            for line in lines
        ]
    return b"\r\n".join(lines + list(extra)) + b"\r\n\r\n"


def test_upgrades_the_library_refuses_get_the_decoy_and_keep_the_token():
    token = mint_token(KEY, NODE, NOW)
    good = upgrade(token)
    site = DecoySite.builtin()
    cases = {
        "h2c offered too": with_headers(good, replace=(b"Upgrade", b"websocket, h2c")),
        "two Upgrade headers": with_headers(good, b"Upgrade: h2c"),
        "a body on the GET": with_headers(good, b"Content-Length: 5") + b"hello",
        "chunked": with_headers(good, b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
        "two Origin headers": with_headers(good, b"Origin: https://other.example"),
        "versioned upgrade": with_headers(good, replace=(b"Upgrade", b"websocket/13")),
    }
    verifier = CountingVerifier()
    for why, raw in cases.items():
        decision = Gate(site, ws_path="/ws", verifier=verifier).feed(raw, NOW)
        expected = Gate(site, ws_path="/ws", verifier=None).feed(raw, NOW)
        assert isinstance(decision, Answer) and decision == expected, why
    assert verifier.checked == 0  # no token was spent on any of them
    # The same token still opens the tunnel, and an empty body is fine as for the library.
    ok = with_headers(good, b"Content-Length: 0")
    assert isinstance(Gate(site, ws_path="/ws", verifier=verifier).feed(ok, NOW), Admit)
    assert verifier.checked == 1
