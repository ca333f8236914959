"""One worker process of an exit with ``network.workers`` (see ``exitnode.workers``).

The worker is an ``ExitNode`` with a TAP of its own in the exit's bridge, serving the
tunnel connections its supervisor accepted and handed to it (``exitnode.handoff``), whose
shared decisions are the supervisor's: the gate's
ledger (``RemoteLedger``), the hello guard (``RemoteHelloGuard``), evidence, the device's
tunnels at other workers (``claim`` / ``release``), its circuit links at every worker
(``RemoteDeviceLinks``, with ``endpoints.relay``) and the clock (``RemoteClock``). A call
that cannot reach the supervisor fails closed: the token, hello or circuit link is refused,
evidence is "busy" (the client tries another exit). The supervisor's commands (peers, disconnect,
reload, revocations, counters, end a device's tunnel) arrive on a connection of their own,
read by a thread and run on the worker's loop; when that connection ends (the supervisor
is gone) the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Client, Connection
from typing import Any

from exitnode.errors import ExitError
from exitnode.peers import ExitManagement, Peer
from exitnode.relay import DeviceLinks
from exitnode.server import ExitNode, ExitOptions
from hardware.announce import stable_mac
from l2bridge.commands.common import run_node, setup_logging
from l2bridge.errors import L2BridgeError
from l2bridge.node.config import Config
from l2bridge.node.rotation import RekeyTally
from l2bridge.protocol.handshake import EvidenceSince
from l2bridge.protocol.helloguard import REFUSED_QUOTA, HelloGuard, QuotaKey
from l2bridge.transport.errors import TransportClosed

log = logging.getLogger(__name__)

CLOCK_REFRESH_S = 1.0
WORKER_TAP_LEN = 11
COMMAND_RUN_S = 15.0  # a command's coroutine; the supervisor waits a little longer


def worker_tap(tap: str, index: int) -> str:
    """Worker ``index``'s TAP name: ``<tap>-<n>``, shortened to 11 characters so that the
    merging port's devices (``hardware.gro_port``: ``-out``, ``-in`` appended)
    stay within Linux's 15 and distinct per worker."""
    suffix = f"-{index}"
    return tap[: WORKER_TAP_LEN - len(suffix)] + suffix


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process is started with (pickled to it through a private pipe)."""

    index: int
    config: Config
    options: ExitOptions
    address: str
    authkey: bytes
    attested: bool  # the supervisor serves evidence: ask it in handshakes
    handoff: socket.socket  # its end of the channel connections come in on


class SupervisorGone(ConnectionError):
    """The supervisor's socket is closed or broken."""


class SupervisorLink:
    """A worker's calls to its supervisor: one authenticated connection per calling thread
    (the loop's, each handshake thread's), so a slow TPM quote holds up no other call."""

    def __init__(self, address: str, authkey: bytes, index: int) -> None:
        self._address = address
        self._authkey = authkey
        self._index = index
        self._local = threading.local()

    def connect(self, kind: str) -> Connection:
        try:
            conn = Client(self._address, family="AF_UNIX", authkey=self._authkey)
            conn.send((kind, self._index))
        except (OSError, EOFError) as exc:
            raise SupervisorGone(str(exc)) from None
        return conn

    def call(self, op: str, *args: Any) -> Any:
        conn: Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._local.conn = self.connect("call")
            conn.send((op, args))
            status, value = conn.recv()
        except (OSError, EOFError) as exc:
            self._local.conn = None
            raise SupervisorGone(str(exc)) from None
        if status == "busy":
            raise TransportClosed("attestation busy")
        if status != "ok":
            raise SupervisorGone(f"the supervisor could not answer {op!r}")
        return value


class RemoteLedger:
    """``TokenVerifier.ledger`` of a worker: the supervisor's ledger decides."""

    def __init__(self, link: SupervisorLink) -> None:
        self._link = link

    def admit(
        self, window: int, nonce: bytes, device: bytes, source: str, *, now: float, current: int
    ) -> str | None:
        try:
            refused: str | None = self._link.call("gate", window, nonce, device, source, now,
                                                  current)  # fmt: skip
        except SupervisorGone:
            return "full"  # cannot tell whether it is a replay: refused
        return refused


class RemoteHelloGuard(HelloGuard):
    """The hello guard of a worker: the supervisor's guard judges (duplicates and quotas
    over every worker); this one only parses and counts."""

    def __init__(self, link: SupervisorLink, quotes_per_minute: float) -> None:
        super().__init__(quotes_per_minute=quotes_per_minute)
        self._link = link

    def judge(self, random: bytes, attested: bool, quota_key: QuotaKey, now: float) -> str | None:
        try:
            refused: str | None = self._link.call("hello", random, attested, quota_key, now)
        except SupervisorGone:
            return REFUSED_QUOTA
        return refused


class RemoteDeviceLinks(DeviceLinks):
    """A worker's bound on circuit links per device: the supervisor counts every worker's
    (``Shared.take_circuit_link``), so a device holds at most the limit over the exit."""

    def __init__(self, link: SupervisorLink) -> None:
        super().__init__()
        self._link = link
        self._loop: asyncio.AbstractEventLoop | None = None

    async def take(self, device: bytes) -> bool:
        self._loop = asyncio.get_running_loop()
        try:
            allowed = await asyncio.to_thread(self._link.call, "circuit_link", device)
        except SupervisorGone:
            return False  # cannot count it: refused
        return bool(allowed)

    def give_back(self, device: bytes) -> None:
        assert self._loop is not None  # given back only what take allowed
        done = self._loop.run_in_executor(None, self._link.call, "circuit_link_end", device)
        done.add_done_callback(lambda f: f.exception())  # a gone supervisor: nothing to do


class RemoteClock:
    """The supervisor's clock (its atomic sources, if any) as an offset to this one's."""

    def __init__(self, link: SupervisorLink) -> None:
        self._link = link
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def refresh(self) -> None:
        self.offset = float(self._link.call("clock"))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(SupervisorGone):
                await asyncio.to_thread(self.refresh)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CLOCK_REFRESH_S)


def _evidence(link: SupervisorLink) -> tuple[Any, Any]:
    def provide(nonce: bytes, node_id: bytes) -> bytes:
        try:
            return bytes(link.call("evidence", nonce, node_id, None))
        except SupervisorGone:
            raise TransportClosed("attestation busy") from None

    def provide_since(nonce: bytes, node_id: bytes, since: EvidenceSince) -> bytes:
        try:
            return bytes(
                link.call("evidence", nonce, node_id, (since.reset_count, since.ima_count))
            )
        except SupervisorGone:
            raise TransportClosed("attestation busy") from None

    return provide, provide_since


class Worker:
    """An ``ExitNode`` wired to its supervisor; ``run`` until ``stop`` or the supervisor ends."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.link = SupervisorLink(spec.address, spec.authkey, spec.index)
        node = ExitNode(spec.config, spec.options)
        mac = stable_mac(node.identity.node_id + b"worker" + bytes([spec.index]))
        node.tap_config = replace(
            node.tap_config, name=worker_tap(node.tap_config.name, spec.index), mac=mac
        )
        node.handoff = spec.handoff
        node.verifier.ledger = RemoteLedger(self.link)
        node.hello_guard = RemoteHelloGuard(self.link, spec.config.tpm.quotes_per_device)
        if spec.attested:
            node.evidence_provider, node.evidence_since_provider = _evidence(self.link)
        self.clock = RemoteClock(self.link)
        node.clock = self.clock.now
        node.claim = self._claim
        node.release = self._release
        node.device_links = RemoteDeviceLinks(self.link)
        node.tally = self.tally = RekeyTally(node.metrics.counters)
        node.metrics.set_info(worker=spec.index)
        self.node = node
        self.api = ExitManagement(
            node.peers, node.authorizer, spec.config.keys.revocations,
            reload=node.reload, cancel_credentials=node.cancel_credentials,
        )  # fmt: skip
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._numbers = itertools.count(1)
        self._tokens: dict[int, int] = {}  # id(peer) -> its number, while it is claimed

    async def _claim(self, peer: Peer) -> None:
        # A number of its own per tunnel (not id(): a later peer may reuse a freed one
        # while the supervisor still hears about the earlier).
        token = self._tokens[id(peer)] = next(self._numbers)
        await asyncio.to_thread(self.link.call, "claim", peer.authorization.device_id, token)

    def _release(self, peer: Peer) -> None:
        token = self._tokens.pop(id(peer), None)
        if token is None:
            return  # never claimed (it ended before)
        assert self._loop is not None
        done = self._loop.run_in_executor(
            None, self.link.call, "release", peer.authorization.device_id, token
        )
        done.add_done_callback(lambda f: f.exception())  # a gone supervisor: nothing to do

    async def _command(self, op: str, args: tuple[Any, ...]) -> Any:
        node = self.node
        if op == "report":  # every STATS_S: the counters, and what to say if this one dies
            farewell = node.board.switch.farewell() if node.board is not None else []
            return node.metrics.snapshot(), farewell
        if op == "end":
            device, token = args
            ended = [p for p in node.peers.of_device(device) if self._tokens.get(id(p)) == token]
            for peer in ended:
                log.warning("device %s: a newer tunnel at another worker replaces the one "
                            "from %s", peer.name, peer.link.remote_address)  # fmt: skip
                await peer.link.close()
            return len(ended)
        if op == "peers":
            return await self.api.peers()
        if op == "disconnect":
            name, revoked = args
            return await self.api.disconnect(name, revoked=revoked)
        if op == "reload":
            return await node.reload()
        if op == "revocations":
            node.revocations.check()
            ended = node.peers.with_serials(node.authorizer.revoked_serials())
            await asyncio.gather(*(p.link.close(revoked=True) for p in ended))
            return sorted({p.name for p in ended})
        raise ValueError(op)

    def _serve_commands(self, conn: Connection) -> None:
        loop, stop = self._loop, self._stop
        assert loop is not None and stop is not None
        while True:
            try:
                op, args = conn.recv()
            except (EOFError, OSError):
                log.warning("the supervisor is gone: stopping")
                loop.call_soon_threadsafe(stop.set)
                return
            try:
                future = asyncio.run_coroutine_threadsafe(self._command(op, args), loop)
                reply = ("ok", future.result(COMMAND_RUN_S))
            except Exception as exc:
                log.warning("command %r failed: %s", op, type(exc).__name__)
                reply = ("error", type(exc).__name__)
            try:
                conn.send(reply)
            except (OSError, ValueError):
                loop.call_soon_threadsafe(stop.set)
                return

    async def run(self, stop: asyncio.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), stop
        commands = self.link.connect("commands")
        threading.Thread(target=self._serve_commands, args=(commands,), daemon=True).start()
        helpers = [
            asyncio.ensure_future(self.clock.run(stop)),
            asyncio.ensure_future(self.tally.run(stop)),
        ]
        try:
            await self.node.run(stop)
        finally:
            for task in helpers:
                task.cancel()
            commands.close()


def main(spec: WorkerSpec) -> None:
    """The worker process's entry point (``multiprocessing``, spawned)."""
    setup_logging(spec.config.logging.level, audit=spec.config.logging.audit)
    try:
        worker = Worker(spec)
        run_node(worker.run)
    except (ExitError, L2BridgeError) as exc:
        log.error("worker %d: %s", spec.index, exc)
        raise SystemExit(1) from None
