"""The JA4 of each TLS client we could carry the tunnel with, against Chromium's:

    python bench/traffic/tls_fingerprint.py [--corpus DIR]

A listener on loopback records each client's ClientHello (and closes): the tunnel
client's context (l2bridge.transport.tls.client_context, as ``shadowmesh client`` uses it
for wss://), and curl_cffi's Chrome impersonations opening a WebSocket (when curl_cffi is
installed). Chromium's JA4 comes from the browser sessions of a corpus
(bench/traffic/corpus.py) when one is given.

It also checks whether curl_cffi (impersonating Chrome) can carry the tunnel: an exit on
loopback (l2bridge.node.link.serve with TLS) and, over curl_cffi's WebSocket, the tunnel's
token as the subprotocol, the handshake, and one record echoed back. Prints one line of
JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.traffic import ja4  # noqa: E402
from bench.traffic.pcap import read_flows  # noqa: E402
from l2bridge.transport.tls import client_context  # noqa: E402

HOST = "front.example"
CURL_TARGETS = ("chrome", "chrome142", "chrome150", "chrome152")


class Recorder:
    """A loopback listener keeping the ClientHello bytes of each connection."""

    def __init__(self) -> None:
        self.hellos: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(3):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
                    try:
                        ja4.first_handshake(data)
                        break
                    except ja4.NotAHello:
                        continue
        self.hellos.append(data)
        writer.close()

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, sock=self.sock)


def fingerprint(data: bytes) -> str:
    try:
        return ja4.ja4(ja4.parse_hello(ja4.first_handshake(data))[1])
    except ja4.NotAHello:
        return "none"


async def tunnel_client(port: int) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(3):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(), server_hostname=HOST
            )
            writer.close()


async def curl_client(port: int, target: str) -> str | None:
    try:
        from curl_cffi import CurlOpt
        from curl_cffi.requests import AsyncSession
    except ImportError:
        return None
    async with AsyncSession() as s:
        with contextlib.suppress(Exception):  # the recorder never completes a handshake
            await s.ws_connect(
                f"wss://{HOST}:{port}/ws",
                impersonate=target,  # type: ignore[arg-type]
                timeout=3,
                verify=False,
                # curl resolves the name itself: to the recorder on loopback.
                curl_options={CurlOpt.RESOLVE: [f"{HOST}:{port}:127.0.0.1"]},
                headers={"Sec-WebSocket-Protocol": "token"},
            )
    return target


async def measure() -> dict[str, str]:
    recorder = Recorder()
    server = await recorder.start()
    out: dict[str, str] = {}
    try:
        await tunnel_client(recorder.port)
        out["shadowmesh_client"] = fingerprint(recorder.hellos[-1]) if recorder.hellos else "none"
        for target in CURL_TARGETS:
            before = len(recorder.hellos)
            done = await curl_client(recorder.port, target)
            if done is None:
                out["curl_cffi"] = "not installed"
                break
            got = recorder.hellos[before:]
            out[f"curl_cffi_{target}"] = fingerprint(got[-1]) if got else "none"
    finally:
        server.close()
        await server.wait_closed()
    return out


async def curl_carries_tunnel(target: str = "chrome") -> bool | None:
    """Whether a tunnel runs over curl_cffi's impersonated WebSocket (None: no curl_cffi)."""
    try:
        from curl_cffi import CurlOpt
        from curl_cffi.requests import AsyncSession
    except ImportError:
        return None
    import tempfile
    import time

    from l2bridge.commands.initfiles import write_private_tls
    from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
    from l2bridge.node.link import Link, serve
    from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
    from l2bridge.transport.decoy import DecoySite
    from l2bridge.transport.server import ServerSettings
    from l2bridge.transport.tls import server_context
    from l2bridge.transport.token import mint_token
    from lab.credlab import ExitCredentials

    exit_key, client_key = HybridSigningKey.generate(), HybridSigningKey.generate()
    issuer = ExitCredentials(exit_key.node_id)
    credential = issuer.issue(client_key.node_id, "probe")
    frame = bytes.fromhex("020000000001020000000002") + b"\x08\x00probe"

    async def on_link(link: Link) -> None:
        await link.send_frames([bytes(f) for f in await link.recv_frames()])

    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = write_private_tls(Path(tmp) / "tls", HOST)
        settings = ServerSettings(DecoySite.builtin(), "/ws", issuer.verifier())
        authorizer = Authorizer(allow_list=AllowList().add(client_key.node_id, "probe"))
        server = await serve(
            on_link, settings, lambda: ServerHandshake(exit_key, authorizer),
            host="127.0.0.1", port=0, ssl=server_context(cert, key),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        try:
            hs = ClientHandshake(client_key, pinned_node_id=exit_key.node_id)
            async with AsyncSession() as s:
                token = mint_token(credential, time.time())
                headers = {"Sec-WebSocket-Protocol": token, "Origin": f"https://{HOST}:{port}"}
                ws = await s.ws_connect(
                    f"wss://{HOST}:{port}/ws",
                    impersonate=target,  # type: ignore[arg-type]
                    verify=str(ca),
                    timeout=10,
                    curl_options={CurlOpt.RESOLVE: [f"{HOST}:{port}:127.0.0.1"]},
                    headers=headers,
                )
                await ws.send(hs.hello())
                answer = bytes((await ws.recv())[0])
                session, finish = hs.receive(answer, time.time(), token=token)
                await ws.send(bytes(finish))
                await ws.send(bytes(session.seal([frame], time.time())))
                # The exit's admission record (padding only) comes first, then the echo.
                for _ in range(4):
                    back = session.receive(bytes((await ws.recv())[0]), time.time())
                    if back.frames:
                        return [bytes(f) for f in back.frames] == [frame]
                return False
        except Exception:
            return False
        finally:
            server.close()
            await server.wait_closed()


def chromium(corpus: Path) -> Counter[str]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    seen: Counter[str] = Counter()
    for pcap in sorted({str(s["pcap"]) for s in manifest if s["label"] == "browser"}):
        port = next(int(s["port"]) for s in manifest if s["pcap"] == pcap)
        for flow in read_flows(corpus / pcap, port):
            seen[fingerprint(flow.client_head)] += 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path)
    args = parser.parse_args()
    clients = asyncio.run(measure())
    carries = asyncio.run(curl_carries_tunnel())
    chrome = chromium(args.corpus) if args.corpus else Counter()
    # Per client: which JA4 parts (a, b, c) equal those of some ClientHello Chromium sent
    # (its full handshakes and resumptions differ in the extension count).
    parts = {}
    for name, fp in clients.items():
        candidates = [c for c in chrome if c.count("_") == 2]
        if candidates and fp.count("_") == 2:
            parts[name] = max(
                ([a == b for a, b in zip(fp.split("_"), c.split("_"), strict=True)]
                 for c in candidates),
                key=sum,
            )  # fmt: skip
    print(
        json.dumps(
            {
                "chromium": dict(chrome),
                "clients": clients,
                "parts_matching_chromium_a_b_c": parts,
                "curl_cffi_carries_tunnel": carries,
            }
        )
    )


if __name__ == "__main__":
    main()
