import base64

from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.gate import Admit, Gate, Pending, Refuse
from l2bridge.transport.headers import browser_headers
from l2bridge.transport.token import Credential, MasterKey, mint_token

NODE = b"\x01" * 32
NOW = 1_800_000_000.0
MASTER = MasterKey(b"k" * 32)
TABLE = CredentialTable()
CRED = TABLE.issue(MASTER, NODE, b"\x0d" * 32, "lan-a", NOW)[1]
OTHER_EXIT = Credential.derive(MASTER, b"\x02" * 32, CRED.handle)


def verifier_for():
    return TokenVerifier(MASTER, NODE, TABLE, per_device=1000)


def token(now=NOW, cred=CRED):
    return mint_token(cred, now)


def upgrade(token, path="/ws", drop=(), eol="\r\n"):
    headers = browser_headers(
        host="exit.example",
        origin="https://exit.example",
        key=base64.b64encode(b"0123456789abcdef").decode(),
        protocol=token,
    )
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers if k not in drop]
    return (eol.join(lines) + eol + eol).encode()


def make_gate(verifier=True):
    return Gate(ws_path="/ws", verifier=verifier_for() if verifier else None)


def test_valid_upgrade_admitted_byte_by_byte():
    gate = make_gate()
    data = upgrade(token()) + b"\x82\x00"
    for i in range(len(data) - 3):
        assert gate.feed(data[i : i + 1], NOW) == Pending()
    decision = gate.feed(data[len(data) - 3 :], NOW)
    assert isinstance(decision, Admit)
    assert decision.data == data
    assert decision.admission.device == b"\x0d" * 32 and decision.admission.name == "lan-a"
    # Decided once; more bytes change nothing.
    assert gate.feed(b"more", NOW) is decision


def test_refusals_carry_every_byte_read():
    good = token()
    cases = [
        upgrade("not-a-token"),
        upgrade(good, path="/other"),
        upgrade(good, drop=("Sec-WebSocket-Protocol",)),
        upgrade(good, drop=("Upgrade",)),
        upgrade(good, drop=("Sec-WebSocket-Key",)),
        upgrade(token(cred=OTHER_EXIT)),
        upgrade(token(NOW - 600)),
        upgrade(good + ", " + good),
        # Accepted by nginx's rules but not by the WebSocket library: never admitted.
        upgrade(good, eol="\n"),
        b"\r\n" + upgrade(good),
    ]
    for raw in cases:
        gate = make_gate()
        first = gate.feed(raw[:10], NOW)
        assert first == Pending()
        decision = gate.feed(raw[10:] + b"tail", NOW)
        assert decision == Refuse(raw + b"tail"), raw


def test_replayed_token_refused():
    verifier = verifier_for()
    raw = upgrade(token())
    assert isinstance(Gate(ws_path="/ws", verifier=verifier).feed(raw, NOW), Admit)
    assert Gate(ws_path="/ws", verifier=verifier).feed(raw, NOW) == Refuse(raw)


def test_gate_without_verifier_never_admits():
    raw = upgrade(token())
    assert make_gate(verifier=False).feed(raw, NOW) == Refuse(raw)


def test_garbage_refused_on_first_byte():
    assert make_gate().feed(b"\x16", NOW) == Refuse(b"\x16")


class CountingVerifier(TokenVerifier):
    """Counts the tokens checked (and so spent)."""

    def __init__(self):
        super().__init__(MASTER, NODE, TABLE, per_device=1000)
        self.checked = 0

    def check(self, text, now, source=""):
        self.checked += 1
        return super().check(text, now, source)


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


def test_upgrades_the_library_refuses_are_refused_and_keep_the_token():
    good = upgrade(token())
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
        decision = Gate(ws_path="/ws", verifier=verifier).feed(raw, NOW)
        assert isinstance(decision, Refuse) and decision.data == raw, why
    assert verifier.checked == 0  # no token was spent on any of them
    # The same token still opens the tunnel, and an empty body is fine as for the library.
    ok = with_headers(good, b"Content-Length: 0")
    assert isinstance(Gate(ws_path="/ws", verifier=verifier).feed(ok, NOW), Admit)
    assert verifier.checked == 1
