"""The exit's relay role: one hop of multi-hop circuits (``l2bridge.protocol.circuit``).

Which links are circuits: :meth:`Relay.admit` takes every link the exit admitted and waits
up to ``RELAY_DECIDE_S`` for its first batch. A circuit's builder (a client, or the hop
before us) sends its CREATE as the link's first frame, so a first frame that is a cell makes
the link a circuit link, served here; anything else (or silence) is an L2 device's link and
goes to the switchboard as before, its early batch first.

Per circuit this hop

* answers the CREATE (evidence + signatures, in a worker thread: the TPM quote takes time);
* at the tail, on EXTEND: when the exit knows the registry, checks that the endpoint is the
  one listed for that nodeId (no connections to hosts a client names); takes a link to the
  next hop over the ordinary transport (a token minted from this exit's OWN credential for
  that hop, ``endpoints.credential_file``: the client sends none, so the next hop never sees
  a token that names the client; our identity and ``keys.relay_certificate`` for its
  Authorizer, its nodeId pinned; no credential for that hop: EXTEND_FAILED refused), sends
  the CREATE and returns the CREATED as EXTENDED; on failure EXTEND_FAILED, and we stay the tail;
* shares links to a next hop: circuits extended to the same nodeId and endpoint go over one
  link (each with its own circuit id on it, as Tor's relays share theirs), up to
  ``MAX_CIRCUITS_PER_LINK``, so building a circuit opens no new connection between two
  exits that already carry one (an observer between them does not see circuits being
  built) and costs no new link handshake; a link whose last circuit ended stays open for
  ``NEXT_LINK_IDLE_S`` (randomised) for the circuits to come, then closes, and its end
  tears down every circuit on it;
* relays cells both ways through bounded per-circuit queues: a full queue drops the cell
  and counts it (``circuit_queue_full``), it never buffers without limit;
* at the tail, switches the innermost frames into its L2 segment as one switchboard port
  (owner ``circuit:<random>``, the exit's default VLAN policy: the tail never learns who the
  client is);
* tears down: a DESTROY, or the end of either link, closes the circuit, wipes its keys,
  and sends DESTROY to the other neighbour (NEXT_HOP_GONE toward the client), which is how
  a client learns to rebuild;
* ratchets its backward layer at every clock epoch (``rekey_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TypeAlias

from exitnode import constants
from exitnode.switch import PortPolicy
from exitnode.switchboard import PortLink, Switchboard
from l2bridge.constants import Mode
from l2bridge.crypto.pq import Backend
from l2bridge.errors import L2BridgeError, MalformedMessage, PeerError
from l2bridge.identity.keys import DeviceCertificate, HybridSigningKey
from l2bridge.node import link as tunnel
from l2bridge.node.config import Config
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.cells import (
    Cell,
    CellKind,
    DestroyReason,
    Extend,
    ExtendFailure,
    HandshakeAssembler,
    cell_header,
    destroy_cell,
    encode_cell,
    handshake_cells,
    looks_like_cell,
    parse_cell,
)
from l2bridge.protocol.circuit import RelayCircuit
from l2bridge.protocol.handshake import ClientHandshake, EvidenceProvider
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.constants import DEFAULT_TOKEN_WINDOW_S
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.token import Credential

log = logging.getLogger(__name__)

Buffer: TypeAlias = bytes | bytearray | memoryview
DROP_QUEUE_FULL = "circuit_queue_full"


class _Queue:
    """Cells for one link from one circuit: sent at once when possible, else queued
    (bounded in cells and bytes) and drained by a task; beyond the bounds, dropped."""

    def __init__(self, link: tunnel.Link, metrics: Metrics) -> None:
        self.link = link
        self._metrics = metrics
        self._cells: deque[Buffer] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._task = asyncio.ensure_future(self._drain())

    def put(self, cells: Sequence[Buffer]) -> None:
        if not cells:
            return
        if not self._cells:
            try:
                if self.link.send_now(cells):
                    return
            except TransportClosed:
                return
        for cell in cells:
            if (
                len(self._cells) >= constants.CIRCUIT_QUEUE_CELLS
                or self._bytes + len(cell) > constants.CIRCUIT_QUEUE_BYTES
            ):
                self._metrics.counters.drop(DROP_QUEUE_FULL)
                continue
            self._cells.append(cell)
            self._bytes += len(cell)
        if self._cells:
            self._ready.set()

    async def _drain(self) -> None:
        with contextlib.suppress(TransportClosed):
            while True:
                await self._ready.wait()
                batch: list[Buffer] = []
                while self._cells and len(batch) < constants.RELAY_SEND_BATCH:
                    cell = self._cells.popleft()
                    self._bytes -= len(cell)
                    batch.append(cell)
                if not self._cells:
                    self._ready.clear()
                await self.link.send_frames(batch)

    def stop(self) -> None:
        self._task.cancel()


class _CircuitPort:
    """The tail's circuit as one switchboard port (``exitnode.switchboard.PortLink``)."""

    def __init__(self, relay: Relay, hop: _Hop) -> None:
        self._relay = relay
        self._hop = hop
        self._inbox: asyncio.Queue[list[Buffer] | None] = asyncio.Queue(
            constants.CIRCUIT_QUEUE_CELLS
        )
        self.closed = False

    def deliver(self, frames: list[Buffer]) -> None:
        try:
            self._inbox.put_nowait(frames)
        except asyncio.QueueFull:
            self._relay.metrics.counters.drop(DROP_QUEUE_FULL, len(frames))

    async def send_frames(self, frames: Sequence[Buffer]) -> None:
        if self.closed:
            raise TransportClosed("circuit closed")
        hop = self._hop
        hop.to_prev.put(hop.circuit.originate(frames, hop.prev_header))

    async def recv_frames(self) -> Sequence[Buffer]:
        batch = await self._inbox.get()
        if batch is None or self.closed:
            raise TransportClosed("circuit closed")
        return batch

    async def close(self) -> None:
        self._relay.close_hop(self._hop, DestroyReason.NORMAL)

    def end(self) -> None:
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(None)


class _Hop:
    """One circuit through this exit."""

    def __init__(self, circuit: RelayCircuit, prev: tunnel.Link, prev_id: int, to_prev: _Queue):
        self.circuit = circuit
        self.prev = prev
        self.prev_id = prev_id
        self.prev_header = cell_header(CellKind.RELAY, prev_id)  # RELAY cells toward prev
        self.to_prev = to_prev
        self.next: tunnel.Link | None = None
        self.next_link: _NextLink | None = None  # the shared link ``next`` belongs to
        self.next_id = 0
        self.next_header = b""  # RELAY cells toward next, once extended
        self.to_next: _Queue | None = None
        self.port: _CircuitPort | None = None
        self.created: asyncio.Future[bytes] | None = None
        self.created_parts = HandshakeAssembler()  # the next hop's CREATED, reassembled
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False


class _NextLink:
    """One link to a next hop, shared by the circuits this exit extended to it (by their
    circuit ids on this link)."""

    def __init__(self, link: tunnel.Link, key: tuple[bytes, str]) -> None:
        self.link = link
        self.key = key
        self.hops: dict[int, _Hop] = {}
        self.watch: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self.idle: asyncio.TimerHandle | None = None  # closes it, with no circuit on it

    def take(self, circuit_id: int, hop: _Hop) -> None:
        self.hops[circuit_id] = hop
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    @property
    def usable(self) -> bool:
        return self.link.close_reason is None and len(self.hops) < constants.MAX_CIRCUITS_PER_LINK

    def new_circuit_id(self) -> int:
        while True:
            circuit_id = secrets.randbelow(2**32)
            if circuit_id not in self.hops:
                return circuit_id


class _Batch:
    """What one batch of cells from a link produces, sent once the batch is read: one
    ``put`` per queue (so one link record for many cells, not one per cell) and one
    delivery per circuit port. Order within a queue or a port is kept."""

    __slots__ = ("cells", "frames")

    def __init__(self) -> None:
        self.cells: dict[_Queue, list[Buffer]] = {}
        self.frames: dict[_Hop, list[Buffer]] = {}

    def flush(self, relay: Relay) -> None:
        frames, cells = self.frames, self.cells
        self.frames, self.cells = {}, {}
        for hop, batch in frames.items():
            if not hop.closed:
                relay._to_segment(hop, batch)
        for queue, batch in cells.items():
            queue.put(batch)


class _Prepended:
    """An L2 device's link whose first batch was read while deciding; it goes first."""

    def __init__(self, link: tunnel.Link, first: list[memoryview]) -> None:
        self._link = link
        self._first: list[memoryview] | None = first

    def send_now(self, frames: Sequence[Buffer]) -> bool:
        return self._link.send_now(frames)

    async def send_frames(self, frames: Sequence[Buffer]) -> None:
        await self._link.send_frames(frames)

    def deliver_to(self, sink: Callable[[list[memoryview]], None]) -> None:
        first, self._first = self._first, None
        if first:
            sink(first)
        self._link.deliver_to(sink)

    async def recv_frames(self) -> Sequence[Buffer]:
        first, self._first = self._first, None
        if first:
            return first
        return await self._link.recv_frames()

    async def close(self) -> None:
        await self._link.close()


class DeviceLinks:
    """Circuit links held per device, at most ``limit`` each at once
    (``MAX_CIRCUIT_LINKS_PER_DEVICE``): a device that opens more is refused, whichever
    process of the exit serves them (a worker's are counted by its supervisor:
    ``exitnode.worker.RemoteDeviceLinks``)."""

    def __init__(self, limit: int = constants.MAX_CIRCUIT_LINKS_PER_DEVICE) -> None:
        self.limit = limit
        self.held: Counter[bytes] = Counter()

    def take_now(self, device: bytes) -> bool:
        if self.held[device] >= self.limit:
            return False
        self.held[device] += 1
        return True

    async def take(self, device: bytes) -> bool:
        """One more circuit link of ``device``, if it is within its bound."""
        return self.take_now(device)

    def give_back(self, device: bytes) -> None:
        """A link ``take`` allowed has ended."""
        if self.held[device] <= 1:
            self.held.pop(device, None)
        else:
            self.held[device] -= 1


class Relay:
    """The relay role of one exit."""

    def __init__(
        self,
        identity: HybridSigningKey,
        metrics: Metrics,
        *,
        mode: Mode = Mode.HYBRID,
        backend: Backend | None = None,
        evidence_provider: EvidenceProvider | None = None,
        certificate: DeviceCertificate | None = None,
        session_config: SessionConfig | None = None,
        board: Switchboard | None = None,
        policy: PortPolicy | None = None,
        clock: Callable[[], float] = time.time,
        decide_s: float = constants.RELAY_DECIDE_S,
        endpoint_of: Callable[[bytes], str | None] | None = None,
        credentials: CredentialWallet | None = None,
        token_window: int = DEFAULT_TOKEN_WINDOW_S,
        next_link_idle_s: float = constants.NEXT_LINK_IDLE_S,
        device_links: DeviceLinks | None = None,
    ) -> None:
        """``next_link_idle_s``: how long a link to a next hop stays open without circuits
        (times a random factor of 0.75-1.25; 0 closes it with its last circuit).
        ``device_links``: the bound on circuit links per device (by default this
        process's own)."""
        self.identity = identity
        self.next_link_idle_s = next_link_idle_s
        # This exit's credentials for the hops it extends to (endpoints.credential_file).
        self.credentials = credentials if credentials is not None else CredentialWallet()
        self.token_window = token_window
        self.metrics = metrics
        self.mode = mode
        self.backend = backend
        self.evidence_provider = evidence_provider
        self.certificate = certificate
        self.session_config = session_config or SessionConfig()
        self.board = board
        self.policy = policy or PortPolicy()
        self.clock = clock
        self.decide_s = decide_s
        # Blocking lookup of a node's registry endpoint (run in a thread): EXTEND is obeyed
        # only toward the endpoint the registry lists for that nodeId, so a client cannot
        # make this exit open connections to arbitrary hosts. None: not checked (labs).
        self.endpoint_of = endpoint_of
        self._hops: dict[tuple[int, int], _Hop] = {}
        self._accepting: set[tuple[int, int]] = set()  # CREATEs being answered
        # Circuit links being served, by the device that opened them (a relaying exit opens
        # one per circuit it extends here; bounded per device instead of tunnels_per_device).
        self.circuit_links: dict[tunnel.Link, bytes] = {}
        self.device_links = device_links if device_links is not None else DeviceLinks()
        # Links this exit opened to next hops, by (nodeId, endpoint); shared by circuits.
        self.next_links: dict[tuple[bytes, str], list[_NextLink]] = {}
        self._next_locks: dict[tuple[bytes, str], asyncio.Lock] = {}
        self.next_links_opened = 0
        self.relayed_bytes = 0
        self.relayed_cells = 0
        self.circuits_opened = 0
        metrics.set_gauge("circuits", lambda: float(len(self._hops)))
        metrics.set_gauge("circuit_relayed_bytes", lambda: float(self.relayed_bytes))
        metrics.set_gauge("circuit_relayed_cells", lambda: float(self.relayed_cells))
        metrics.set_gauge("relay_next_links", lambda: float(len(self._all_next_links())))
        metrics.set_gauge(
            "relay_next_links_idle",
            lambda: float(sum(1 for s in self._all_next_links() if not s.hops)),
        )

    def _all_next_links(self) -> list[_NextLink]:
        return [shared for links in self.next_links.values() for shared in links]

    @property
    def hops(self) -> list[_Hop]:
        return list(self._hops.values())

    # -- deciding --------------------------------------------------------------------------

    async def admit(self, link: tunnel.Link) -> PortLink | None:
        """Serve ``link`` here if it is a circuit link (returns None once it ended), else
        return the port link the switchboard should serve."""
        try:
            first = await asyncio.wait_for(link.recv_frames(), self.decide_s)
        except TimeoutError:
            return link
        except TransportClosed:
            return None
        if first and looks_like_cell(first[0]):
            await self.serve(link, first)
            return None
        return _Prepended(link, first)

    async def serve(self, link: tunnel.Link, first: list[memoryview]) -> None:
        """Run the circuits of one link from a previous hop until the link ends. A device
        already holding ``MAX_CIRCUIT_LINKS_PER_DEVICE`` circuit links gets no more."""
        auth = link.session.authorization
        device = auth.device_id if auth is not None else b""
        if not await self.device_links.take(device):
            self.metrics.counters.drop("circuit_links_per_device")
            await link.close()
            return
        self.circuit_links[link] = device
        try:
            await self._serve(link, first)
        finally:
            self.circuit_links.pop(link, None)
            self.device_links.give_back(device)

    async def _serve(self, link: tunnel.Link, first: list[memoryview]) -> None:
        assemblers: dict[int, HandshakeAssembler] = {}

        def frames_in(frames: list[memoryview]) -> None:
            batch = _Batch()
            for frame in frames:
                self._from_prev(link, frame, assemblers, batch)
            batch.flush(self)

        frames_in(first)
        link.deliver_to(frames_in)
        try:
            with contextlib.suppress(TransportClosed):
                while True:  # with a sink set this only waits for the link's end
                    await link.recv_frames()
        finally:
            for hop in [h for h in self._hops.values() if h.prev is link]:
                self.close_hop(hop, DestroyReason.NORMAL, tell_prev=False)

    # -- cells from the previous hop -------------------------------------------------------

    def _from_prev(
        self,
        link: tunnel.Link,
        frame: memoryview,
        assemblers: dict[int, HandshakeAssembler],
        batch: _Batch,
    ) -> None:
        try:
            cell = parse_cell(frame)
        except MalformedMessage:
            self.metrics.counters.drop("not_a_cell")
            return
        key = (id(link), cell.circuit)
        hop = self._hops.get(key)
        if cell.kind is CellKind.CREATE:
            self._create_cell(link, cell, hop, assemblers)
        elif hop is None:
            self.metrics.counters.drop("unknown_circuit")
        elif cell.kind is CellKind.DESTROY:
            batch.flush(self)  # cells that came before the DESTROY go before it
            self.close_hop(hop, DestroyReason.NORMAL, tell_prev=False)
        elif cell.kind is CellKind.RELAY:
            self._relay_forward(hop, cell, batch)
        else:
            self.metrics.counters.drop("unexpected_cell")

    def _create_cell(
        self,
        link: tunnel.Link,
        cell: Cell,
        hop: _Hop | None,
        assemblers: dict[int, HandshakeAssembler],
    ) -> None:
        key = (id(link), cell.circuit)
        if hop is not None or key in self._accepting:
            self.metrics.counters.drop("duplicate_create")
            return
        assembler = assemblers.get(cell.circuit)
        if assembler is None:
            per_link = sum(1 for h in self._hops.values() if h.prev is link)
            per_link += sum(1 for k in self._accepting if k[0] == id(link))
            if (
                per_link + len(assemblers) >= constants.MAX_CIRCUITS_PER_LINK
                or len(self._hops) + len(self._accepting) >= constants.MAX_CIRCUITS
            ):
                self.metrics.counters.drop("too_many_circuits")
                link.send_now([destroy_cell(cell.circuit, DestroyReason.OVERLOADED)])
                return
            assembler = assemblers[cell.circuit] = HandshakeAssembler()
        try:
            create = assembler.add(cell.body)
        except MalformedMessage:
            del assemblers[cell.circuit]
            self.metrics.counters.drop("bad_create")
            return
        if create is not None:
            del assemblers[cell.circuit]
            self._accepting.add(key)
            task = asyncio.ensure_future(self._accept(link, cell.circuit, create))
            task.add_done_callback(_log_failure)
            task.add_done_callback(lambda _t: self._accepting.discard(key))

    async def _accept(self, link: tunnel.Link, circuit_id: int, create: bytes) -> None:
        try:
            circuit, created = await asyncio.to_thread(
                RelayCircuit.accept, create, circuit_id, self.identity,
                modes=frozenset((self.mode,)), evidence_provider=self.evidence_provider,
                backend=self.backend, drops=self.metrics.counters.drops,
            )  # fmt: skip
        except PeerError as exc:
            log.info("circuit refused: %s (%s)", exc, exc.detail)
            self.metrics.counters.drop("bad_create")
            with contextlib.suppress(TransportClosed):
                link.send_now([destroy_cell(circuit_id, DestroyReason.PROTOCOL)])
            return
        except Exception as exc:
            # Ours, not the client's (the TPM failed or is rate-limited, evidence too large
            # for a CREATED): logged here; the client gets a DESTROY, no text, and builds
            # its circuit through other hops instead of waiting for an answer.
            log.error("circuit not answered: %s: %s", type(exc).__name__, exc)
            self.metrics.counters.drop("create_failed_locally")
            with contextlib.suppress(TransportClosed):
                link.send_now([destroy_cell(circuit_id, DestroyReason.OVERLOADED)])
            return
        if link.close_reason is not None:
            circuit.close()  # the link ended while we answered
            return
        hop = _Hop(circuit, link, circuit_id, _Queue(link, self.metrics))
        self._hops[(id(link), circuit_id)] = hop
        self.circuits_opened += 1
        hop.to_prev.put(created)

    def _relay_forward(self, hop: _Hop, cell: Cell, batch: _Batch) -> None:
        out = hop.circuit.from_previous(cell.body, self.clock(), hop.next_header)
        if out.forward is not None:
            if hop.to_next is None or not hop.circuit.extended:
                self.metrics.counters.drop("next_hop_not_ready")
            else:
                self.relayed_cells += 1
                self.relayed_bytes += len(cell.body)
                cells = batch.cells.setdefault(hop.to_next, [])
                cells.append(out.forward)  # the cell, its header for the next link included
        if out.join:  # the tail's port in its segment exists from the client's first word
            batch.frames.setdefault(hop, []).extend(out.frames)
        if out.reply:
            hop.to_prev.put([encode_cell(CellKind.RELAY, hop.prev_id, b) for b in out.reply])
        if out.extend is not None:
            hop.tasks.append(asyncio.ensure_future(self._extend(hop, out.extend)))

    def _to_segment(self, hop: _Hop, frames: list[Buffer]) -> None:
        if self.board is None:
            self.metrics.counters.drop("no_segment", len(frames))
            return
        if hop.port is None:
            hop.port = _CircuitPort(self, hop)
            owner = f"circuit:{secrets.token_hex(8)}"
            task = asyncio.ensure_future(
                self.board.serve_link(hop.port, owner, self.policy, owner=owner)
            )
            hop.tasks.append(task)
        if frames:
            hop.port.deliver(frames)

    # -- extending -------------------------------------------------------------------------

    async def _extend(self, hop: _Hop, request: Extend) -> None:
        credential = self.credentials.for_exit(request.node_id)
        if credential is None:
            self.metrics.counters.drop("extend_no_credential")
            if not hop.closed:
                bodies = hop.circuit.extend_failed(ExtendFailure.REFUSED)
                hop.to_prev.put([encode_cell(CellKind.RELAY, hop.prev_id, b) for b in bodies])
            return
        if self.endpoint_of is not None:
            try:
                listed = await asyncio.to_thread(self.endpoint_of, request.node_id)
            except Exception as exc:  # web3 raises many types: the registry did not answer
                log.info("registry lookup for an EXTEND failed: %s", type(exc).__name__)
                listed = None
            if listed != request.endpoint:
                self.metrics.counters.drop("extend_not_in_registry")
                if not hop.closed:
                    bodies = hop.circuit.extend_failed(ExtendFailure.REFUSED)
                    hop.to_prev.put([encode_cell(CellKind.RELAY, hop.prev_id, b) for b in bodies])
                return
        try:
            async with asyncio.timeout(constants.EXTEND_TIMEOUT_S):
                created = await self._open_next(hop, request, credential)
        except (OSError, TimeoutError, L2BridgeError) as exc:
            log.info("extend to %s failed: %s", request.node_id.hex()[:16], type(exc).__name__)
            self._drop_next(hop, tell=True)
            if not hop.closed:
                bodies = hop.circuit.extend_failed(ExtendFailure.UNREACHABLE)
                hop.to_prev.put([encode_cell(CellKind.RELAY, hop.prev_id, b) for b in bodies])
            return
        if hop.closed:
            return
        bodies = hop.circuit.extended_by(created)
        hop.to_prev.put([encode_cell(CellKind.RELAY, hop.prev_id, b) for b in bodies])

    async def _open_next(self, hop: _Hop, request: Extend, credential: Credential) -> bytes:
        while True:
            shared = await self._next_link(request, credential)
            if hop.closed:
                self._release(shared)  # a link opened for this circuit alone goes with it
                raise TransportClosed("circuit closed meanwhile")
            # Released (its last circuit ended) while this task waited to run: take another.
            if shared.usable and shared in self.next_links.get(shared.key, ()):
                break
        hop.next, hop.next_link, hop.next_id = shared.link, shared, shared.new_circuit_id()
        shared.take(hop.next_id, hop)
        hop.next_header = cell_header(CellKind.RELAY, hop.next_id)
        hop.to_next = _Queue(shared.link, self.metrics)
        hop.created = asyncio.get_running_loop().create_future()
        hop.to_next.put(handshake_cells(CellKind.CREATE, hop.next_id, request.create))
        return await hop.created

    async def _next_link(self, request: Extend, credential: Credential) -> _NextLink:
        """A link to the requested next hop with room for one more circuit: one already
        open, else a new one (one connect at a time per next hop, so circuits extended
        together share it)."""
        key = (request.node_id, request.endpoint)
        lock = self._next_locks.setdefault(key, asyncio.Lock())
        async with lock:
            for shared in self.next_links.get(key, []):
                if shared.usable:
                    return shared
            handshake = ClientHandshake(
                self.identity,
                certificate=self.certificate,
                mode=self.mode,
                pinned_node_id=request.node_id,
                config=self.session_config,
                backend=self.backend,
            )
            link = await tunnel.connect(
                request.endpoint,
                handshake,
                credential=credential,
                node_id=request.node_id,
                token_window=self.token_window,
                clock=self.clock,
            )
            shared = _NextLink(link, key)
            self.next_links.setdefault(key, []).append(shared)
            self.next_links_opened += 1
            link.deliver_to(lambda frames: self._from_next(shared, frames))
            shared.watch = asyncio.ensure_future(self._watch_next(shared))
            return shared

    def _from_next(self, shared: _NextLink, frames: list[memoryview]) -> None:
        # Relayed toward each client: one put per circuit for the whole batch.
        back: dict[_Hop, list[Buffer]] = {}
        for frame in frames:
            try:
                cell = parse_cell(frame)
            except MalformedMessage:
                self.metrics.counters.drop("not_a_cell")
                continue
            hop = shared.hops.get(cell.circuit)
            if hop is None or hop.closed:
                self.metrics.counters.drop("unknown_circuit")
            elif cell.kind is CellKind.CREATED and hop.created is not None:
                try:
                    created = hop.created_parts.add(cell.body)
                except MalformedMessage:
                    hop.created.set_exception(MalformedMessage("created too large"))
                    hop.created = None
                    continue
                if created is not None and not hop.created.done():
                    hop.created.set_result(created)
                    hop.created = None
            elif cell.kind is CellKind.RELAY:
                wrapped = hop.circuit.from_next(cell.body, hop.prev_header)
                if wrapped is not None:
                    self.relayed_cells += 1
                    self.relayed_bytes += len(cell.body)
                    back.setdefault(hop, []).append(wrapped)  # its header toward prev included
            elif cell.kind is CellKind.DESTROY:
                hop.to_prev.put(back.pop(hop, []))  # what came before the DESTROY still goes
                self.close_hop(hop, DestroyReason.NEXT_HOP_GONE, tell_next=False)
            else:
                self.metrics.counters.drop("unexpected_cell")
        for hop, cells in back.items():
            if not hop.closed:
                hop.to_prev.put(cells)

    async def _watch_next(self, shared: _NextLink) -> None:
        """When a shared link ends, every circuit on it ends (or fails to extend)."""
        with contextlib.suppress(TransportClosed):
            while True:
                await shared.link.recv_frames()
        self._forget(shared)
        for hop in list(shared.hops.values()):
            if hop.closed:
                continue
            if hop.created is not None and not hop.created.done():
                hop.created.set_exception(TransportClosed("next hop closed"))
                continue
            log.info("next hop of a circuit closed its link: tearing the circuit down")
            self.close_hop(hop, DestroyReason.NEXT_HOP_GONE, tell_next=False)

    def _drop_next(self, hop: _Hop, *, tell: bool = False) -> None:
        """Take ``hop`` off its link to the next hop (``tell``: send that hop a DESTROY for
        it, as when an EXTEND is given up while the link serves other circuits)."""
        shared, hop.next_link, hop.next = hop.next_link, None, None
        if hop.to_next is not None:
            hop.to_next.stop()
            hop.to_next = None
        if shared is None or shared.hops.get(hop.next_id) is not hop:
            return
        del shared.hops[hop.next_id]
        if tell and shared.hops:
            with contextlib.suppress(TransportClosed):
                shared.link.send_now([destroy_cell(hop.next_id, DestroyReason.NORMAL)])
        self._release(shared)

    def _release(self, shared: _NextLink) -> None:
        """A next-hop link that no circuit uses stays offered to extends for a while
        (``next_link_idle_s``), then closes."""
        if shared.hops or shared.idle is not None:
            return
        if self.next_link_idle_s <= 0 or shared.link.close_reason is not None:
            self._close_next(shared)
            return
        delay = self.next_link_idle_s * (0.75 + secrets.randbelow(501) / 1000)
        shared.idle = asyncio.get_running_loop().call_later(delay, self._idle_ended, shared)

    def _idle_ended(self, shared: _NextLink) -> None:
        shared.idle = None
        if not shared.hops:
            self._close_next(shared)

    def _close_next(self, shared: _NextLink) -> None:
        self._forget(shared)
        asyncio.ensure_future(shared.link.close()).add_done_callback(_log_failure)

    def _forget(self, shared: _NextLink) -> None:
        """No extend is offered ``shared`` from now on."""
        if shared.idle is not None:
            shared.idle.cancel()
            shared.idle = None
        links = self.next_links.get(shared.key, [])
        if shared in links:
            links.remove(shared)
        if not links:
            self.next_links.pop(shared.key, None)

    # -- the life of circuits --------------------------------------------------------------

    def close_hop(
        self,
        hop: _Hop,
        reason: DestroyReason,
        *,
        tell_prev: bool = True,
        tell_next: bool = True,
    ) -> None:
        if hop.closed:
            return
        hop.closed = True
        self._hops.pop((id(hop.prev), hop.prev_id), None)
        if tell_prev:
            with contextlib.suppress(TransportClosed):
                hop.prev.send_now([destroy_cell(hop.prev_id, reason)])
        if tell_next and hop.next is not None:
            with contextlib.suppress(TransportClosed):
                hop.next.send_now([destroy_cell(hop.next_id, DestroyReason.NORMAL)])
        if hop.created is not None and not hop.created.done():
            hop.created.set_exception(TransportClosed("circuit closed"))
        self._drop_next(hop)
        hop.to_prev.stop()
        if hop.port is not None:
            hop.port.end()
        current = asyncio.current_task()
        for task in hop.tasks:
            if task is not current:
                task.cancel()
        hop.circuit.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Ratchet every circuit's backward layer at each clock epoch until ``stop``."""
        interval = self.session_config.rekey_interval
        while not stop.is_set():
            wait = interval - self.clock() % interval if interval else 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 0.01))
                break
            if interval:
                for hop in list(self._hops.values()):
                    if not hop.closed:
                        hop.circuit.ratchet()
                self.metrics.counters.rekeys += 1
        self.close()

    def close(self) -> None:
        """End every circuit through this exit and close every link to a next hop."""
        for hop in list(self._hops.values()):
            self.close_hop(hop, DestroyReason.NORMAL)
        for shared in self._all_next_links():
            self._close_next(shared)


def registry_endpoints(config: Config) -> Callable[[bytes], str | None] | None:
    """``nodeId -> endpoint`` read from the registry named by ``chain.*``; None without it."""
    chain = config.chain
    if not (chain.rpc_url and chain.contract_address):
        return None
    rpc, address = chain.rpc_url, chain.contract_address

    def endpoint_of(node_id: bytes) -> str | None:
        from contracts.client import RegistryClient, connect  # noqa: PLC0415 (web3 on use)

        record = RegistryClient(connect(rpc), address).node(node_id)
        if bytes(record.node_id) != node_id or not record.healthy:
            return None
        return str(record.endpoint)

    return endpoint_of


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("relay task failed: %r", task.exception())
