"""The least a Python tunnel can do per frame: a floor under ShadowMesh's per-hop cost.

Issue 17 asks ShadowMesh to add no more idle latency than OpenVPN. This tunnel answers
"could any Python tunnel?": two processes (client and exit namespaces), each with a TAP in
its bridge, uvloop, one ``os.read`` per frame from the TAP, ``AESGCM.encrypt`` (the same
library call ShadowMesh makes) and one ``transport.write`` of a 10-byte header + ciphertext
over TCP (``TCP_NODELAY``); the far side parses the header, decrypts and ``os.write``s the
frame. No WebSocket, no TLS, no sessions, rekeys, replay window, switch, metrics, shaping
or merging: what is left is the interpreter's wake-up, the event loop, the syscalls and
AES-GCM. Its added latency and per-frame throughput are what Python itself costs here.

It is a measuring stick, not a tunnel to use: the key is handed over in the environment
(``FLOOR_KEY``, hex) by the bench that starts both ends in namespaces it made, and a
frame that fails to open ends the process.

``--io threads`` is the same tunnel with no event loop: a thread per direction, blocked in
its read (``bench/l2_hops.py --floor-threads``): whether a loop's wake-up is what costs.

Run by ``bench/l2_hops.py --floor`` and ``bench/l2.py --floor``; on its own (one end):
``python -m bench.l2_floor --role exit|client --tap NAME --host IP --port N [--io threads]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytun
import uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hardware.netns import Lab
from lab import topology

PORT = 11941
TAP = "floor0"
KEY_ENV = "FLOOR_KEY"
HEADER = struct.Struct("!HQ")  # ciphertext length, record counter
READ_SIZE = 65536
CONNECT_TRIES = 100
# A record's nonce: the sender's direction byte, then its counter (never reused per key).
DIRECTION = {"client": b"\x01\x00\x00\x00", "exit": b"\x02\x00\x00\x00"}


class Relay(asyncio.Protocol):
    """One end: TAP frames out as sealed records, records in as TAP frames."""

    def __init__(
        self, tap_fd: int, aead: AESGCM, role: str, done: asyncio.Future[None] | None = None
    ):
        self.fd = tap_fd
        self.aead = aead
        self.send_prefix = DIRECTION[role]
        self.recv_prefix = DIRECTION["exit" if role == "client" else "client"]
        self.sent = 0
        self.buffer = bytearray()
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().add_reader(self.fd, self.tap_readable)

    def tap_readable(self) -> None:
        assert self.transport is not None
        while True:
            try:
                frame = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            self.sent += 1
            counter = self.sent
            sealed = self.aead.encrypt(self.send_prefix + counter.to_bytes(8), frame, None)
            self.transport.write(HEADER.pack(len(sealed), counter) + sealed)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        at = 0
        # The ciphertext is decrypted where it lies (no copy); the view is released before
        # the buffer drops what was consumed.
        with memoryview(buf) as view:
            while len(buf) - at >= HEADER.size:
                size, counter = HEADER.unpack_from(buf, at)
                end = at + HEADER.size + size
                if len(buf) < end:
                    break
                nonce = self.recv_prefix + counter.to_bytes(8)
                frame = self.aead.decrypt(nonce, view[at + HEADER.size : end], None)
                try:  # noqa: SIM105 (a with-block costs more per frame than the floor should)
                    os.write(self.fd, frame)
                except BlockingIOError:
                    pass  # the TAP's queue is full: the frame is dropped, as a NIC would
                at = end
        del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def open_tap(name: str, mtu: int) -> pytun.TunTapDevice:
    # Not hardware.tap: its framing (offload header, batches) is part of what is measured.
    tap = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
    tap.mtu = mtu
    tap.up()
    os.set_blocking(tap.fileno(), False)
    return tap


async def run(role: str, *, tap_name: str, host: str, port: int, mtu: int, key: bytes) -> None:
    tap = open_tap(tap_name, mtu)
    aead = AESGCM(key)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def relay() -> Relay:
        return Relay(tap.fileno(), aead, role, done)

    if role == "exit":
        server = await loop.create_server(relay, host, port, reuse_address=True)
        async with server:
            await done
        return
    for _ in range(CONNECT_TRIES):
        try:
            await loop.create_connection(relay, host, port)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        raise SystemExit(f"floor: cannot reach {host}:{port}")
    await done


def run_threads(role: str, *, tap_name: str, host: str, port: int, mtu: int, key: bytes) -> None:
    """The same tunnel with no event loop (``--io threads``): see ``pump_threads``."""
    tap = open_tap(tap_name, mtu)
    os.set_blocking(tap.fileno(), True)
    if role == "exit":
        with socket.create_server((host, port)) as server:
            sock, _ = server.accept()
    else:
        for _ in range(CONNECT_TRIES):
            try:
                sock = socket.create_connection((host, port))
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"floor: cannot reach {host}:{port}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pump_threads(tap.fileno(), sock, AESGCM(key), role)


def pump_threads(fd: int, sock: socket.socket, aead: AESGCM, role: str) -> None:
    """A thread per direction, each blocked in its read: a frame wakes the one thread
    waiting for it straight from its system call (no epoll, no loop iteration, no
    callback); the blocking calls release the GIL, so one runs while the other waits.
    Returns when the stream ends (the sending thread ends at the TAP's end of file)."""
    send_prefix = DIRECTION[role]

    def out() -> None:
        sent = 0
        while frame := os.read(fd, READ_SIZE):
            sent += 1
            sealed = aead.encrypt(send_prefix + sent.to_bytes(8), frame, None)
            try:
                sock.sendall(HEADER.pack(len(sealed), sent) + sealed)
            except OSError:
                return

    threading.Thread(target=out, daemon=True).start()
    receiver = Relay(fd, aead, role)  # its record parsing only (the TAP fd blocks here)
    while data := sock.recv(READ_SIZE):
        receiver.data_received(data)


@contextmanager
def tunnel(
    lab: Lab, topo: topology.Topology, _tmp: Path, io: str = "uvloop"
) -> Iterator[list[int]]:
    """Both ends in their namespaces (``io``: ``uvloop`` or ``threads``); yields their pids
    once both TAPs are in the bridges."""
    env = {**os.environ, KEY_ENV: secrets.token_hex(32)}
    common = ["--tap", TAP, "--host", topology.EXIT_WAN, "--port", str(PORT)]
    common += ["--mtu", str(topo.mtu), "--io", io]
    me = [sys.executable, "-m", "bench.l2_floor"]
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    exit_ = lab.spawn(topo.exit, [*me, "--role", "exit", *common], env=env)
    client = lab.spawn(topo.client, [*me, "--role", "client", *common], env=env)
    try:
        topology.join_taps(topo, TAP, "floor")
        yield [client.pid, exit_.pid]
    finally:
        lab.stop(client)
        lab.stop(exit_)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=sorted(DIRECTION), required=True)
    parser.add_argument("--tap", default=TAP)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--io", choices=("uvloop", "threads"), default="uvloop")
    args = parser.parse_args()
    key_hex = os.environ.get(KEY_ENV, "")
    if len(key_hex) != 64:
        print(f"floor: {KEY_ENV} must hold a 32-byte key in hex", file=sys.stderr)
        return 2
    key = bytes.fromhex(key_hex)
    if args.io == "threads":
        run_threads(args.role, tap_name=args.tap, host=args.host, port=args.port, mtu=args.mtu,
                    key=key)  # fmt: skip
        return 0
    uvloop.run(
        run(args.role, tap_name=args.tap, host=args.host, port=args.port, mtu=args.mtu, key=key)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
