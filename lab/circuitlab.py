"""Relaying exits on loopback for tests and benchmarks: the real transport, handshake,
links, Relay and Switchboard, in one process.

Each ``RelayExit`` serves tunnels like ``ExitNode`` does (``tunnel.serve`` behind the decoy
site, its Authorizer, then ``Relay.admit``: circuit links to the relay, others to the
switch), with an in-memory FakeTap as its LAN, so the tail's segment can be watched.
Every exit admits the client and every other exit (their identities on its allow-list:
the role ``keys.relay_certificate`` plays in a deployment). ``fake_provider`` /
``fake_checker`` stand in for TPM evidence where no swtpm runs: a hash over exactly what
real evidence must cover (the bound nonce and the nodeId), so a hop that answers for another
exchange is still refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.server import Server

from attestation.eventlog import BootPolicy
from attestation.policy import GoldenPolicy
from attestation.runtime_policy import RuntimePolicy
from exitnode import departures
from exitnode.constants import NEXT_LINK_IDLE_S
from exitnode.relay import Relay
from exitnode.switch import PortPolicy, Switch
from exitnode.switchboard import Switchboard
from hardware import netns
from hardware.tap import FakeTap, FrameDevice, TapConfig, open_tap
from l2bridge.client.circuit import CircuitBuilder, Hop
from l2bridge.client.failover import DialSettings
from l2bridge.client.pump import Backoff, Client
from l2bridge.client.selection import Candidate, SelectionPolicy
from l2bridge.commands.common import event_loop_factory
from l2bridge.constants import Mode
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node import allocator
from l2bridge.node import link as tunnel
from l2bridge.node.credfiles import load_master_key, load_table, load_wallet
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.handshake import ClientHandshake, EvidenceProvider, ServerHandshake
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.server import ServerSettings
from lab.credlab import LAB_EXITS, ExitCredentials, LabWallet, lab_exit, write_device

CLIENT = HybridSigningKey.generate()
ANY = PortPolicy(vlans=None)
CLIENT_WALLET = LabWallet(CLIENT.node_id, "client")


def fake_provider(nonce: bytes, node_id: bytes) -> bytes:
    return b"EV" + hashlib.sha256(nonce + node_id).digest()


def fake_checker(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
    if evidence != fake_provider(nonce, node_id):
        raise ValueError("evidence does not cover this exchange")


@dataclass
class RelayExit:
    identity: HybridSigningKey
    allow: AllowList
    provider: EvidenceProvider | None = fake_provider
    mode: Mode = Mode.HYBRID
    creds: ExitCredentials | None = None  # this exit's master key and table
    wallet: CredentialWallet | None = None  # its own credentials for the hops it extends to
    url: str = ""
    metrics: Metrics = field(default_factory=lambda: Metrics("exit"))
    tap: FrameDevice = field(default_factory=FakeTap)
    relay: Relay | None = None
    next_link_idle_s: float = NEXT_LINK_IDLE_S
    server: Server | None = None
    links: list[tunnel.Link] = field(default_factory=list)

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    async def start(self, port: int = 0) -> RelayExit:
        board = Switchboard(Switch(), self.metrics, local=self.tap)
        if self.creds is None:
            self.creds = lab_exit(self.node_id)
        if self.wallet is None:
            self.wallet = LabWallet(self.node_id, "relay")
        self.relay = Relay(
            self.identity, self.metrics, mode=self.mode, board=board, policy=ANY,
            evidence_provider=self.provider, decide_s=0.5, credentials=self.wallet,
            next_link_idle_s=self.next_link_idle_s,
        )  # fmt: skip
        self._stop = asyncio.Event()
        self._board_task = asyncio.ensure_future(board.run(self._stop))

        async def on_link(link: tunnel.Link) -> None:
            self.links.append(link)
            assert self.relay is not None
            port_link = await self.relay.admit(link)
            if port_link is not None:
                await board.serve_link(port_link, "device", ANY)

        settings = ServerSettings(
            DecoySite.builtin(), "/ws", self.creds.verifier(), header_timeout=2.0
        )
        self.server = await tunnel.serve(
            on_link,
            settings,
            lambda: ServerHandshake(
                self.identity, Authorizer(allow_list=self.allow), modes=(self.mode,)
            ),
            host="127.0.0.1",
            port=port,
        )
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ws"
        return self

    def lan_frames(self) -> list[bytes]:
        """What this exit put on its LAN (an in-memory TAP) since the last call, less its
        notices to other exits on the LAN (``exitnode.departures``)."""
        assert isinstance(self.tap, FakeTap)
        return [f for f in self.tap.delivered() if not departures.is_notice_frame(f)]

    async def kill(self) -> None:
        """Stop serving and drop every link, as a crashed exit does."""
        assert self.server is not None
        self.server.close()
        for link in self.links:
            with contextlib.suppress(Exception):
                await link.close()
        if self.relay is not None:
            self.relay.close()  # its links to next hops, idle ones included
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 10)
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._board_task, 5)
        self.tap.close()


async def start_exits(
    n: int,
    mode: Mode = Mode.HYBRID,
    taps: Sequence[FrameDevice] | None = None,
    *,
    next_link_idle_s: float = NEXT_LINK_IDLE_S,
) -> list[RelayExit]:
    keys = [HybridSigningKey.generate() for _ in range(n)]
    allow = AllowList().add(CLIENT.node_id, "client")
    for i, k in enumerate(keys):
        allow = allow.add(k.node_id, f"relay-{i}")
    out = []
    for i, k in enumerate(keys):
        x = RelayExit(k, allow, mode=mode, next_link_idle_s=next_link_idle_s)
        if taps is not None:
            x.tap.close()
            x.tap = taps[i]
        out.append(await x.start())
    return out


def hop_of(x: RelayExit, operator: str = "") -> Hop:
    cand = Candidate(x.node_id, x.url, 900, 0.0, b"", b"")
    return Hop(cand, operator, None)


def dialer(mode: Mode = Mode.HYBRID) -> Callable[[Hop], object]:
    async def dial(hop: Hop) -> tunnel.Link:
        hs = ClientHandshake(CLIENT, mode=mode, pinned_node_id=hop.candidate.node_id)
        node = hop.candidate.node_id
        return await tunnel.connect(
            hop.candidate.endpoint, hs, credential=CLIENT_WALLET.for_exit(node), node_id=node
        )

    return dial


# -- a registry and a circuit builder for the lab (no chain, no TPM) ------------------------


@dataclass(frozen=True)
class LabAk:
    x: bytes = b""
    y: bytes = b""


@dataclass(frozen=True)
class LabRecord:
    """A registry record as ``contracts.client.NodeInfo`` has it (the fields used)."""

    node_id: bytes
    endpoint: str
    operator: str
    last_attestation: int
    reputation: int = 900
    status: str = "active"
    healthy: bool = True
    ak: LabAk = field(default_factory=LabAk)


class Listed(Protocol):
    """An exit as the lab registry lists it (a ``RelayExit`` or one in another process)."""

    @property
    def node_id(self) -> bytes: ...

    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class RemoteExit:
    node_id: bytes
    url: str
    pid: int


class LabRegistry:
    """An in-memory ``RegistryView`` listing the lab's exits, fresh and healthy."""

    def __init__(self, exits: Sequence[Listed], operators: dict[bytes, str] | None = None):
        now = int(time.time())
        ops = operators or {}
        self.records = {
            x.node_id: LabRecord(x.node_id, x.url, ops.get(x.node_id, f"0xop{i}"), now)
            for i, x in enumerate(exits)
        }

    def healthy_nodes(self, min_reputation: int = 0) -> list[bytes]:
        return [n for n, r in self.records.items() if r.reputation >= min_reputation]

    def node(self, node_id: bytes) -> LabRecord:
        return self.records[node_id]


class LabBuilder(CircuitBuilder):
    """``CircuitBuilder`` with the lab's stand-in evidence check instead of a TPM's."""

    def _checker(self, hop: Hop) -> Any:
        return fake_checker


def lab_builder(
    exits: Sequence[Listed],
    hops: int,
    metrics: Metrics | None = None,
    operators: dict[bytes, str] | None = None,
) -> LabBuilder:
    settings = DialSettings(
        identity=CLIENT,
        credentials=CLIENT_WALLET,
        policy=GoldenPolicy(BootPolicy((), ()), RuntimePolicy({}, ())),
    )
    return LabBuilder(
        LabRegistry(exits, operators), settings, SelectionPolicy(min_reputation=0), hops=hops,
        metrics=metrics,
    )  # fmt: skip


# -- a scenario process for namespace tests -----------------------------------------------------


def arranged_operators(node_ids: list[bytes], args: argparse.Namespace) -> dict[bytes, str]:
    """One operator per exit; with ``--shared-operator`` the 2nd and 3rd by nodeId share one."""
    order = sorted(node_ids)
    operators = {node: f"0xop{i}" for i, node in enumerate(order)}
    if args.shared_operator:
        if len(order) < args.hops + 1 or len(order) < 3:
            raise SystemExit("--shared-operator needs at least hops + 1 exits (and 3)")
        operators[order[2]] = operators[order[1]]
    return operators


async def _scenario(args: argparse.Namespace) -> None:
    """Exits bridging ``--exit-bridge``, a client bridging ``--client-bridge``, one circuit.

    Prints JSON lines: ``{"path": [...], "rebuilds": n}`` after each build, ``{"killed":
    id}``. SIGUSR1 kills the middle hop of the circuit in use; SIGTERM stops everything.
    """
    taps: list[FrameDevice] = []
    for i in range(args.exits):
        tap = open_tap(TapConfig(name=f"smx{i}", mtu=args.mtu, offload=args.offload))
        netns.attach(None, tap.name, args.exit_bridge)
        taps.append(tap)
    relays = await start_exits(len(taps), taps=taps)
    metrics = Metrics("client")
    # --shared-operator: equal exits rank by nodeId; the second and third in that order
    # share an operator, so the first circuit is (1st, 2nd, 4th, ...) and, once the 2nd is
    # gone, (1st, 3rd, 4th, ...): the tail stays, and with it the stations its LAN port has
    # learned (all exits' TAPs share one LAN here, and a switch refuses a client port that
    # claims a MAC its LAN port holds).
    operators = arranged_operators([x.node_id for x in relays], args)
    builder = lab_builder(relays, args.hops, metrics, operators)
    client_tap = open_tap(TapConfig(name="smc0", mtu=args.mtu, offload=args.offload))
    netns.attach(None, client_tap.name, args.client_bridge)
    client = Client(
        client_tap, builder.connect, metrics, backoff=Backoff(initial=0.05, maximum=0.2)
    )
    stop = asyncio.Event()
    kills: asyncio.Queue[None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, kills.put_nowait, None)
    loop.add_signal_handler(signal.SIGUSR2, lambda: say(stats=stats()))

    def stats() -> list[dict[str, object]]:
        return [
            {"node": x.node_id.hex()[:16], "tap": getattr(x.tap, "name", ""),
             "frames_in": x.metrics.counters.frames_in,
             "frames_out": x.metrics.counters.frames_out,
             "drops": dict(x.metrics.counters.drops),
             "circuit_drops": [dict(h.circuit.stats.drops) for h in x.relay.hops]
             if x.relay else []}
            for x in relays
        ] + [
            {"client_drops": dict(metrics.counters.drops),
             "circuit_drops": dict(builder.current.drops) if builder.current else {},
             "link": builder.current.link.stats() if builder.current else {}}
        ]  # fmt: skip

    def say(**doc: object) -> None:
        print(json.dumps(doc), flush=True)

    async def report() -> None:
        seen = 0
        while True:
            if builder.builds > seen and client.connected.is_set():
                seen = builder.builds
                path = [h.candidate.node_id.hex()[:16] for h in builder.path]
                say(path=path, rebuilds=builder.rebuilds)
            await asyncio.sleep(0.05)

    async def killer() -> None:
        while True:
            await kills.get()
            if len(builder.path) >= 3:
                middle = builder.path[1].candidate.node_id
                victim = next(x for x in relays if x.node_id == middle)
                await victim.kill()
                say(killed=middle.hex()[:16])

    helpers = [asyncio.ensure_future(report()), asyncio.ensure_future(killer())]
    try:
        await client.run(stop)
    finally:
        for task in helpers:
            task.cancel()
        client_tap.close()
        for x in relays:
            with contextlib.suppress(Exception):
                await x.kill()


async def _child(args: argparse.Namespace) -> None:
    """One relaying exit in its own process (``--processes``): key, master key, credential
    table, its relay credentials and allow-list from ``--dir``; prints ``{"url": ...}``
    once serving; SIGTERM stops it."""
    base = Path(args.dir)
    identity = HybridSigningKey.load(base / f"exit{args.index}.identity")
    allow = AllowList()
    for i, line in enumerate((base / "allow.txt").read_text().split()):
        allow = allow.add(bytes.fromhex(line), f"peer-{i}")
    name = f"exit{args.index}"
    creds = ExitCredentials(
        identity.node_id, load_master_key(base / f"{name}.access.key"),
        load_table(base / f"{name}.credential-table.json"),
    )  # fmt: skip
    # A lone exit (a 1-hop circuit) extends to no one: it holds no relay credential.
    wallet_file = base / f"{name}.credentials.json"
    wallet = load_wallet(wallet_file) if wallet_file.exists() else CredentialWallet()
    tap = open_tap(TapConfig(name=f"smx{args.index}", mtu=args.mtu, offload=args.offload))
    netns.attach(None, tap.name, args.exit_bridge)
    x = RelayExit(identity, allow, creds=creds, wallet=wallet)
    x.tap.close()
    x.tap = tap
    await x.start()
    print(json.dumps({"url": x.url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await x.kill()


async def _scenario_processes(args: argparse.Namespace) -> None:
    """As ``_scenario``, but each exit runs in its own process (``_child``); SIGUSR1
    kills the middle hop's process outright (SIGKILL, as a crash)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        keys = [HybridSigningKey.generate() for _ in range(args.exits)]
        for i, k in enumerate(keys):
            k.save(base / f"exit{i}.identity")
            LAB_EXITS[k.node_id] = ExitCredentials(k.node_id)
        for i, k in enumerate(keys):
            CLIENT_WALLET.for_exit(k.node_id)  # issued before the tables are written
            if len(keys) == 1:
                continue
            write_device(base / f"exit{i}.credentials.json", *(
                LAB_EXITS[o.node_id].issue(k.node_id, f"relay-{i}") for o in keys if o is not k
            ))  # fmt: skip
        for i, k in enumerate(keys):
            LAB_EXITS[k.node_id].write_exit(
                base / f"exit{i}.access.key", base / f"exit{i}.credential-table.json"
            )
        ids = [CLIENT.node_id] + [k.node_id for k in keys]
        (base / "allow.txt").write_text("\n".join(n.hex() for n in ids))
        children = []
        exits: list[RemoteExit] = []
        try:
            for i, k in enumerate(keys):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "lab.circuitlab", "--child", "--index", str(i),
                    "--dir", tmp, "--exit-bridge", args.exit_bridge, "--client-bridge", "-",
                    "--mtu", str(args.mtu), *(["--offload"] if args.offload else []),
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                children.append(proc)
                assert proc.stdout is not None
                url = json.loads(await proc.stdout.readline())["url"]
                exits.append(RemoteExit(k.node_id, url, proc.pid))
            await _run_client(args, exits, children)
        finally:
            for proc in children:
                if proc.returncode is None:
                    proc.terminate()
            for proc in children:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 10)


async def _run_client(
    args: argparse.Namespace, exits: list[RemoteExit], children: list[Any]
) -> None:
    metrics = Metrics("client")
    operators = arranged_operators([x.node_id for x in exits], args)
    builder = lab_builder(exits, args.hops, metrics, operators)
    client_tap = open_tap(TapConfig(name="smc0", mtu=args.mtu, offload=args.offload))
    netns.attach(None, client_tap.name, args.client_bridge)
    client = Client(
        client_tap, builder.connect, metrics, backoff=Backoff(initial=0.05, maximum=0.2)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def kill_middle() -> None:
        if len(builder.path) >= 3:
            middle = builder.path[1].candidate.node_id
            victim = next(p for p, x in zip(children, exits, strict=True) if x.node_id == middle)
            victim.kill()
            print(json.dumps({"killed": middle.hex()[:16]}), flush=True)

    loop.add_signal_handler(signal.SIGUSR1, kill_middle)

    async def report() -> None:
        seen = 0
        while True:
            if builder.builds > seen and client.connected.is_set():
                seen = builder.builds
                path = [h.candidate.node_id.hex()[:16] for h in builder.path]
                print(json.dumps({"path": path, "rebuilds": builder.rebuilds}), flush=True)
            await asyncio.sleep(0.05)

    reporter = asyncio.ensure_future(report())
    try:
        await client.run(stop)
    finally:
        reporter.cancel()
        client_tap.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=_scenario.__doc__)
    parser.add_argument("--exits", type=int, default=4)
    parser.add_argument("--hops", type=int, default=3)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--exit-bridge", required=True)
    parser.add_argument("--client-bridge", required=True)
    parser.add_argument("--shared-operator", action="store_true")
    parser.add_argument(
        "--offload", action="store_true", help="TAPs with virtio-net headers (GSO super-frames)"
    )
    parser.add_argument(
        "--processes", action="store_true", help="each exit in its own process (uses the cores)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The event loop and allocator settings the nodes run with (common.run_node).
    allocator.tune()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        if args.child:
            runner.run(_child(args))
        elif args.processes:
            runner.run(_scenario_processes(args))
        else:
            runner.run(_scenario(args))


if __name__ == "__main__":
    main()
