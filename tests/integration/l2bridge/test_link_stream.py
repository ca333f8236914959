"""50 MB of frames each way over the real WebSocket transport on loopback,
concurrently, with the keys rotating every second: SHA-256 equal at both ends,
no frame lost, and the rotations really happened while data flowed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Callable

import pytest

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed, UpgradeRefused
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import Credential
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

STREAM_BYTES = 50 * 1024 * 1024
ROTATION_S = 1.0
CHECKPOINTS = 5  # the sender waits for a fresh rekey at each of these
BATCH_FRAMES = 64
BATCH_BYTES = 200 * 1024
TEST_DEADLINE_S = 90.0


def frame_sizes(seed: int, total: int) -> list[int]:
    rng = random.Random(seed)
    sizes, left = [], total
    while left > 0:
        size = 65536 if rng.random() < 0.02 else rng.randint(60, 9000)
        size = min(size, left) if left >= 60 else 60
        sizes.append(size)
        left -= size
    return sizes


def digest_frame(h, frame) -> None:
    h.update(len(frame).to_bytes(4, "big"))
    h.update(frame)


async def send_stream(link: Link, seed: int, rekeys: Callable[[], int]):
    """Send frames in batches; at each checkpoint wait until a rekey completed."""
    blob = memoryview(os.urandom(70_000))
    rng = random.Random(seed ^ 0x5A5A)
    h = hashlib.sha256()
    sizes = frame_sizes(seed, STREAM_BYTES)
    sent = 0
    next_checkpoint = STREAM_BYTES // (CHECKPOINTS + 1)
    batch, batch_bytes = [], 0
    for size in sizes:
        start = rng.randrange(0, len(blob) - size)
        frame = blob[start : start + size]
        digest_frame(h, frame)
        batch.append(frame)
        batch_bytes += size
        if len(batch) >= BATCH_FRAMES or batch_bytes >= BATCH_BYTES:
            await link.send_frames(batch)
            sent += batch_bytes
            batch, batch_bytes = [], 0
            if sent >= next_checkpoint:
                next_checkpoint += STREAM_BYTES // (CHECKPOINTS + 1)
                seen = rekeys()
                while rekeys() == seen:
                    await asyncio.sleep(0.05)
    if batch:
        await link.send_frames(batch)
    return len(sizes), h.hexdigest()


async def recv_stream(link: Link, expected_frames: int):
    h = hashlib.sha256()
    frames = 0
    while frames < expected_frames:
        for frame in await link.recv_frames():
            digest_frame(h, frame)
            frames += 1
    return frames, h.hexdigest()


async def rotate_every_second(link: Link, stop: asyncio.Event):
    """Stands in for the epoch scheduler: rekey on each 1 s boundary."""
    while not stop.is_set():
        now = time.time()
        await asyncio.sleep(ROTATION_S - (now % ROTATION_S) + 0.001)
        link.rekey(int(time.time() // ROTATION_S))


async def scenario():
    exit_identity = HybridSigningKey.generate()
    client_identity = HybridSigningKey.generate()
    authorizer = Authorizer(allow_list=AllowList().add(client_identity.node_id, "test client"))
    creds = ExitCredentials(exit_identity.node_id)
    credential = creds.issue(client_identity.node_id, "test client")
    exit_config = SessionConfig(rekey_interval=ROTATION_S)
    settings = ServerSettings(
        DecoySite.builtin(),
        "/ws",
        creds.verifier(),
        header_timeout=5.0,
    )
    exit_result: asyncio.Future = asyncio.get_running_loop().create_future()
    client_sizes = frame_sizes(1, STREAM_BYTES)

    async def on_link(link: Link) -> None:
        try:
            sender = asyncio.create_task(send_stream(link, 2, lambda: link.session.stats.rekeys))
            got = await recv_stream(link, len(client_sizes))
            sent = await sender
            # Let the client finish reading before the link is closed.
            exit_result.set_result((sent, got, link.stats()))
            with pytest.raises(TransportClosed):
                while True:
                    await link.recv_frames()
        except BaseException as exc:  # surface failures in the test
            if not exit_result.done():
                exit_result.set_exception(exc)
            raise

    server = await serve(
        on_link,
        settings,
        lambda: ServerHandshake(exit_identity, authorizer, config=exit_config),
        host="127.0.0.1",
        port=0,
    )
    port = server.sockets[0].getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        with pytest.raises(UpgradeRefused):  # a credential the exit never issued: the decoy
            await connect(
                url,
                ClientHandshake(client_identity),
                credential=Credential.derive(
                    ExitCredentials(exit_identity.node_id).master,
                    exit_identity.node_id,
                    credential.handle,
                ),
                node_id=exit_identity.node_id,
            )
        handshake = ClientHandshake(client_identity, pinned_node_id=exit_identity.node_id)
        started = time.perf_counter()
        link = await connect(url, handshake, credential=credential, node_id=exit_identity.node_id)
        stop = asyncio.Event()
        rotator = asyncio.create_task(rotate_every_second(link, stop))
        exit_frames = frame_sizes(2, STREAM_BYTES)
        client_sent, client_got = await asyncio.gather(
            send_stream(link, 1, lambda: link.rekeys_completed), recv_stream(link, len(exit_frames))
        )
        exit_sent, exit_got, exit_stats = await exit_result
        elapsed = time.perf_counter() - started
        stop.set()
        await rotator
        client_stats = link.stats()
        await link.close()
    finally:
        server.close()
        await server.wait_closed()
    return client_sent, client_got, exit_sent, exit_got, client_stats, exit_stats, elapsed


def test_50mb_each_way_with_rekeys_every_second():
    result = asyncio.run(asyncio.wait_for(scenario(), TEST_DEADLINE_S))
    client_sent, client_got, exit_sent, exit_got, client_stats, exit_stats, elapsed = result
    assert exit_got == client_sent  # (frame count, sha256) client -> exit
    assert client_got == exit_sent  # exit -> client
    assert client_stats["rekeys_completed"] >= CHECKPOINTS
    assert client_stats["epoch"] > 0
    assert exit_stats["rekeys"] >= CHECKPOINTS
    assert not any(k.startswith("drop_") and v for k, v in client_stats.items())
    assert not any(k.startswith("drop_") and v for k, v in exit_stats.items())
    mbit = 2 * STREAM_BYTES * 8 / elapsed / 1e6
    print(f"\n50 MB each way in {elapsed:.2f} s: {mbit:.0f} Mbit/s total, stats {client_stats}")
