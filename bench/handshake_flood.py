"""A legitimate client's connects to a real exit while strangers flood it (issue 12, item 4).

    python bench/handshake_flood.py [--kinds replay,garbage,insider] [--tasks 8]
                                    [--flood-s 12] [--connects 12] [--pause-s 0.5]
                                    [--attacker-nice 0]

Three processes kinds, all on loopback:

* the **exit** (a child process, so that its CPU time is its own): a real tunnel server
  (``l2bridge.node.link.serve``: gate, decoy, handshake, hello guard) whose attestation
  comes from a real swtpm (enrolled ``ExitLifecycle``, measured boot by the IMA harness).
  Every TPM quote is recorded with its nonce.
* the **legitimate client** (this process): a certified device that asks for attestation on
  every connect (fresh nonce; its checker only requires evidence, the bench measures the
  exit) and connects ``--connects`` times in a row with ``--pause-s`` between, first
  with nobody else (baseline), then during the flood. A connect is timed from the TCP
  connect to the exit's admission record (``link.connect`` returning).
* one **attacker** process per kind in ``--kinds``, ``--tasks`` connections at a time each, for
  ``--flood-s`` seconds (and at most ``MAX_ATTEMPTS_PER_TASK`` connections per task):
  strangers replay an upgrade + attested ClientHello captured from the legitimate client
  (its token is spent), send garbage (random bytes, or an upgrade with a random token and a
  hello); an insider (a device with a credential of its own for this exit, certified or
  not) re-sends the captured hello under fresh tokens of its credential. On one machine the
  attackers' own CPU competes with the exit and the client; ``--attacker-nice`` runs them at a lower
  priority, closer to attackers whose CPU is elsewhere. The exit also reports how late its
  event loop woke a 10 ms timer (p99 / max), which tells its own queueing from the machine's.

Ends with one JSON line: legit connect p50/p99 in ms (baseline and under flood),
``tpm_quotes_for_unauthenticated`` (quotes for any nonce beyond the legitimate client's
one quote per attested hello: must be 0), ``exit_cpu_us_per_rejected_hello`` (the exit's CPU
during the flood, minus what the legitimate connects cost at the baseline rate, per
attacker connection), and the counts. The exit's guard gets ``--quotes-per-minute`` (600 by
default: the legitimate client is one device asking for a quote every connect; the default
of an exit, 6, is what tests/unit/l2bridge/test_helloguard.py checks), and its gate
``--handshakes-per-device`` (600 by default for the same reason; an exit's default is 20);
both are in the JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2bridge.identity.keys import AdminKey, HybridPublicKey, HybridSigningKey
from l2bridge.node.link import MAX_EXIT_MESSAGE_SIZE, Link, connect
from l2bridge.protocol.handshake import ClientHandshake
from l2bridge.transport.client import open_transport
from l2bridge.transport.direct import DirectMessages
from l2bridge.transport.errors import TransportClosed, UpgradeRefused
from l2bridge.transport.token import Credential, mint_token

MAX_ATTEMPTS_PER_TASK = 20_000
ANSWER_TIMEOUT_S = 2.0
EXIT_START_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 20.0
LAG_TICK_S = 0.01


# --- the exit (child process) ---------------------------------------------------------


async def run_exit(admin_public: str, quotes_per_minute: int, per_device: int) -> None:
    """Serve until stdin says ``quit``; ``stats`` prints the quotes and CPU so far."""
    from attestation.tpm import Tpm
    from exitnode.lifecycle import ExitLifecycle
    from hardware.tpm import Swtpm
    from l2bridge.identity.keys import Authorizer
    from l2bridge.node.link import serve
    from l2bridge.protocol.handshake import ServerHandshake
    from l2bridge.protocol.helloguard import HelloGuard
    from l2bridge.transport.decoy import DecoySite
    from l2bridge.transport.server import ServerSettings
    from lab.credlab import ExitCredentials
    from lab.imaharness import EVENT_LOG, IMA_LIST, LAB_CMDLINE, Kernel

    # The devices the operator issued credentials to: the legitimate one and the insider.
    devices = [bytes.fromhex(d) for d in sys.stdin.readline().split()]
    exit_key = HybridSigningKey.generate()
    issuer = ExitCredentials(exit_key.node_id)
    issued = [issuer.issue(d, f"device-{i}").to_json() for i, d in enumerate(devices)]
    authorizer = Authorizer([HybridPublicKey.decode(bytes.fromhex(admin_public))])
    with Swtpm() as tpm, tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        state = Path(tmp)
        with Tpm(tpm.tcti) as kernel_tpm:
            Kernel(kernel_tpm, state).boot(LAB_CMDLINE)
        lifecycle = ExitLifecycle(
            tpm.tcti, exit_key.node_id, state, ima_list=state / IMA_LIST,
            event_log=state / EVENT_LOG, ek_anchors=[tpm.root_ca],
            ek_intermediates=[tpm.intermediate_ca],
        )  # fmt: skip
        lifecycle.start()
        quoted: list[str] = []

        def evidence(nonce: bytes, node_id: bytes) -> bytes:
            quoted.append(nonce.hex())  # each call here asks the TPM for a quote
            return lifecycle.evidence(nonce, node_id)

        guard = HelloGuard(quotes_per_minute=quotes_per_minute)
        verifier = issuer.verifier(per_device=per_device)
        settings = ServerSettings(DecoySite.builtin(), "/ws", verifier)

        async def idle(link: Link) -> None:
            with contextlib.suppress(TransportClosed):
                while True:
                    await link.recv_frames()

        server = await serve(
            idle, settings,
            lambda: ServerHandshake(exit_key, authorizer, evidence_provider=evidence),
            host="127.0.0.1", port=0, hello_guard=guard,
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port, "node_id": exit_key.node_id.hex(),
                          "credentials": issued}), flush=True)  # fmt: skip
        loop = asyncio.get_running_loop()
        lags: list[float] = []  # how late the exit's event loop woke a 10 ms timer

        async def watch_lag() -> None:
            while True:
                start = loop.time()
                await asyncio.sleep(LAG_TICK_S)
                lags.append(loop.time() - start - LAG_TICK_S)

        watcher = asyncio.ensure_future(watch_lag())
        try:
            while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
                if line == "quit":
                    break
                usage = resource.getrusage(resource.RUSAGE_SELF)
                print(json.dumps({
                    "quoted": quoted, "cpu_s": usage.ru_utime + usage.ru_stime,
                    "sys_s": usage.ru_stime, "refused": dict(guard.refused),
                    "gate_refused": {k: v for k, v in verifier.rejected.items() if v},
                    "loop_lag_p99_ms": ms(lags, 0.99), "loop_lag_max_ms": ms(lags, 1.0),
                }), flush=True)  # fmt: skip
                lags.clear()
        finally:
            watcher.cancel()
            server.close()
            await server.wait_closed()
            lifecycle.close()


# --- attackers (child processes) --------------------------------------------------------


async def one_exchange(port: int, data: bytes) -> None:
    """Send ``data`` on a new connection and read until the answer's head or a close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = b""
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while b"\r\n\r\n" not in answer and (chunk := await reader.read(4096)):
                answer += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def garbage(replay: bytes) -> bytes:
    if random.random() < 0.5:
        return os.urandom(random.randint(16, 2048))
    # An upgrade like the captured one with a random token, and the captured hello.
    head, _, rest = replay.partition(b"\r\n\r\n")
    token = base64.urlsafe_b64encode(os.urandom(48)).rstrip(b"=")
    lines = [
        b"Sec-WebSocket-Protocol: " + token if line.startswith(b"Sec-WebSocket-Protocol:") else line
        for line in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


async def insider_duplicate(url: str, credential: Credential, hello: bytes) -> None:
    token = mint_token(credential, time.time())
    ws = await open_transport(url, token, max_size=MAX_EXIT_MESSAGE_SIZE, direct=True)
    assert isinstance(ws, DirectMessages)
    try:
        ws.write_binary(hello)
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            await ws.next_message()  # the exit closes it: TransportClosed
        raise AssertionError("the exit answered a duplicate hello")
    finally:
        await ws.close()  # type: ignore[attr-defined]


async def run_attacker(kind: str, port: int, tasks: int, seconds: float, capture: Path) -> None:
    doc = json.loads(capture.read_text())
    replay = bytes.fromhex(doc["replay"])
    hello = bytes.fromhex(doc["hello"])
    line = sys.stdin.readline().strip()
    credential = Credential.from_json(json.loads(line)) if kind == "insider" else None
    url = f"ws://127.0.0.1:{port}/ws"
    counts = {"attempts": 0, "errors": 0, "upgraded": 0}
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        for _ in range(MAX_ATTEMPTS_PER_TASK):
            if time.monotonic() >= deadline:
                return
            try:
                if kind == "replay":
                    await one_exchange(port, replay)
                elif kind == "garbage":
                    await one_exchange(port, garbage(replay))
                else:
                    assert credential is not None
                    await insider_duplicate(url, credential, hello)
            except TransportClosed:
                pass  # refused without an answer, as it should be
            except (OSError, TimeoutError, UpgradeRefused):
                counts["errors"] += 1
            counts["attempts"] += 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    print(json.dumps(counts), flush=True)


# --- the legitimate client and the orchestration ----------------------------------------


class Recorder:
    """A TCP relay that keeps the client's bytes (to capture one connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up = bytearray()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exit_reader, exit_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if keep:
                        self.up += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, exit_writer, True), pipe(exit_reader, writer, False))


def first_frame(stream: bytes) -> tuple[int, bytes]:
    """End offset and unmasked payload of the first WebSocket frame after the HTTP head."""
    pos = stream.index(b"\r\n\r\n") + 4
    second = stream[pos + 1]
    length, pos = second & 0x7F, pos + 2
    if length in (126, 127):
        size = 2 if length == 126 else 8
        length, pos = int.from_bytes(stream[pos : pos + size], "big"), pos + size
    mask, pos = stream[pos : pos + 4], pos + 4
    payload = bytes(a ^ b for a, b in zip(stream[pos : pos + length], itertools.cycle(mask)))
    return pos + length, payload


class Legit:
    """The legitimate device: certified by ``admin``, dials the exit at ``port``."""

    def __init__(self, admin: AdminKey) -> None:
        self.credential: Credential | None = None  # issued by the exit once it is up
        self.port, self.node_id = 0, b""  # once the exit is up
        self.device = HybridSigningKey.generate()
        now = int(time.time())
        self.cert = admin.issue(self.device.public, "bench", "bench", now - 60, now + 7200)
        self.nonces: list[str] = []  # one quote each, when the exit answered with evidence

    def handshake(self) -> ClientHandshake:
        nonce = os.urandom(32)

        def checker(evidence: bytes, n: bytes, node: bytes) -> None:
            if not evidence:
                raise ValueError("no evidence")
            self.nonces.append(n.hex())

        return ClientHandshake(
            self.device, certificate=self.cert, pinned_node_id=self.node_id,
            attestation_nonce=nonce, evidence_checker=checker,
        )  # fmt: skip

    async def connect_once(self, port: int | None = None) -> float:
        url = f"ws://127.0.0.1:{port or self.port}/ws"
        start = time.perf_counter()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            link = await connect(
                url, self.handshake(), credential=self.credential, node_id=self.node_id
            )
        elapsed = time.perf_counter() - start
        await link.close()
        return elapsed

    async def series(self, count: int, pause_s: float) -> tuple[list[float], int]:
        times, failures = [], 0
        for _ in range(count):
            try:
                times.append(await self.connect_once())
            except Exception:  # counted: a legitimate connect that failed under flood
                failures += 1
            await asyncio.sleep(pause_s)
        return times, failures

    async def capture(self, path: Path) -> None:
        recorder = Recorder(self.port)
        server = await asyncio.start_server(recorder.relay, "127.0.0.1", 0)
        try:
            await self.connect_once(server.sockets[0].getsockname()[1])
            await asyncio.sleep(0.2)
        finally:
            server.close()
        end, hello = first_frame(bytes(recorder.up))
        path.write_text(json.dumps({
            "replay": bytes(recorder.up[:end]).hex(), "hello": hello.hex(),
            "node_id": self.node_id.hex(),
        }))  # fmt: skip


def ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def ask(proc: asyncio.subprocess.Process, line: str) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line.encode() + b"\n")
    await proc.stdin.drain()
    doc: dict[str, Any] = json.loads(await proc.stdout.readline())
    return doc


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k for k in args.kinds.split(",") if k]
    me = [sys.executable, str(Path(__file__).resolve())]
    admin = AdminKey(HybridSigningKey.generate())
    legit = Legit(admin)
    insider = HybridSigningKey.generate()
    exit_proc = await asyncio.create_subprocess_exec(
        *me, "--role", "exit", "--admin", admin.public.encode().hex(),
        "--quotes-per-minute", str(args.quotes_per_minute),
        "--handshakes-per-device", str(args.handshakes_per_device),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    attackers: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        try:
            assert exit_proc.stdin is not None and exit_proc.stdout is not None
            devices = f"{legit.device.node_id.hex()} {insider.node_id.hex()}\n"
            exit_proc.stdin.write(devices.encode())
            await exit_proc.stdin.drain()
            async with asyncio.timeout(EXIT_START_TIMEOUT_S):
                ready = json.loads(await exit_proc.stdout.readline())
            legit.port, legit.node_id = ready["port"], bytes.fromhex(ready["node_id"])
            legit.credential = Credential.from_json(ready["credentials"][0])
            insider_line = json.dumps(ready["credentials"][1]).encode() + b"\n"
            capture = Path(tmp) / "capture.json"
            await legit.capture(capture)
            await legit.connect_once()  # warm both ends up

            before = await ask(exit_proc, "stats")
            baseline, baseline_failed = await legit.series(args.connects, args.pause_s)
            after_baseline = await ask(exit_proc, "stats")
            cpu_per_connect = (after_baseline["cpu_s"] - before["cpu_s"]) / max(1, len(baseline))

            for kind in kinds:
                proc = await asyncio.create_subprocess_exec(
                    "nice", "-n", str(args.attacker_nice), *me, "--role", "attack",
                    "--kind", kind, "--port", str(legit.port),
                    "--tasks", str(args.tasks), "--flood-s", str(args.flood_s),
                    "--capture", str(capture), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )  # fmt: skip
                assert proc.stdin is not None
                proc.stdin.write(insider_line if kind == "insider" else b"\n")
                await proc.stdin.drain()
                attackers.append(proc)
            flood_start = time.monotonic()
            await asyncio.sleep(0.5)  # the attackers are at full speed
            flood: list[float] = []
            flood_failed = 0
            while time.monotonic() - flood_start < args.flood_s - 1.0:
                times, failed = await legit.series(1, args.pause_s)
                flood += times
                flood_failed += failed
            results = []
            for proc in attackers:
                assert proc.stdout is not None
                results.append(json.loads(await proc.stdout.readline()))
                await proc.wait()
            after_flood = await ask(exit_proc, "stats")
        finally:
            for proc in [*attackers, exit_proc]:
                if proc.returncode is None and proc.stdin is not None:
                    with contextlib.suppress(Exception):
                        proc.stdin.write(b"quit\n")
                        await proc.stdin.drain()
            for proc in [*attackers, exit_proc]:
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    quoted = after_flood["quoted"]
    legit_nonces = set(legit.nonces)
    unauthenticated = len(quoted) - len([n for n in set(quoted) if n in legit_nonces])
    attempts = sum(r["attempts"] for r in results)
    flood_cpu = after_flood["cpu_s"] - after_baseline["cpu_s"]
    attack_cpu = max(0.0, flood_cpu - cpu_per_connect * len(flood))
    flood_sys = after_flood["sys_s"] - after_baseline["sys_s"]
    by_kind = {kind: r["attempts"] for kind, r in zip(kinds, results, strict=True)}
    return {
        "bench": "handshake_flood",
        "attacker_kinds": kinds,
        "tasks_per_attacker": args.tasks,
        "flood_s": args.flood_s,
        "baseline_connect_p50_ms": ms(baseline, 0.5),
        "baseline_connect_p99_ms": ms(baseline, 0.99),
        "legit_connect_p50_ms": ms(flood, 0.5),
        "legit_connect_p99_ms": ms(flood, 0.99),
        "legit_connect_max_ms": ms(flood, 1.0),
        "legit_connects": {"baseline": len(baseline), "flood": len(flood)},
        "legit_connects_failed": {"baseline": baseline_failed, "flood": flood_failed},
        "tpm_quotes_total": len(quoted),
        "tpm_quotes_for_unauthenticated": unauthenticated,
        "exit_cpu_us_per_rejected_hello": round(attack_cpu / max(1, attempts) * 1e6, 1),
        # the kernel's share (TCP set-up and tear-down; loopback sends are charged here)
        "exit_sys_share_during_flood": round(flood_sys / flood_cpu, 2) if flood_cpu else None,
        "exit_cpu_ms_per_legit_connect": round(cpu_per_connect * 1000, 2),
        "rejected_attempts": attempts,
        "rejected_attempts_by_kind": by_kind,
        "attacker_errors": sum(r["errors"] for r in results),
        "exit_hello_guard_refusals": after_flood["refused"],
        "exit_gate_refusals": after_flood["gate_refused"],
        "quotes_per_minute": args.quotes_per_minute,
        "handshakes_per_device": args.handshakes_per_device,
        "attacker_nice": args.attacker_nice,
        "exit_loop_lag_ms": {
            "baseline_p99": after_baseline["loop_lag_p99_ms"],
            "flood_p99": after_flood["loop_lag_p99_ms"],
            "flood_max": after_flood["loop_lag_max_ms"],
        },
        "legit_connect_stdev_ms": round(statistics.pstdev(flood) * 1000, 1) if flood else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "exit", "attack"), default="bench")
    parser.add_argument("--kinds", default="replay,garbage,insider")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--flood-s", type=float, default=12.0)
    parser.add_argument("--connects", type=int, default=12)
    parser.add_argument("--pause-s", type=float, default=0.5)
    parser.add_argument("--quotes-per-minute", type=int, default=600)
    parser.add_argument("--handshakes-per-device", type=int, default=600)
    parser.add_argument("--attacker-nice", type=int, default=0, choices=range(20))
    parser.add_argument("--admin", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--capture", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "exit":
        asyncio.run(run_exit(args.admin, args.quotes_per_minute, args.handshakes_per_device))
    elif args.role == "attack":
        asyncio.run(run_attacker(args.kind, args.port, args.tasks, args.flood_s, args.capture))
    else:
        if not 0 < args.flood_s <= 120 or not 0 < args.connects <= 200:
            parser.error("--flood-s must be in (0, 120] and --connects in (0, 200]")
        if not set(args.kinds.split(",")) <= {"replay", "garbage", "insider", ""}:
            parser.error("--kinds: replay, garbage, insider (comma-separated; empty: none)")
        print(json.dumps(asyncio.run(orchestrate(args))))


if __name__ == "__main__":
    main()
