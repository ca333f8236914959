"""What an observer on a ws:// path sees, and what replays make the exit do (issue 12, 4 + 6).

Real swtpm (enrolled ``ExitLifecycle``, the exit's TPM quotes counted at its evidence hook),
real tunnel server (``link.serve``) on loopback, and a small TCP relay between client and
exit that records every byte on the socket both ways:

* a certified device's tunnel: the capture (WebSocket frames unmasked) never contains the
  device's certificate name, organisation, serial, long-term keys or node id;
* the captured upgrade + ClientHello replayed on a new connection gets the web server's
  answer (the token is spent) and causes no TPM quote;
* the captured hello sent again under a fresh token (a holder of the access key) is refused
  before any work: no TPM quote, no ServerHello;
* one source's attested hellos past ``quotes_per_minute`` are refused before the TPM, while
  a plain hello from it still connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from pathlib import Path

import pytest

from exitnode.lifecycle import ExitLifecycle
from hardware.tpm import Swtpm
from l2bridge.identity.keys import AdminKey, Authorizer, HybridSigningKey
from l2bridge.node.link import MAX_EXIT_MESSAGE_SIZE, Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.transport.client import open_transport
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import mint_token
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
DEVICE = HybridSigningKey.generate()
ADMIN = AdminKey(HybridSigningKey.generate())
NOW = int(time.time())
CERT = ADMIN.issue(DEVICE.public, "laptop-of-alice", "acme-corporation", NOW - 60, NOW + 3600)
KEY = ExitCredentials(EXIT.node_id)
CRED = KEY.issue(DEVICE.node_id, "laptop-of-alice")


class Recorder:
    """A TCP relay to the exit that keeps every byte each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = bytearray()  # client -> exit
        self.down = bytearray()  # exit -> client
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exit_reader, exit_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bytearray
        ) -> None:
            try:
                while data := await src.read(65536):
                    log += data
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(
            pipe(reader, exit_writer, self.up),
            pipe(exit_reader, writer, self.down),
            return_exceptions=True,
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def frames(stream: bytes) -> list[tuple[int, bytes]]:
    """``(end offset, unmasked payload)`` of each WebSocket frame after the HTTP head."""
    pos = stream.index(b"\r\n\r\n") + 4
    out = []
    while pos + 2 <= len(stream):
        second = stream[pos + 1]
        length, pos = second & 0x7F, pos + 2
        if length in (126, 127):
            size = 2 if length == 126 else 8
            length, pos = int.from_bytes(stream[pos : pos + size], "big"), pos + size
        mask = b""
        if second & 0x80:
            mask, pos = stream[pos : pos + 4], pos + 4
        payload = stream[pos : pos + length]
        if len(payload) < length:
            break
        pos += length
        if mask:
            payload = bytes(a ^ b for a, b in zip(payload, itertools.cycle(mask), strict=False))
        out.append((pos, payload))
    return out


def identity_parts() -> dict[str, bytes]:
    return {
        "certificate name": CERT.name.encode(),
        "organisation": CERT.organisation.encode(),
        "certificate serial": CERT.serial,
        "certificate": CERT.encode(),
        "ed25519 key": DEVICE.public.ed25519,
        "ml-dsa key prefix": DEVICE.public.mldsa[:64],
        "node id": DEVICE.node_id,
        "node id (hex)": DEVICE.node_id.hex().encode(),
    }


def accept_evidence(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
    if not evidence:
        raise ValueError("no evidence")


def attested_handshake() -> ClientHandshake:
    return ClientHandshake(
        DEVICE, certificate=CERT, pinned_node_id=EXIT.node_id,
        attestation_nonce=os.urandom(32), evidence_checker=accept_evidence,
    )  # fmt: skip


async def idle(link: Link) -> None:
    with contextlib.suppress(TransportClosed):
        await link.recv_frames()


async def fresh_socket(url: str) -> DirectMessages:
    token = mint_token(CRED, time.time())
    opened = await open_transport(url, token, max_size=MAX_EXIT_MESSAGE_SIZE, direct=True)
    assert isinstance(opened, DirectMessages)
    return opened


async def refused_without_answer(ws: DirectMessages) -> bool:
    """Whether the exit closed the connection without sending any message."""
    try:
        async with asyncio.timeout(5):
            await ws.next_message()
    except TransportClosed:
        return True
    finally:
        await ws.close()  # type: ignore[attr-defined]
    return False


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            while b"\r\n\r\n" not in answer and (chunk := await reader.read(4096)):
                answer += chunk
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return answer


def test_observer_sees_no_identity_and_replays_cost_no_quote(
    swtpm: Swtpm, tmp_path: Path, kernel_logs: dict[str, Path]
) -> None:
    lifecycle = ExitLifecycle(
        swtpm.tcti, EXIT.node_id, tmp_path, **kernel_logs,
        ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
    )  # fmt: skip
    lifecycle.start()
    quotes: list[bytes] = []

    def counted_evidence(nonce: bytes, node_id: bytes) -> bytes:
        quotes.append(nonce)  # every call reaching here asks the TPM for a quote
        return lifecycle.evidence(nonce, node_id)

    guard = HelloGuard(quotes_per_minute=3)
    settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())

    async def main() -> None:
        server = await serve(
            idle, settings,
            lambda: ServerHandshake(EXIT, Authorizer([ADMIN.public]),
                                    evidence_provider=counted_evidence),
            host="127.0.0.1", port=0, hello_guard=guard,
        )  # fmt: skip
        port = int(server.sockets[0].getsockname()[1])
        recorder = Recorder(port)
        relay_port = await recorder.start()
        try:
            # 1. A certified device's tunnel through the recording relay.
            hs = attested_handshake()
            link = await connect(
                f"ws://127.0.0.1:{relay_port}/ws", hs, credential=CRED, node_id=EXIT.node_id
            )
            await link.send_frames([b"\x00" * 60])
            await link.close()
            await asyncio.sleep(0.2)  # the relay forwards the last bytes
            assert len(quotes) == 1 and hs.evidence  # attested, by the swtpm
            up_frames = frames(bytes(recorder.up))
            hello_end, hello = up_frames[0]
            assert hello == hs.hello()  # the capture is read right (unmasked frames)
            readable = b"".join(p for _, p in up_frames) + bytes(recorder.up)
            readable += b"".join(p for _, p in frames(bytes(recorder.down)))
            readable += bytes(recorder.down)
            for what, part in identity_parts().items():
                assert part not in readable, f"{what} visible on the wire"

            # 2. The captured upgrade + hello replayed on a new connection: the token was
            # spent, so the web server answers, and no quote is made.
            replay = bytes(recorder.up[:hello_end])
            answer = await raw_exchange(port, replay)
            assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 101")
            assert len(quotes) == 1

            # 3. The captured hello under a fresh, valid token (the device's own credential): a
            # duplicate, refused before any work.
            ws = await fresh_socket(f"ws://127.0.0.1:{port}/ws")
            ws.write_binary(hello)
            assert await refused_without_answer(ws)
            assert guard.refused["duplicate"] == 1 and len(quotes) == 1

            # 4. The device's quota of attested hellos (3 a minute, one used above): two
            # more are quoted, the next is refused before the TPM; a plain hello still
            # connects.
            url = f"ws://127.0.0.1:{port}/ws"
            for _ in range(2):
                link = await connect(url, attested_handshake(), credential=CRED,
                                     node_id=EXIT.node_id)  # fmt: skip
                await link.close()
            assert len(quotes) == 3
            with pytest.raises(TransportClosed):
                await connect(url, attested_handshake(), credential=CRED, node_id=EXIT.node_id)
            assert guard.refused["quote quota"] == 1 and len(quotes) == 3
            plain = ClientHandshake(DEVICE, certificate=CERT, pinned_node_id=EXIT.node_id)
            link = await connect(url, plain, credential=CRED, node_id=EXIT.node_id)
            await link.close()
            assert len(quotes) == 3
        finally:
            await recorder.close()
            server.close()
            await server.wait_closed()
            lifecycle.close()

    asyncio.run(asyncio.wait_for(main(), 90))
