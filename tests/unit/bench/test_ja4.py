"""JA4 / JA4S (bench/traffic/ja4.py) against published fingerprints.

The ClientHellos are built from published raw lists: JA4_ro of a Chrome 143 (the lists in
the order sent, as reported by browserleaks.com: JA4 t13d1516h2_8daaf6152771_d8a2da3f94cd)
and FoxIO's README example for Chrome (t13d1516h2_8daaf6152771_e5627efa2ab1), with GREASE
values added where Chrome puts them (they must not count).
"""

from __future__ import annotations

import struct

import pytest

from bench.traffic import ja4

CHROME_143_CIPHERS = "1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035"
CHROME_143_EXTENSIONS = (
    "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b"
)
CHROME_SIGALGS = "0403,0804,0401,0503,0805,0501,0806,0601"
FOXIO_EXTENSIONS = "0000,0005,000a,000b,000d,0010,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"


def _codes(text: str) -> list[int]:
    return [int(x, 16) for x in text.split(",")]


def _vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def _extension(etype: int, alpn: tuple[bytes, ...]) -> bytes:
    if etype == 0x0000:
        name = b"front.example"
        body = _vec(b"\x00" + _vec(name, 2), 2)
    elif etype == 0x0010:
        body = _vec(b"".join(_vec(p, 1) for p in alpn), 2)
    elif etype == 0x002B:
        body = _vec(struct.pack(">HHH", 0x3A3A, 0x0304, 0x0303), 1)
    elif etype == 0x000D:
        body = _vec(b"".join(struct.pack(">H", s) for s in [0x1A1A, *_codes(CHROME_SIGALGS)]), 2)
    else:
        body = b""
    return struct.pack(">H", etype) + _vec(body, 2)


def client_hello(
    ciphers: str, extensions: str, alpn: tuple[bytes, ...] = (b"h2", b"http/1.1")
) -> bytes:
    suites = b"".join(struct.pack(">H", c) for c in [0x0A0A, *_codes(ciphers)])
    exts = _extension(0x2A2A, alpn) + b"".join(_extension(e, alpn) for e in _codes(extensions))
    exts += _extension(0xFAFA, alpn)
    body = (
        struct.pack(">H", 0x0303) + bytes(32) + _vec(bytes(32), 1) + _vec(suites, 2)
        + _vec(b"\x00", 1) + _vec(exts, 2)
    )  # fmt: skip
    return b"\x01" + _vec(body, 3)


def record(message: bytes, split: int) -> bytes:
    """The handshake message in two TLS records (as a long ClientHello may come)."""
    parts = (message[:split], message[split:])
    return b"".join(b"\x16\x03\x01" + _vec(p, 2) for p in parts)


def test_chrome_143_published_ja4() -> None:
    hello = client_hello(CHROME_143_CIPHERS, CHROME_143_EXTENSIONS)
    kind, parsed = ja4.parse_hello(ja4.first_handshake(record(hello, 100)))
    assert kind == 1
    assert ja4.ja4(parsed) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_foxio_readme_chrome_ja4() -> None:
    hello = client_hello(CHROME_143_CIPHERS, FOXIO_EXTENSIONS)
    _, parsed = ja4.parse_hello(hello)
    assert ja4.ja4(parsed) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_sni_alpn_and_version_parts() -> None:
    no_sni = CHROME_143_EXTENSIONS.replace("0000,", "")
    _, parsed = ja4.parse_hello(client_hello(CHROME_143_CIPHERS, no_sni, (b"http/1.1",)))
    assert ja4.ja4(parsed).startswith("t13i1515h1_8daaf6152771_")
    no_alpn = no_sni.replace("0010,", "")
    _, parsed = ja4.parse_hello(client_hello(CHROME_143_CIPHERS, no_alpn))
    assert ja4.ja4(parsed).startswith("t13i151400_")
    # The c part does not depend on SNI or ALPN being there.
    assert ja4.ja4(parsed).split("_")[2] == "d8a2da3f94cd"


def test_ja4s_of_a_tls13_server_hello() -> None:
    exts = struct.pack(">HHH", 0x002B, 2, 0x0304) + struct.pack(">HH", 0x0033, 36) + bytes(36)
    body = struct.pack(">H", 0x0303) + bytes(32) + _vec(bytes(32), 1) + b"\x13\x01\x00"
    message = b"\x02" + _vec(body + _vec(exts, 2), 3)
    kind, parsed = ja4.parse_hello(message)
    assert kind == 2
    assert ja4.ja4s(parsed) == "t130200_1301_a56c5b993250"


@pytest.mark.parametrize("data", [b"", b"\x16\x03\x01\x00\x05\x01\x00", b"\x17\x03\x03\x00\x01x"])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ja4.NotAHello):
        ja4.parse_hello(ja4.first_handshake(data))
