"""A tunnel over curl_cffi's WebSocket (endpoints.tls_impersonate): the exit sees Chrome's
ClientHello, the link carries frames both ways and closes, and the next connection resumes
the TLS session; a wrong access key is refused
as a web server would refuse it; a bad certificate is refused by the client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.traffic import ja4
from l2bridge.commands.initfiles import write_private_tls
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed, UpgradeRefused
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.tls import server_context
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
CLIENT = HybridSigningKey.generate()
KEY = ExitCredentials(EXIT.node_id)
CREDENTIAL = KEY.issue(CLIENT.node_id, "c")
# The same device and exit, from another master key: a credential this exit never issued.
STRANGER = ExitCredentials(EXIT.node_id).issue(CLIENT.node_id, "c")
HOST = "localhost"
FRAME = bytes.fromhex("020000000001020000000002") + b"\x08\x00"


def test_tunnel_over_curl_cffi(tmp_path: Path) -> None:
    ca, cert, key = write_private_tls(tmp_path / "tls", HOST)
    other_ca, _, _ = write_private_tls(tmp_path / "other", HOST)
    hellos: list[bytes] = []

    resumed: list[bool] = []

    async def on_link(link: Link) -> None:
        ssl_object = link._ws.transport.get_extra_info("ssl_object")  # type: ignore[attr-defined]
        resumed.append(ssl_object.session_reused)
        try:
            while True:
                await link.send_frames([bytes(f) for f in await link.recv_frames()])
        except TransportClosed:
            pass

    async def scenario() -> None:
        settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())
        authorizer = Authorizer(allow_list=AllowList().add(CLIENT.node_id, "c"))
        server = await serve(
            on_link, settings, lambda: ServerHandshake(EXIT, authorizer),
            host="127.0.0.1", port=0, ssl=server_context(cert, key),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        url = f"wss://{HOST}:{port}/ws"
        # A recorder in front of nothing: what ClientHello does curl_cffi send?
        recorder = await asyncio.start_server(lambda r, w: _record(r, w, hellos), "127.0.0.1", 0)
        rport = recorder.sockets[0].getsockname()[1]
        try:
            with pytest.raises((TransportClosed, UpgradeRefused, TimeoutError)):
                await connect(
                    f"wss://{HOST}:{rport}/ws", ClientHandshake(CLIENT), credential=CREDENTIAL,
                    node_id=EXIT.node_id, impersonate=("chrome", ca),
                )  # fmt: skip
            hs = ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id)
            link = await connect(
                url, hs, credential=CREDENTIAL, node_id=EXIT.node_id, impersonate=("chrome", ca)
            )
            frames = [FRAME + bytes([i]) * (50 + 300 * i) for i in range(12)]
            for frame in frames:
                await link.send_frames([frame])
                got = [bytes(f) for f in await asyncio.wait_for(link.recv_frames(), 5)]
                assert got == [frame]
            await link.close()
            assert link.session.stats.drops == {}
            # Connecting again resumes the TLS session, as Chrome does.
            again = await connect(
                url, ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id),
                credential=CREDENTIAL, node_id=EXIT.node_id, impersonate=("chrome", ca),
            )  # fmt: skip
            await again.close()
            assert resumed == [False, True]
            # The exit refuses a credential it did not issue as a web server does.
            with pytest.raises(UpgradeRefused):
                await connect(
                    url, ClientHandshake(CLIENT), credential=STRANGER, node_id=EXIT.node_id,
                    impersonate=("chrome", ca),
                )  # fmt: skip
            # A certificate from another CA: the client refuses it.
            with pytest.raises((TransportClosed, UpgradeRefused)):
                await connect(
                    url, ClientHandshake(CLIENT), credential=CREDENTIAL, node_id=EXIT.node_id,
                    impersonate=("chrome", other_ca),
                )  # fmt: skip
        finally:
            recorder.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    _, hello = ja4.parse_hello(ja4.first_handshake(hellos[0]))
    fingerprint = ja4.ja4(hello)
    # Chrome's cipher list (JA4 b) and shape: 15 ciphers, 16 extensions, ALPN http/1.1.
    assert fingerprint.startswith("t13d1516h1_8daaf6152771_"), fingerprint


async def _record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  out: list[bytes]) -> None:  # fmt: skip
    data = b""
    try:
        async with asyncio.timeout(3):
            while True:
                data += await reader.read(65536)
                try:
                    ja4.first_handshake(data)
                    break
                except ja4.NotAHello:
                    continue
    except TimeoutError:
        pass
    out.append(data)
    writer.close()
