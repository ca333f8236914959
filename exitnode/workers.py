"""An exit on every core (``network.workers``): worker processes and their supervisor.

Each worker is an exit's whole data path in a process of its own: a TAP in the exit's bridge
(``<tap>-<n>``), a switch, and the tunnels of the connections the supervisor accepts on
the tunnel port and hands to the worker with the fewest open (``exitnode.handoff``; the
kernel's ``SO_REUSEPORT`` hash would put two clients at one worker half the time). Frames
between clients of two workers cross the kernel bridge, as between exits bridging one LAN,
so each worker's switch keeps the other workers' clients' stations and addresses from its
own clients with the holding and departure notices of ``exitnode.departures``.

What must be one, however many processes serve, stays with the supervisor (this process),
which the workers ask over a Unix socket in a directory only root may enter, each
connection authenticated with a key only the supervisor and its workers hold
(``multiprocessing.connection``):

- the gate's memory (``TokenVerifier.ledger``): a token one worker admitted is a replay at
  every other, and the per-device and per-source handshake quotas are the exit's;
- the hello guard: duplicate hellos and the per-device quote quota, over all workers;
- the TPM: evidence is quoted by the supervisor's lifecycle (one TPM, one budget), and the
  registry upkeep runs here;
- devices: ``security.tunnels_per_device`` counts a device's tunnels at every worker (a
  device that comes back at another worker ends its tunnel at the first), and a device's
  circuit links are bounded over every worker;
- the management API and the metrics (``status.listen``): peers, disconnections, reloads
  and revocations go to every worker; counters and gauges are summed;
- the clock: workers read this one's (its atomic sources) as an offset to their own.

The bridge (and the internet exit's masquerading) is set up here. A worker that dies is
started again (its clients reconnect, to any worker); a worker whose supervisor is gone
stops.

With ``endpoints.relay`` each worker relays the circuits of the links it serves: it answers
their CREATEs with the supervisor's evidence, opens its own links to next hops (circuits
share a link to a next hop within one worker, so two exits may carry up to one link per
worker between them), and switches a tail circuit's frames into its own TAP. How many
circuit links one device holds at once (``MAX_CIRCUIT_LINKS_PER_DEVICE``) is counted here,
over all workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from exitnode.errors import ExitConfigError, ExitError
from exitnode.handoff import Dispatcher, channel_pair, listen
from exitnode.host import HostSetup
from exitnode.peers import ExitManagement
from exitnode.relay import DeviceLinks
from exitnode.server import ExitNode, raise_open_files_limit
from exitnode.worker import WorkerSpec, worker_tap
from exitnode.worker import main as worker_main
from hardware.announce import AnnounceError, send_frames
from hardware.cpubudget import cores_allowed
from hardware.gro_port import plan
from l2bridge.node.config import MAX_WORKERS, Config, naming
from l2bridge.node.health import components
from l2bridge.node.metrics import Counters, Metrics
from l2bridge.node.status import StatusServer, read_token
from l2bridge.protocol.handshake import EvidenceSince
from l2bridge.protocol.helloguard import HelloGuard, QuotaKey
from l2bridge.transport.admission import AdmissionLedger
from l2bridge.transport.caps import ConnectionCaps
from l2bridge.transport.errors import TransportClosed

log = logging.getLogger(__name__)

STATS_S = 1.0  # how often the supervisor reads its workers' counters and checks them
COMMAND_TIMEOUT_S = 20.0  # a worker that does not answer a command within this is killed
RESTART_S = 2.0  # at most one start of a worker per this long
STOP_S = 10.0  # a stopping worker's time to close its tunnels and its TAP
STARTUP_S = 10.0  # a worker that dies sooner than this after its start died starting
EARLY_DEATHS = 5  # so many in a row and the exit stops: the fault is not passing
# Gauges that are the same fact at every worker (not to be summed): the largest is shown.
SAME_AT_EVERY_WORKER = frozenset({"credentials", "tunnel_listening"})
# Gauges the supervisor knows better than any worker: its own value, when it has one, is shown
# (the tunnel port listens where the supervisor accepts, whatever the workers say).
THE_SUPERVISORS = frozenset({"tunnel_listening"})


# -- the decisions the workers share ------------------------------------------------------


@dataclass
class Shared:
    """The gate's ledger, the hello guard and the devices' tunnels, for every worker.
    Thread-safe (one lock): each worker connection is served on a thread of its own."""

    ledger: AdmissionLedger
    guard: HelloGuard
    tunnels_per_device: int
    # device -> its tunnels: (worker, token), oldest first
    tunnels: dict[bytes, list[tuple[int, int]]] = field(default_factory=dict)
    # endpoints.relay: circuit links held at once per device over every worker (the bound),
    # and at each worker (what a worker that dies gives back)
    circuit_links: DeviceLinks = field(default_factory=DeviceLinks)
    circuit_links_at: dict[int, Counter[bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit_token(
        self, window: int, nonce: bytes, device: bytes, source: str, *, now: float, current: int
    ) -> str | None:
        with self._lock:
            return self.ledger.admit(window, nonce, device, source, now=now, current=current)

    def judge_hello(
        self, random: bytes, attested: bool, quota_key: QuotaKey, now: float
    ) -> str | None:
        with self._lock:
            return self.guard.judge(random, attested, quota_key, now)

    def claim(self, device: bytes, worker: int, token: int) -> list[tuple[int, int]]:
        """Record a tunnel of ``device`` at ``worker``; return the tunnels at other workers
        to end (the oldest first) so the device has at most ``tunnels_per_device``. The
        claiming worker has ended its own excess tunnels itself."""
        with self._lock:
            held = self.tunnels.setdefault(device, [])
            held.append((worker, token))
            others = [t for t in held if t[0] != worker]
            ended = others[: max(0, len(held) - self.tunnels_per_device)]
            for tunnel in ended:
                held.remove(tunnel)
            return ended

    def release(self, device: bytes, worker: int, token: int) -> None:
        with self._lock:
            held = self.tunnels.get(device, [])
            with contextlib.suppress(ValueError):
                held.remove((worker, token))
            if not held:
                self.tunnels.pop(device, None)

    def take_circuit_link(self, device: bytes, worker: int) -> bool:
        """One more circuit link of ``device`` at ``worker``, if the device is within its
        bound at all workers together."""
        with self._lock:
            if not self.circuit_links.take_now(device):
                return False
            self.circuit_links_at.setdefault(worker, Counter())[device] += 1
            return True

    def end_circuit_link(self, device: bytes, worker: int) -> None:
        with self._lock:
            held = self.circuit_links_at.get(worker)
            if held is None or held[device] <= 0:
                return  # not one this worker took
            held[device] -= 1
            if held[device] == 0:
                del held[device]  # no entry kept for every device a worker ever served
            self.circuit_links.give_back(device)

    def forget_worker(self, worker: int) -> None:
        """A worker died: its tunnels and circuit links are gone with it."""
        with self._lock:
            for device, count in self.circuit_links_at.pop(worker, Counter()).items():
                for _ in range(count):
                    self.circuit_links.give_back(device)
            for device in list(self.tunnels):
                held = [t for t in self.tunnels[device] if t[0] != worker]
                if held:
                    self.tunnels[device] = held
                else:
                    del self.tunnels[device]


# -- metrics over the workers ---------------------------------------------------------------


class WorkersMetrics(Metrics):
    """The supervisor's metrics: its own (TPM, registry, clock) plus its workers' counters
    and gauges, read every ``STATS_S`` (``parts``). A worker that is restarted keeps what
    it counted (``retired``), so the exit's counters only grow."""

    def __init__(self, role: str = "exit") -> None:
        super().__init__(role)
        self.parts: dict[int, dict[str, Any]] = {}
        self.retired = Counters()

    def retire(self, index: int) -> None:
        part = self.parts.pop(index, None)
        if part is not None:
            self.retired.add(Counters.of_snapshot(part))

    def totals(self) -> Counters:
        out = Counters()
        for counters in (self.counters, self.retired):
            out.add(counters)
        for part in list(self.parts.values()):
            out.add(Counters.of_snapshot(part))
        return out

    def gauge_values(self) -> dict[str, float | None]:
        values = super().gauge_values()
        own = {name for name in THE_SUPERVISORS if values.get(name) is not None}
        for part in list(self.parts.values()):
            for name, value in part.get("gauges", {}).items():
                if not isinstance(value, int | float) or name in own:
                    continue
                mine = values.get(name)
                if mine is None:
                    values[name] = float(value)
                elif name in SAME_AT_EVERY_WORKER:
                    values[name] = max(mine, float(value))
                else:
                    values[name] = mine + float(value)
        return values


# -- the supervisor ---------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    """A worker did not answer a command (it is then stopped and started again)."""


@dataclass
class _Worker:
    index: int
    process: Any = None  # multiprocessing.Process
    commands: Connection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = 0.0
    # Its last departure notice for all its clients' stations (``Switch.farewell``),
    # sent into the bridge by the supervisor if the worker dies.
    farewell: list[bytes] = field(default_factory=list)
    early_deaths: int = 0  # in a row, each within STARTUP_S of its start


def worker_count(config: Config, cores: int | None = None) -> int:
    """``network.workers`` as a number. ``auto`` is one per core the exit may keep busy
    (``cores``, by default its CPU affinity under any cgroup quota) where an exit can have
    workers, else 1: on one core or without ``network.bridge`` (the log says which)."""
    wanted = config.network.workers
    if wanted != "auto":
        return wanted
    n = min(cores_allowed() if cores is None else cores, MAX_WORKERS)
    if n < 2:
        why = "one core"
    elif config.network.bridge is None:
        why = "no network.bridge to join their TAPs in"
    else:
        log.info("network.workers: auto: %d worker processes (one per core)", n)
        return n
    log.info("network.workers: auto: one process (%s)", why)
    return 1


class Supervisor:
    """Runs ``node`` (built, attached, never run itself) as ``workers`` processes."""

    def __init__(self, node: ExitNode, workers: int) -> None:
        config = node.config
        if workers < 2:
            raise ExitConfigError("network.workers: a supervisor needs at least 2 workers")
        if config.network.bridge is None:
            raise ExitConfigError(
                "network.workers: each worker has a TAP of its own, joined in network.bridge; "
                "set network.bridge"
            )
        self.node = node
        self.metrics = node.metrics
        self.shared = Shared(
            node.verifier.ledger,  # type: ignore[arg-type]
            node.hello_guard,
            config.security.tunnels_per_device,
        )
        self.workers = [_Worker(i) for i in range(workers)]
        self._authkey = secrets.token_bytes(32)
        self._dir = ""
        self._listener: Listener | None = None
        self._context = multiprocessing.get_context("spawn")
        self.dispatcher: Dispatcher | None = None
        net = config.network
        # Each worker decides for its own TAP: what their TAPs' names plan for until they
        # report what they have (an auto that fell back says so in its log and report).
        gro = plan(net.gro, worker_tap(net.tap, workers - 1), net.vnet_hdr, net.bridge)
        self.metrics.set_info(workers=workers, gro=gro)
        self.metrics.set_gauge("workers_running", self._running)
        self.metrics.set_gauge("tunnel_listening", self._accepting)

    def _accepting(self) -> float | None:
        """1 while the tunnel port accepts (None before the supervisor runs)."""
        if self.dispatcher is None:
            return None
        return 1.0 if self.dispatcher.accepting else 0.0

    def _running(self) -> float:
        return float(sum(1 for w in self.workers if w.process is not None and w.process.is_alive()))

    # -- what the workers ask ------------------------------------------------------------
    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                conn = listener.accept()
            except OSError:
                return  # closed at stop
            except Exception as exc:  # a failed authentication: not one of ours
                log.warning("worker socket: connection refused (%s)", type(exc).__name__)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        try:
            kind, index = conn.recv()
            if not (isinstance(index, int) and 0 <= index < len(self.workers)):
                conn.close()
                return
            if kind == "commands":
                worker = self.workers[index]
                with worker.lock:
                    if worker.commands is not None:
                        worker.commands.close()
                    worker.commands = conn
                return
            while True:
                op, args = conn.recv()
                try:
                    reply: tuple[str, Any] = ("ok", self._answer(index, op, args))
                except TransportClosed:
                    reply = ("busy", None)
                except Exception as exc:  # a bug here must not leave a worker waiting
                    log.error("worker %d's %r failed: %s: %s", index, op,
                              type(exc).__name__, exc)  # fmt: skip
                    reply = ("error", None)
                conn.send(reply)
        except (EOFError, OSError, ValueError, TypeError):
            conn.close()

    def _answer(self, index: int, op: str, args: tuple[Any, ...]) -> Any:
        node = self.node
        if op == "gate":
            window, nonce, device, source, now, current = args
            return self.shared.admit_token(window, nonce, device, source, now=now, current=current)
        if op == "hello":
            return self.shared.judge_hello(*args)
        if op == "evidence":
            nonce, node_id, since = args
            if since is not None and node.evidence_since_provider is not None:
                return node.evidence_since_provider(nonce, node_id, EvidenceSince(*since))
            if node.evidence_provider is None:
                return b""
            return node.evidence_provider(nonce, node_id)
        if op == "claim":
            device, token = args
            for worker, old in self.shared.claim(device, index, token):
                with contextlib.suppress(WorkerFailed):  # else killed: its tunnels are gone
                    self.command(worker, "end", device, old)
            return None
        if op == "release":
            self.shared.release(args[0], index, args[1])
            return None
        if op == "circuit_link":
            return self.shared.take_circuit_link(args[0], index)
        if op == "circuit_link_end":
            self.shared.end_circuit_link(args[0], index)
            return None
        if op == "clock":
            return node.clock() - time.time()
        raise ValueError(op)

    # -- what the supervisor asks ----------------------------------------------------------
    def command(self, index: int, op: str, *args: Any) -> Any:
        """Ask worker ``index`` (blocking; call it off the loop). Raises WorkerFailed."""
        worker = self.workers[index]
        with worker.lock:
            conn = worker.commands
            if conn is None:
                raise WorkerFailed(f"worker {index} is not connected")
            try:
                conn.send((op, args))
                if not conn.poll(COMMAND_TIMEOUT_S):
                    raise TimeoutError
                status, value = conn.recv()
            except (EOFError, OSError, TimeoutError) as exc:
                worker.commands = None
                conn.close()
                if isinstance(exc, TimeoutError) and worker.process is not None:
                    log.error("worker %d did not answer %r: stopped, to be started again",
                              index, op)  # fmt: skip
                    worker.process.kill()
                raise WorkerFailed(f"worker {index}: {type(exc).__name__}") from None
        if status != "ok":
            raise WorkerFailed(f"worker {index}: {op} failed ({value})")
        return value

    async def each(self, op: str, *args: Any) -> list[tuple[int, Any]]:
        """``op`` at every connected worker: (worker, answer) of those that gave one."""
        calls = [asyncio.to_thread(self.command, w.index, op, *args) for w in self.workers]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        out = []
        for worker, answer in zip(self.workers, answers, strict=True):
            if isinstance(answer, BaseException):
                log.info("worker %d left out: %s", worker.index, answer)
            else:
                out.append((worker.index, answer))
        return out

    # -- processes -----------------------------------------------------------------------
    def _spec(self, index: int, handoff: socket.socket) -> WorkerSpec:
        options = replace(self.node.options, masquerade=None, status=False)
        return WorkerSpec(
            index, self.node.config, options, self._address(), self._authkey,
            attested=self.node.evidence_provider is not None, handoff=handoff,
        )  # fmt: skip

    def _address(self) -> str:
        return str(Path(self._dir) / "supervisor.sock")

    def _start(self, worker: _Worker) -> None:
        mine, theirs = channel_pair()
        try:
            worker.process = self._context.Process(
                target=worker_main, args=(self._spec(worker.index, theirs),),
                name=f"shadowmesh-exit-worker-{worker.index}",
            )  # fmt: skip
            worker.process.start()
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()  # the worker has its own copy
        worker.started = time.monotonic()
        if self.dispatcher is not None:  # connections once its tunnel server is up
            self.dispatcher.attach(worker.index, mine)
        else:
            mine.close()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Read the workers' counters; start again a worker that died."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_S)
                return
            for worker in self.workers:
                process = worker.process
                if process is not None and not process.is_alive():
                    log.error("worker %d ended (exit status %s); its clients reconnect",
                              worker.index, process.exitcode)  # fmt: skip
                    early = time.monotonic() - worker.started < STARTUP_S
                    worker.early_deaths = worker.early_deaths + 1 if early else 0
                    if worker.early_deaths >= EARLY_DEATHS:
                        raise ExitError(
                            f"worker {worker.index} ended within {STARTUP_S:.0f} s of its "
                            f"start {EARLY_DEATHS} times in a row (its log says why)"
                        )
                    self.shared.forget_worker(worker.index)
                    if self.dispatcher is not None:
                        self.dispatcher.lost(worker.index)
                    self._send_farewell(worker)
                    if isinstance(self.metrics, WorkersMetrics):
                        self.metrics.retire(worker.index)
                    with worker.lock:
                        if worker.commands is not None:
                            worker.commands.close()
                            worker.commands = None
                    worker.process = None
                if worker.process is None and time.monotonic() - worker.started >= RESTART_S:
                    self._start(worker)
            reports = await asyncio.gather(
                *(asyncio.to_thread(self.command, w.index, "report") for w in self.workers),
                return_exceptions=True,
            )
            for worker, report in zip(self.workers, reports, strict=True):
                if isinstance(report, BaseException):
                    continue  # not connected yet, or given up (restarted above next round)
                snapshot, worker.farewell = report
                if isinstance(self.metrics, WorkersMetrics):
                    self.metrics.parts[worker.index] = snapshot
                self._serving(worker.index, snapshot)
            self._note_gro()

    def _note_gro(self) -> None:
        """The merging in effect, as the running workers' last reports say: one mode where
        they agree, else each mode with its workers (a worker whose port could not be built
        runs software)."""
        if not isinstance(self.metrics, WorkersMetrics):
            return
        modes: dict[str, list[int]] = {}
        for index, part in sorted(self.metrics.parts.items()):
            info = part.get("info")
            gro = info.get("gro") if isinstance(info, dict) else None
            if isinstance(gro, str):
                modes.setdefault(gro, []).append(index)
        if not modes:
            return
        if len(modes) == 1:
            self.metrics.set_info(gro=next(iter(modes)))
            return
        parts = []
        for mode, indices in sorted(modes.items()):
            which = "worker" if len(indices) == 1 else "workers"
            parts.append(f"{mode} at {which} {', '.join(map(str, indices))}")
        self.metrics.set_info(gro="; ".join(parts))

    def _serving(self, index: int, snapshot: dict[str, Any]) -> None:
        """A worker answered its report: once its tunnel server is up it takes connections."""
        if self.dispatcher is None or self.dispatcher.is_ready(index):
            return
        if snapshot.get("gauges", {}).get("tunnel_listening") == 1.0:
            self.dispatcher.ready(index)

    def _send_farewell(self, worker: _Worker) -> None:
        """Tell the other workers (and other exits on the LAN) that a dead worker's clients
        left: its last departure notice, sent out of the bridge. Without it they would keep
        refusing those stations until they age out (their frames crossed the bridge, so
        they were learned there), while the clients come back at another worker."""
        frames, worker.farewell = worker.farewell, []
        bridge = self.node.config.network.bridge
        if not frames or bridge is None:
            return
        try:
            send_frames(bridge, frames)
        except AnnounceError as exc:
            log.warning("worker %d's departure notice not sent: %s", worker.index, exc)

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()  # SIGTERM: the worker closes tunnels and its TAP
        deadline = time.monotonic() + STOP_S
        for worker in self.workers:
            if worker.process is None:
                continue
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in %.0f s: killed", worker.index, STOP_S)
                worker.process.kill()
                worker.process.join(2.0)
            if worker.commands is not None:
                worker.commands.close()

    # -- status ----------------------------------------------------------------------------
    def _status_server(self) -> StatusServer:
        node = self.node
        cfg = node.config.status
        token = read_token(cfg.admin_token_file) if cfg.admin_token_file else None
        atomic = bool(node.config.atomic_time.enabled)
        return StatusServer(
            self.metrics, *cfg.listen, token=token, api=WorkersManagement(self),
            api_loop=asyncio.get_running_loop(),
            health=lambda: components(self.metrics.snapshot(), atomic_time=atomic),
        ).start()  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        node = self.node
        raise_open_files_limit()
        host = HostSetup(
            node.tap_config,
            node.config.network.bridge,
            masquerade=node.options.masquerade,
            open_device=False,
        )
        self._dir = tempfile.mkdtemp(prefix="shadowmesh-exit-")
        os.chmod(self._dir, 0o700)
        status: StatusServer | None = None
        metrics_only: StatusServer | None = None
        try:
            ep = node.config.endpoints
            assert ep.listen is not None
            with naming(f"endpoints.listen ({ep.listen[0]}:{ep.listen[1]})"):
                listeners = listen(ep.listen[0], ep.listen[1], ep.listen_backlog)
            caps = ConnectionCaps(ep.max_connections, ep.max_connections_per_source)
            self.dispatcher = Dispatcher(
                listeners, len(self.workers), caps=caps, summary=node.screening
            )
            self.dispatcher.start()
            self._listener = Listener(self._address(), family="AF_UNIX", authkey=self._authkey)
            threading.Thread(target=self._accept, daemon=True).start()
            for worker in self.workers:
                self._start(worker)
            if node.options.status:
                status = self._status_server()
                metrics_only = node._metrics_server()  # status.metrics_listen, if set
            log.info("exit listening on %s:%d with %d workers", *ep.listen, len(self.workers))
            jobs = [self._watch(stop), node.revocations.run(stop, node.sessions, node.clock)]
            if node.attested is not None:
                jobs.append(node.attested.run(stop))
            await asyncio.gather(*jobs)
        finally:
            if self.dispatcher is not None:
                self.dispatcher.close()  # no new connections while the workers stop
            await asyncio.to_thread(self._stop_workers)
            for listener in (status, metrics_only):
                if listener is not None:
                    listener.stop()
            if self._listener is not None:
                self._listener.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            host.close()
            node.identity.wipe()


class WorkersManagement:
    """The management API of an exit with workers: each call goes to every worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        node = supervisor.node
        # Verifies, installs and saves a revocation list once, here; the workers then
        # reload it and end the tunnels it revokes.
        self._local = ExitManagement(
            node.peers, node.authorizer, node.config.keys.revocations,
            cancel_credentials=node.cancel_credentials,
        )  # fmt: skip

    async def peers(self) -> list[dict[str, Any]]:
        """Every worker's peers, each with ``worker``: the one serving its tunnel."""
        return [
            {**peer, "worker": index}
            for index, answer in await self.supervisor.each("peers")
            for peer in answer
        ]

    async def disconnect(self, name: str, *, revoked: bool = False) -> int:
        return sum(count for _, count in await self.supervisor.each("disconnect", name, revoked))

    async def install_revocations(self, armored: str) -> dict[str, Any]:
        result = await self._local.install_revocations(armored)
        ended = await self.supervisor.each("revocations")
        result["disconnected"] = sorted({name for _, names in ended for name in names})
        return result

    async def reload(self) -> dict[str, Any]:
        out = await self.supervisor.node.reload()
        for _, answer in await self.supervisor.each("reload"):
            for key in ("credential_revoked", "policy_changed"):
                if key in answer:
                    out[key] = sorted({*out.get(key, []), *answer[key]})
        return out
