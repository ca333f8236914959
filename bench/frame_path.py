"""CPU per frame on the single-tunnel data path, in process and deterministic.

Run: ``python -m bench.frame_path [--frames 400] [--burst 64] [--repeats 5] [--callgrind]``.

The real code of the four hops a ping takes (bench/l2_hops.py measures the same hops on the
wire) with in-memory adapters: ``hardware.tap.FakeTap`` for the TAPs and an in-memory
asyncio transport under the real websockets connections (``BrowserLikeConnection`` on the
client, ``GuardedConnection`` past its gate on the exit), real sessions from a full hybrid
handshake (``l2bridge.protocol.pair``), the client's ``Client`` pump, the exit's
``Switchboard`` and ``Switch``:

- ``client_tap_to_wire``: the client's TAP reader callback reads a frame, the link seals
  it and the WebSocket frames and masks it onto the transport;
- ``exit_wire_to_tap``: the exit's connection parses the message, the session opens it,
  the switch forwards it, the frame is written to the exit's TAP;
- ``exit_tap_to_wire``: the exit's TAP reader callback reads the reply, the switch sends
  it to the client's port, the link seals it onto the transport;
- ``client_wire_to_tap``: the client's connection parses it, opens it, writes the TAP.

``single``: frames of 1,514 bytes (MTU 1500) one at a time, each alone in its record (the
idle, latency case: the link's coalescing window is reset before each, as an idle link's
would be). ``burst``: ``--burst`` frames arrive together, one read batch and one record
(the throughput case). Reports CPU µs per frame per hop (``time.thread_time`` over
``--frames`` frames, ``--repeats`` repetitions: the range over them).

``--callgrind``: runs itself under valgrind's callgrind (``--dump-before=getppid``: the
bench calls ``os.getppid()`` right before and right after each hop's bounded loop, so each
dump holds exactly one hop's instructions) and reports instructions per frame per hop:
the same on every run of the same code, whatever else the machine does.

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.client import ClientProtocol
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from exitnode import constants as exit_constants
from exitnode.switch import PortPolicy, Switch
from exitnode.switchboard import Switchboard
from hardware.tap import FakeTap
from l2bridge.client.pump import Client
from l2bridge.commands.common import event_loop_factory
from l2bridge.node.link import MAX_EXIT_MESSAGE_SIZE, MAX_MESSAGE_SIZE, Link
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.pair import SessionPair
from l2bridge.transport.client import BrowserLikeConnection
from l2bridge.transport.server import GuardedConnection, _Mode

HOPS = ("client_tap_to_wire", "exit_wire_to_tap", "exit_tap_to_wire", "client_wire_to_tap")
A = bytes.fromhex("02000000000a")  # a station on the client's LAN
B = bytes.fromhex("02000000000b")  # a station on the exit's LAN
FRAME_LEN = 1514  # Ethernet frame of a 1500-byte MTU


def ethernet(dst: bytes, src: bytes, n: int = FRAME_LEN) -> bytes:
    """A plain IPv4 frame as the kernel hands it to a plain TAP (no offload header)."""
    return dst + src + b"\x08\x00" + bytes(n - 14)


class MemoryTransport(asyncio.Transport):
    """The socket under a websockets connection: writes are kept, as the kernel would."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))  # the kernel copies it too

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class Path:
    """One client and one exit joined by in-memory WebSocket transports."""

    def __init__(self) -> None:
        pair = SessionPair.connect(now=time.time())
        # Client side.
        self.client_tap = FakeTap("bench-c")
        self.client_wire = MemoryTransport()
        cws = BrowserLikeConnection(
            ClientProtocol(parse_uri("wss://exit.example/ws"), max_size=MAX_EXIT_MESSAGE_SIZE,
                           state=OPEN),
            ping_interval=None,
        )  # fmt: skip
        cws.direct_messages = True
        cws.connection_made(self.client_wire)
        self.client_ws = cws
        self.client_link = Link(cws, pair.client, is_client=True, keepalive_s=None,
                                liveness_s=None)  # fmt: skip
        self.client = Client(self.client_tap, self._no_connect, Metrics("client"))
        # Exit side: past the gate, as an admitted connection is.
        self.exit_tap = FakeTap("bench-x")
        self.exit_wire = MemoryTransport()
        xws = GuardedConnection(
            ServerProtocol(max_size=MAX_MESSAGE_SIZE, state=OPEN),
            None,
            ping_interval=None,
        )
        xws.direct_messages = True
        xws._mode = _Mode.WEBSOCKET
        # The library's own connection_made (the server's would start a handler task).
        Connection.connection_made(xws, self.exit_wire)
        self.exit_ws = xws
        self.exit_link = Link(xws, pair.exit, is_client=False, keepalive_s=None,
                              liveness_s=None)  # fmt: skip
        self.board = Switchboard(Switch(), Metrics("exit"), local=self.exit_tap)

    @staticmethod
    async def _no_connect() -> Any:
        raise RuntimeError("bench: links are made by hand")

    async def start(self) -> None:
        self.client_link.start()
        self.exit_link.start()
        # The client pump's state while a direct link is up (Client._serve).
        self.client._link = self.client._direct = self.client_link
        self.client_link.deliver_to(self.client._to_tap)
        # The exit's LAN port (Switchboard.run) and the client's port (serve_link).
        lan = PortPolicy(vlans=None, max_macs=exit_constants.MAX_MACS, enforce_max_macs=False)
        self.board.switch.attach(exit_constants.LOCAL_PORT, lan, time.monotonic())
        self._port = asyncio.ensure_future(
            self.board.serve_link(self.exit_link, "bench", PortPolicy(), owner="bench")
        )
        for _ in range(5):
            await asyncio.sleep(0)
        # Learn both stations: A behind the client, B on the exit's LAN.
        self.client_tap.inject(ethernet(B, A))
        self.client._on_readable()
        self.exit_ws.data_received(b"".join(self.client_wire.take()))
        self.exit_tap.delivered()
        self.exit_tap.inject(ethernet(A, B))
        self.board._local_readable()
        self.client_ws.data_received(b"".join(self.exit_wire.take()))
        got = self.client_tap.delivered()
        assert len(got) == 1 and got[0][:6] == A, "the bench path does not forward"

    async def close(self) -> None:
        """As if both sockets were gone; every task of the links and the port ends."""
        for ws, wire in ((self.client_ws, self.client_wire), (self.exit_ws, self.exit_wire)):
            wire.close()
            Connection.connection_lost(ws, None)  # the exit's gate has nothing to release
        self._port.cancel()
        await asyncio.wait([self._port], timeout=5)
        for link in (self.client_link, self.exit_link):
            await asyncio.wait_for(link.wait_closed(), 5)
        self.client_tap.close()
        self.exit_tap.close()

    def idle(self) -> None:
        """As if the link had been idle: the next frame goes out alone, at once."""
        self.client_link._last_write = self.exit_link._last_write = 0.0


Step = Callable[[], None]


def hop_steps(path: Path, n: int, burst: int) -> dict[str, tuple[Callable[[], None], Step]]:
    """For each hop: (prepare, run). ``prepare`` (untimed) sets up ``n`` frames' input;
    ``run`` carries them through the hop."""
    up, down = ethernet(B, A), ethernet(A, B)
    single = burst == 1
    state: dict[str, list[bytes]] = {}

    def tap_in(tap: FakeTap, frame: bytes, read: Callable[[], None]) -> Step:
        def run() -> None:
            for _ in range(n // burst):
                if single:
                    path.idle()
                for _ in range(burst):
                    tap.inject(frame)
                read()

        return run

    def wire_in(ws: Any, key: str) -> Step:
        def run() -> None:
            feed = ws.data_received
            for chunk in state[key]:
                feed(chunk)

        return run

    def prep_wire(key: str, wire: MemoryTransport, after: Callable[[], None]) -> Callable[[], None]:
        def prepare() -> None:
            # The hop before this one produced these; group per record as the socket
            # would read them (one record's WebSocket frame per read when single).
            state[key] = [bytes(b"".join(c)) for c in _group(wire.take(), 1)]
            after()

        return prepare

    def drain_exit_tap() -> None:
        path.exit_tap.delivered()  # what the exit wrote to its LAN (untimed)

    return {
        "client_tap_to_wire": (
            lambda: None,
            tap_in(path.client_tap, up, path.client._on_readable),
        ),
        "exit_wire_to_tap": (
            prep_wire("up", path.client_wire, lambda: None),
            wire_in(path.exit_ws, "up"),
        ),
        "exit_tap_to_wire": (
            drain_exit_tap,
            tap_in(path.exit_tap, down, path.board._local_readable),
        ),
        "client_wire_to_tap": (
            prep_wire("down", path.exit_wire, lambda: None),
            wire_in(path.client_ws, "down"),
        ),
    }


def _group(chunks: list[bytes], size: int) -> list[list[bytes]]:
    return [chunks[i : i + size] for i in range(0, len(chunks), size)]


async def measure(frames: int, burst: int, repeats: int, marks: bool) -> dict[str, list[float]]:
    """CPU µs per frame per hop, one figure per repetition."""
    path = Path()
    await path.start()
    out: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for rep in range(repeats + 1):  # the first round warms up and is not reported
        steps = hop_steps(path, frames, burst)
        for hop in HOPS:
            prepare, run = steps[hop]
            prepare()
            if marks:
                os.getppid()  # callgrind dump: everything before this hop
            t0 = time.thread_time()
            run()
            t1 = time.thread_time()
            if marks:
                os.getppid()  # callgrind dump: this hop
            if rep:
                out[hop].append((t1 - t0) * 1e6 / frames)
        # Let the loop run the callbacks the hops scheduled (none on this path normally).
        await asyncio.sleep(0)
        path.client_tap.delivered()
    delivered = path.board.metrics.counters.frames_out
    await path.close()
    assert delivered >= frames * (repeats + 1), "frames were lost on the bench path"
    return out


def callgrind(frames: int, burst: int) -> dict[str, float]:
    """Instructions per frame per hop from one run under callgrind (the measured round)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "cg.out")
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={base}",
            "--dump-before=getppid", "--dump-instr=no", "--compress-strings=no",
            sys.executable, "-m", "bench.frame_path", "--inner-marks",
            "--frames", str(frames), "--burst", str(burst), "--repeats", "1",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        totals = []
        for name in sorted(glob.glob(base + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
            with open(name) as f:
                m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            totals.append(int(m.group(1)) if m else 0)
    # Dumps: [start-up + warm-up round: 8 dumps] then per hop (prepare, hop) for the
    # measured round. Each hop's instructions are in the dump its closing mark triggers.
    per_round = 2 * len(HOPS)
    measured = totals[per_round : 2 * per_round]
    return {hop: round(measured[2 * i + 1] / frames) for i, hop in enumerate(HOPS)}


def run(work: Any) -> Any:
    """On the nodes' event loop (uvloop unless SHADOWMESH_EVENT_LOOP=asyncio)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=400, help="frames per hop and repeat")
    parser.add_argument("--burst", type=int, default=64, help="frames per batch (burst case)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--callgrind", action="store_true", help="instruction counts too")
    parser.add_argument("--callgrind-frames", type=int, default=128)
    parser.add_argument("--inner-marks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    frames = args.frames - args.frames % args.burst
    if args.inner_marks:
        run(measure(frames, args.burst, args.repeats, True))
        return
    result: dict[str, Any] = {"bench": "frame_path", "frames": frames, "repeats": args.repeats}
    for case, burst in (("single", 1), ("burst", args.burst)):
        figures = run(measure(frames, burst, args.repeats, False))
        result[case] = {hop: [round(min(v), 2), round(max(v), 2)] for hop, v in figures.items()}
        total = [sum(v[i] for v in figures.values()) for i in range(args.repeats)]
        result[case]["all_hops"] = [round(min(total), 2), round(max(total), 2)]
        print(f"{case} (burst {burst}): CPU µs per frame, range over {args.repeats} repeats")
        for hop, v in result[case].items():
            print(f"  {hop:20s} {v[0]:8.2f} - {v[1]:8.2f}")
    if args.callgrind:
        n = args.callgrind_frames - args.callgrind_frames % args.burst
        for case, burst in (("single", 1), ("burst", args.burst)):
            ir = callgrind(n, burst)
            ir["all_hops"] = sum(ir.values())
            result[f"{case}_instructions"] = ir
            print(f"{case}: instructions per frame (callgrind, {n} frames): {ir}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
