"""An active prober cannot tell the exit from a plain web server.

A standalone decoy server and an exit serve the same site on loopback; every
probe is sent to both and the answers (bytes up to the close, Date removed,
and how the connection ended) must be equal. A client with a valid token
still gets its WebSocket, over plain TCP and over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import re
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from l2bridge.logsummary import Summary
from l2bridge.transport.client import open_transport
from l2bridge.transport.constants import DEFAULT_BACKLOG
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import UpgradeRefused
from l2bridge.transport.headers import browser_headers
from l2bridge.transport.server import ServerSettings, serve_decoy, serve_exit
from l2bridge.transport.token import AccessKey, TokenVerifier, mint_token

pytestmark = pytest.mark.integration

NODE = b"\x07" * 32
HEADER_TIMEOUT = 0.5
WS_KEY = base64.b64encode(b"probe-key-16byte").decode()


def upgrade_request(protocol: str | None, path: str = "/ws") -> bytes:
    headers = browser_headers(
        host="127.0.0.1", origin="http://127.0.0.1", key=WS_KEY, protocol=protocol or ""
    )
    lines = [f"GET {path} HTTP/1.1"] + [
        f"{k}: {v}" for k, v in headers if protocol is not None or k != "Sec-WebSocket-Protocol"
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


TLS_CLIENT_HELLO = (
    bytes.fromhex(
        "16030100f4010000f00303" + "11" * 32 + "20" + "22" * 32 + "0008130213031301c02f0100009f"
    )
    + b"\x00" * 40
)


async def probe(port: int, data: bytes, *, ssl_ctx: ssl.SSLContext | None = None):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None
    )
    writer.write(data)
    chunks = []
    ending = "eof"
    try:
        async with asyncio.timeout(HEADER_TIMEOUT * 10):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except ConnectionResetError:
        ending = "reset"
    writer.close()
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        await writer.wait_closed()
    answer = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", b"".join(chunks))
    return answer, ending


@contextlib.asynccontextmanager
async def servers():
    key = AccessKey.generate()
    site = DecoySite.builtin()
    verifier = TokenVerifier(key, NODE)
    received: list[bytes] = []

    async def handler(ws):
        async for message in ws:
            received.append(message)
            await ws.send(message)

    settings = ServerSettings(site, "/ws", verifier, header_timeout=HEADER_TIMEOUT)
    exit_server = await serve_exit(handler, settings, host="127.0.0.1", port=0)
    decoy = await serve_decoy(site, host="127.0.0.1", port=0, header_timeout=HEADER_TIMEOUT)
    ports = (exit_server.sockets[0].getsockname()[1], decoy.sockets[0].getsockname()[1])
    try:
        yield key, ports
    finally:
        exit_server.close()
        await exit_server.wait_closed()
        decoy.close()
        await decoy.wait_closed()


def test_probers_see_only_the_decoy():
    asyncio.run(asyncio.wait_for(_probers_see_only_the_decoy(), 30))


async def _probers_see_only_the_decoy():
    async with servers() as (key, (exit_port, decoy_port)):
        await _probe_all(key, exit_port, decoy_port)


async def _probe_all(key, exit_port, decoy_port):
    now = time.time()
    used = mint_token(key, NODE, now)
    ws = await open_transport(f"ws://127.0.0.1:{exit_port}/ws", used)
    await ws.send(b"ping")
    assert await ws.recv() == b"ping"
    await ws.close()

    probes = {
        "get_root": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5\r\n\r\n",
        "wrong_path": upgrade_request(mint_token(key, NODE, now), path="/chat"),
        "path_no_token": upgrade_request(None),
        "bad_token": upgrade_request("A" * 43),
        "replayed_token": upgrade_request(used),
        "expired_window": upgrade_request(mint_token(key, NODE, now - 3600)),
        "other_node": upgrade_request(mint_token(key, b"\x08" * 32, now)),
        "other_key": upgrade_request(mint_token(AccessKey.generate(), NODE, now)),
        "http10": b"GET / HTTP/1.0\r\n\r\n",
        "head": b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "post": b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        "no_host": b"GET / HTTP/1.1\r\n\r\n",
        "garbage": bytes(range(256)),
        "tls_client_hello": TLS_CLIENT_HELLO,
        "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "oversized_headers": b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 9000 + b"\r\n\r\n",
        "long_uri": b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
        "slowloris": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: b",
        "empty_then_close": b"",
    }
    results = await asyncio.gather(
        *(asyncio.gather(probe(exit_port, d), probe(decoy_port, d)) for d in probes.values())
    )
    for name, (from_exit, from_decoy) in zip(probes, results, strict=True):
        assert from_exit == from_decoy, name
    answers = dict(zip(probes, (r[0][0] for r in results), strict=True))
    endings = {r[0][1] for r in results}
    assert endings == {"eof"}
    assert answers["get_root"].startswith(b"HTTP/1.1 200 OK")
    assert answers["head"].endswith(b"\r\n\r\n")
    for name in ("wrong_path", "path_no_token", "bad_token", "replayed_token", "other_node"):
        assert answers[name].startswith(b"HTTP/1.1 404 Not Found"), name
    for name in ("garbage", "tls_client_hello", "http2_preface", "no_host"):
        assert answers[name].startswith(b"HTTP/1.1 400 Bad Request"), name
    assert b"Request Header Or Cookie Too Large" in answers["oversized_headers"]
    assert answers["long_uri"].startswith(b"HTTP/1.1 414")
    assert answers["slowloris"] == b""
    assert answers["empty_then_close"] == b""

    with pytest.raises(UpgradeRefused):
        await open_transport(f"ws://127.0.0.1:{exit_port}/ws", used)


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_exit_upgrade_and_decoy(tmp_path):
    asyncio.run(asyncio.wait_for(_tls_exit_upgrade_and_decoy(tmp_path), 30))


async def _tls_exit_upgrade_and_decoy(tmp_path):
    cert_path, key_path = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    key = AccessKey.generate()

    async def handler(ws):
        await ws.send(await ws.recv())

    settings = ServerSettings(
        DecoySite.builtin(), "/ws", TokenVerifier(key, NODE), header_timeout=HEADER_TIMEOUT
    )
    server = await serve_exit(handler, settings, host="127.0.0.1", port=0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        ws = await open_transport(
            f"wss://localhost:{port}/ws",
            mint_token(key, NODE, time.time()),
            ssl=client_ctx,
            host="127.0.0.1",
        )
        await ws.send(b"over tls")
        assert await ws.recv() == b"over tls"
        await ws.close()
        answer, _ = await probe(
            port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", ssl_ctx=client_ctx
        )
        assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        server.close()
        await server.wait_closed()


def test_upgrades_the_library_refuses_are_answered_as_the_decoy():
    asyncio.run(asyncio.wait_for(_library_refusals(), 30))


async def _library_refusals():
    async with servers() as (key, (exit_port, decoy_port)):
        token = mint_token(key, NODE, time.time())
        good = upgrade_request(token)[:-2]  # the head without its final CRLF
        probes = {
            "h2c": good.replace(b"Upgrade: websocket", b"Upgrade: websocket, h2c") + b"\r\n",
            "body": good + b"Content-Length: 5\r\n\r\nhello",
            "chunked": good + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        }
        for name, data in probes.items():
            from_exit, from_decoy = await asyncio.gather(
                probe(exit_port, data), probe(decoy_port, data)
            )
            assert from_exit == from_decoy, name
            assert from_exit[0].startswith(b"HTTP/1.1 "), name  # an answer, not silence
        # None of them spent the token: it still opens the WebSocket.
        ws = await open_transport(f"ws://127.0.0.1:{exit_port}/ws", token)
        await ws.send(b"ping")
        assert await ws.recv() == b"ping"
        await ws.close()


def test_flood_is_summarised_not_logged_per_connection(caplog):
    asyncio.run(asyncio.wait_for(_flood_summary(caplog), 30))


async def _flood_summary(caplog):
    summary = Summary(logging.getLogger("test.screened"), "connections screened", interval_s=3600)
    settings = ServerSettings(DecoySite.builtin(), "/ws", TokenVerifier(AccessKey.generate(), NODE))
    server = await serve_exit(lambda ws: ws.wait_closed(), settings, host="127.0.0.1", port=0,
                              summary=summary)  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    try:
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(listening[2]) == min(DEFAULT_BACKLOG, somaxconn)  # Send-Q: the backlog
        with caplog.at_level(logging.INFO):
            await asyncio.gather(*(probe(port, upgrade_request("A" * 43)) for _ in range(40)))
            assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
            summary.flush()
    finally:
        server.close()
        await server.wait_closed()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].endswith(": answered as the decoy 40")
