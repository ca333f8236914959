"""The clients of ``bench/load.py``: N real frame pumps in one process, one identity each.

Runs inside the clients' namespace: ``python bench/load_clients.py PLAN.json``. Each client
is the product's ``l2bridge.client.pump.Client`` on an in-memory TAP, with its own
certified identity, dialling the exits in turn (the next one first after a drop), with the
configured keepalive / liveness. A generator injects frames into the TAPs at a fixed total
rate; each carries (phase, client, seq, CLOCK_MONOTONIC ns) for the sink.

Talks to the orchestrator in lines: JSON events on stdout, commands on stdin:
``phase N`` (label frames from now on), ``probe EXIT K ATTEST`` (K extra connects, their
times), ``mark`` (remember now; later ``moves`` report per-client link ends and new
connections after it), ``moves SECONDS``, ``gone CLIENT SECONDS`` (until that client's
link ends), ``garbage EXIT``, ``flood EXIT N``, ``counts``, ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

from hardware.tap import FakeTap
from l2bridge.client.pump import Backoff, Client
from l2bridge.errors import L2BridgeError
from l2bridge.identity.keyfiles import load_certificate
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node.credfiles import load_wallet
from l2bridge.node.link import Link, connect
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.handshake import ClientHandshake
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.token import Credential

ETHERTYPE = 0x88B5
SINK_MAC = bytes.fromhex("025e00000001")
HEADER = struct.Struct("!BHIQ")
FRAME_BYTES = 128
TICK_S = 0.01
DIAL_TIMEOUT_S = 5.0


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


class Exit:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.url: str = doc["url"]
        self.node_id = bytes.fromhex(doc["node_id"])


def _credential(directory: Path, name: str, exit_: Exit) -> Credential | None:
    wallet: CredentialWallet = load_wallet(directory / f"{name}.credentials.json")
    return wallet.for_exit(exit_.node_id)


class LoadClient:
    """One client: its identity, TAP, pump, and the history of its links."""

    def __init__(self, index: int, plan: dict[str, Any], exits: list[Exit]):
        directory = Path(plan["dir"])
        self.index = index
        self.identity = HybridSigningKey.load(directory / f"c{index}.identity")
        self.certificate = load_certificate(directory / f"c{index}.cert")
        self.exits = exits
        self.credentials = load_wallet(directory / f"c{index}.credentials.json")
        self.keepalive, self.liveness = plan["keepalive_s"], plan["liveness_s"]
        self.following = 0
        self.tap = FakeTap(name=f"lc{index}")
        self.mac = bytes([0x02, 0xCC, 0, 0, index >> 8, index & 0xFF])
        self.metrics = Metrics("client")
        self.pump = Client(self.tap, self.dial, self.metrics, backoff=Backoff())
        self.link: Link | None = None
        self.exit_index: int | None = None
        self.connects: list[tuple[float, int]] = []  # (monotonic, exit index)
        self.ends: list[tuple[float, str]] = []  # (monotonic, close reason)
        self.seq = 0

    async def dial(self) -> Link:
        for k in range(len(self.exits)):
            i = (self.following + k) % len(self.exits)
            e = self.exits[i]
            hs = ClientHandshake(
                self.identity, certificate=self.certificate, pinned_node_id=e.node_id
            )
            try:
                async with asyncio.timeout(DIAL_TIMEOUT_S):
                    link = await connect(
                        e.url, hs, credential=self.credentials.for_exit(e.node_id),
                        node_id=e.node_id,
                        keepalive_s=self.keepalive, liveness_s=self.liveness,
                    )  # fmt: skip
            except (OSError, TimeoutError, L2BridgeError):
                continue
            self.following = i + 1
            self.link, self.exit_index = link, i
            self.connects.append((time.monotonic(), i))
            return link
        raise ConnectionError("no exit answers")

    def watch(self) -> None:
        link = self.link
        if link is not None and link.close_reason is not None:
            self.ends.append((link.ended_at or time.monotonic(), link.close_reason))
            self.link = None

    def frame(self, phase: int) -> bytes:
        self.seq += 1
        header = HEADER.pack(phase, self.index, self.seq, time.monotonic_ns())
        body = SINK_MAC + self.mac + struct.pack("!H", ETHERTYPE) + header
        return body + b"\x00" * (FRAME_BYTES - len(body))


async def generate(clients: list[LoadClient], rate: float, state: dict[str, Any]) -> None:
    """Inject ``rate`` frames/s in total, round robin, until cancelled."""
    owed, i, last = 0.0, 0, time.monotonic()
    while True:
        await asyncio.sleep(TICK_S)
        now = time.monotonic()
        owed += (now - last) * rate
        last = now
        phase = state["phase"]
        while owed >= 1:
            c = clients[i % len(clients)]
            c.tap.inject(c.frame(phase))
            state["sent"][phase] = state["sent"].get(phase, 0) + 1
            owed -= 1
            i += 1
        for c in clients:
            c.watch()
        if int(now) != state.get("drained"):
            state["drained"] = int(now)
            for c in clients:
                c.tap.delivered()  # floods and the sink's announcements: not ours to keep


async def probe(plan: dict[str, Any], exit_: Exit, count: int, attest: bool):
    """``count`` extra connects at once from spare identities; (ms each, outcomes)."""
    directory = Path(plan["dir"])

    def evidence_present(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
        if not evidence:
            raise ValueError("no evidence (TPM lost)")

    async def one(n: int) -> tuple[float, str]:
        identity = HybridSigningKey.load(directory / f"p{n}.identity")
        cert = load_certificate(directory / f"p{n}.cert")
        hs = ClientHandshake(identity, certificate=cert, pinned_node_id=exit_.node_id)
        if attest:
            hs = ClientHandshake(
                identity, certificate=cert, pinned_node_id=exit_.node_id,
                attestation_nonce=os.urandom(32), evidence_checker=evidence_present,
            )  # fmt: skip
        start = time.monotonic()
        try:
            async with asyncio.timeout(20):
                link = await connect(
                    exit_.url, hs, credential=_credential(directory, f"p{n}", exit_),
                    node_id=exit_.node_id,
                )  # fmt: skip
        except L2BridgeError as exc:
            return (time.monotonic() - start) * 1000, type(exc).__name__
        except (OSError, TimeoutError) as exc:
            return (time.monotonic() - start) * 1000, type(exc).__name__
        ms = (time.monotonic() - start) * 1000
        await link.close()
        return ms, "connected"

    return await asyncio.gather(*(one(n) for n in range(count)))


async def garbage(plan: dict[str, Any], exit_: Exit, seconds: float):
    """A certified device that, once its tunnel is up, sends random records at line rate."""
    directory = Path(plan["dir"])
    identity = HybridSigningKey.load(directory / "p0.identity")
    cert = load_certificate(directory / "p0.cert")
    hs = ClientHandshake(identity, certificate=cert, pinned_node_id=exit_.node_id)
    credential = _credential(directory, "p0", exit_)
    link = await connect(exit_.url, hs, credential=credential, node_id=exit_.node_id)
    ws = link._ws  # the raw socket under the session: records nobody sealed
    blob = os.urandom(1 << 16)
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < seconds and link.close_reason is None:
        try:
            ws.write_binary(blob[: random.randint(16, 1 << 16)])
        except Exception:  # written after the exit dropped us
            break
        sent += 1
        if ws.write_paused:
            await ws.drain()
        else:
            await asyncio.sleep(0)
    dropped_after = time.monotonic() - start
    await link.close()
    ended_by_exit = link.close_reason != "closed"
    return {"garbage_records_sent": sent, "garbage_link_ended_by_exit": ended_by_exit,
            "garbage_s": round(dropped_after, 2)}  # fmt: skip


async def flood(exit_: Exit, count: int) -> dict[str, Any]:
    """``count`` connections opened at once, each asking for the site's front page."""
    host, port = exit_.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)

    async def one() -> str:
        try:
            async with asyncio.timeout(15):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                line = await reader.readline()
                writer.close()
                return "answered" if line.startswith(b"HTTP/1.1 ") else "closed"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return type(exc).__name__

    start = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(count)))
    counts = {k: results.count(k) for k in sorted(set(results))}
    return {"flood_connects": count, "flood_outcomes": counts,
            "flood_s": round(time.monotonic() - start, 2)}  # fmt: skip


async def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    exits = [Exit(e) for e in plan["exits"]]
    clients = [LoadClient(i, plan, exits) for i in range(plan["clients"])]
    stop = asyncio.Event()
    state: dict[str, Any] = {"phase": 0, "sent": {}}
    start = time.monotonic()
    pumps = [asyncio.create_task(c.pump.run(stop)) for c in clients]
    while not all(c.pump.connected.is_set() for c in clients):
        await asyncio.sleep(0.01)
        if time.monotonic() - start > 120:
            break
    took = time.monotonic() - start
    connected = sum(c.pump.connected.is_set() for c in clients)
    emit(event="connected", clients=connected, seconds=round(took, 3),
         handshakes_per_s=round(connected / took, 1))  # fmt: skip
    gen = asyncio.create_task(generate(clients, plan["rate"], state))
    mark = time.monotonic()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().split():
            cmd = line[0]
            if cmd == "phase":
                state["phase"] = int(line[1])
                emit(event="phase", phase=state["phase"])
            elif cmd == "counts":
                down = sum(c.metrics.counters.drops.get("link_down", 0) for c in clients)
                sent = {str(k): v for k, v in state["sent"].items()}
                emit(event="counts", sent=sent, link_down_drops=down)
            elif cmd == "probe":
                results = await probe(plan, exits[int(line[1])], int(line[2]), line[3] == "1")
                emit(event="probe", ms=[round(ms, 1) for ms, _ in results],
                     outcomes=sorted(o for _, o in results))  # fmt: skip
            elif cmd == "mark":
                mark = float(line[1]) if len(line) > 1 else time.monotonic()
                emit(event="marked")
            elif cmd == "moves":
                limit = time.monotonic() + float(line[1])
                while time.monotonic() < limit and not all(
                    any(t > mark for t, _ in c.connects) for c in clients
                ):
                    await asyncio.sleep(0.02)
                detect = [min(t for t, _ in c.ends if t > mark) - mark for c in clients
                          if any(t > mark for t, _ in c.ends)]  # fmt: skip
                moved = [min(t for t, _ in c.connects if t > mark) - mark for c in clients
                         if any(t > mark for t, _ in c.connects)]  # fmt: skip
                reasons = sorted({r for c in clients for t, r in c.ends if t > mark})
                emit(event="moves", clients=len(clients), moved=len(moved), reasons=reasons,
                     detect_ms_median=percentile([d * 1000 for d in detect], 0.5),
                     detect_ms_max=percentile([d * 1000 for d in detect], 1.0),
                     moved_ms_median=percentile([m * 1000 for m in moved], 0.5),
                     moved_ms_max=percentile([m * 1000 for m in moved], 1.0),
                     on_exit=[sum(c.exit_index == i and c.link is not None for c in clients)
                              for i in range(len(exits))])  # fmt: skip
            elif cmd == "gone":
                # Until client I's link ends (its certificate was just revoked), at most S s.
                c, since = clients[int(line[1])], time.monotonic()
                limit = since + float(line[2])
                while time.monotonic() < limit and not any(t > since for t, _ in c.ends):
                    await asyncio.sleep(0.02)
                ended = [t for t, _ in c.ends if t > since]
                await asyncio.sleep(2.0)  # does it get back in?
                emit(event="gone", ms=round((ended[0] - since) * 1000, 1) if ended else None,
                     reconnected=any(t > since for t, _ in c.connects))  # fmt: skip
            elif cmd == "flood":
                emit(event="flood", **await flood(exits[int(line[1])], int(line[2])))
            elif cmd == "garbage":
                emit(event="garbage", **await garbage(plan, exits[int(line[1])], 2.0))
            elif cmd == "quit":
                break
    finally:
        gen.cancel()
        stop.set()
        await asyncio.gather(*pumps, return_exceptions=True)
        for c in clients:
            c.tap.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
