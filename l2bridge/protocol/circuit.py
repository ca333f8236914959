"""Multi-hop circuits, telescoped as Tor and Lokinet build theirs (sans-I/O).

Client (``ClientCircuit``), over its link to hop 1::

    circ = ClientCircuit(circuit_id, mode=Mode.HYBRID)
    cells = circ.first_hop(node_id_1, checker)        # CREATE cells: send on the link
    got = circ.receive(frame, now)                    # -> HopAdded(1) once CREATED checks
    cells = circ.extend(node_id_2, endpoint_2, checker)   # RELAY/EXTEND via hop 1
    got = circ.receive(frame, now)                    # -> HopAdded(2) (or HopRefused)
    ... up to MAX_HOPS; then
    cells = circ.seal_frames(frames)                  # a RELAY cell per frame (2 for GSO)
    got.frames                                        # frames the tail switched back

Hop (``RelayCircuit``), one per circuit it is on::

    hop, created_cells = RelayCircuit.accept(create, circuit_id, identity, ...)
    out = hop.from_previous(body, now)   # out.forward: body for the next hop;
                                         # at the tail: out.frames, out.extend
    body = hop.from_next(body)           # wrapped once more toward the client
    bodies = hop.originate(frames)       # tail: frames from its L2 segment
    bodies = hop.extended_by(created) / hop.extend_failed(reason)

A hop only ever knows its two neighbours: the client's identity never reaches it (the
per-hop exchange carries none) and its position is hidden by the fixed onion header. Cells
that fail to open (tampered, replayed, unknown generation) are dropped and counted in
``stats.drops``; peer bytes never raise out of ``receive``/``from_previous``/``from_next``
(a bad or oversized CREATED becomes ``HopRefused``). Our own misuse raises ``StateError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from l2bridge.constants import MAX_COUNTER, MAX_HOPS, Mode
from l2bridge.crypto.pq import Backend
from l2bridge.errors import MalformedMessage, PeerError, RecordRejected, StateError
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.protocol import onion
from l2bridge.protocol.cells import (
    CellKind,
    DestroyReason,
    Extend,
    ExtendFailure,
    HandshakeAssembler,
    Reassembler,
    RelayCommand,
    cell_header,
    destroy_cell,
    destroy_reason,
    handshake_cells,
    parse_cell,
    relay_payloads,
)
from l2bridge.protocol.handshake import EvidenceChecker, EvidenceProvider
from l2bridge.protocol.hopshake import ClientHopKeys, HopInitiator, RelayHopKeys, respond


class CircuitStats:
    """Counters a driver exports; ``drops`` is keyed by reason."""

    __slots__ = ("bytes_in", "bytes_out", "cells_in", "cells_out", "drops", "ratchets")

    def __init__(self, drops: Counter[str] | None = None) -> None:
        self.cells_in = self.cells_out = 0
        self.bytes_in = self.bytes_out = 0
        self.ratchets = 0
        # A driver may pass its node-wide counter, so drops outlive the circuit.
        self.drops: Counter[str] = Counter() if drops is None else drops


@dataclass(frozen=True, slots=True)
class HopAdded:
    node_id: bytes
    length: int  # hops in the circuit now
    evidence: bytes


@dataclass(frozen=True, slots=True)
class HopRefused:
    """The hop being added failed (``reason``: local log only).

    After EXTEND_FAILED the circuit keeps its hops and its tail may be asked again. After a
    CREATED that does not check (identity, signature, evidence) the tail still holds a link
    to that hop, so the circuit must not carry data: close it and build a new one without
    the refused hop (``usable`` is False then).
    """

    node_id: bytes
    reason: str
    usable: bool = False


@dataclass(frozen=True, slots=True)
class Destroyed:
    reason: DestroyReason


CircuitEvent: TypeAlias = HopAdded | HopRefused | Destroyed


@dataclass(frozen=True, slots=True)
class CircuitReceived:
    frames: list[bytes | memoryview] = field(default_factory=list)
    events: tuple[CircuitEvent, ...] = ()


class ClientCircuit:
    """The client's end of one circuit, on its link to hop 1."""

    def __init__(
        self, circuit_id: int, *, mode: Mode = Mode.HYBRID, backend: Backend | None = None
    ):
        self.circuit_id = circuit_id
        self.mode = mode
        self._backend = backend
        self.hops: list[ClientHopKeys] = []
        self.node_ids: list[bytes] = []
        self.stats = CircuitStats()
        self.closed = False
        self._pending: HopInitiator | None = None
        self._created = HandshakeAssembler()
        self._messages = Reassembler(self.stats.drops)
        self._sequence = 0
        self._refused = False  # a hop's CREATED failed: no data may go out any more

    @property
    def length(self) -> int:
        return len(self.hops)

    @property
    def pending(self) -> bytes | None:
        """The nodeId of the hop being added, if any."""
        return self._pending.node_id if self._pending is not None else None

    def _initiator(self, node_id: bytes, checker: EvidenceChecker | None) -> HopInitiator:
        if self.closed or self._refused:
            raise StateError("circuit closed or holding a refused hop")
        if self._pending is not None:
            raise StateError("a hop is already being added")
        if len(self.hops) >= MAX_HOPS:
            raise StateError("circuit already has MAX_HOPS hops")
        if node_id in self.node_ids:
            raise StateError("a node may appear only once in a circuit")
        self._pending = HopInitiator(
            node_id, mode=self.mode, evidence_checker=checker, backend=self._backend
        )
        return self._pending

    def first_hop(self, node_id: bytes, checker: EvidenceChecker | None) -> list[bytes]:
        """CREATE cells for hop 1 (the exit at the other end of our link)."""
        if self.hops:
            raise StateError("circuit already has its first hop")
        init = self._initiator(node_id, checker)
        return handshake_cells(CellKind.CREATE, self.circuit_id, init.create())

    def extend(
        self, node_id: bytes, endpoint: str, checker: EvidenceChecker | None
    ) -> list[bytearray]:
        """RELAY cells asking the current tail to extend to ``node_id`` at ``endpoint``."""
        if not self.hops:
            raise StateError("no first hop yet")
        init = self._initiator(node_id, checker)
        body = Extend(node_id, endpoint, init.create()).encode()
        return self._relay(RelayCommand.EXTEND, body)

    def seal_frames(self, frames: Sequence[bytes | bytearray | memoryview]) -> list[bytearray]:
        """One RELAY cell per frame, for the tail to switch into its segment."""
        if not self.hops or self._pending is not None or self._refused:
            raise StateError("circuit not ready for data")
        out: list[bytearray] = []
        for frame in frames:
            out.extend(self._relay(RelayCommand.DATA, frame))
        return out

    def _relay(
        self, command: RelayCommand, data: bytes | bytearray | memoryview
    ) -> list[bytearray]:
        if self.closed:
            raise StateError("circuit closed")
        layers = [hop.forward for hop in self.hops]
        header = cell_header(CellKind.RELAY, self.circuit_id)
        cells = []
        for payload in relay_payloads(command, data):
            if self._sequence > MAX_COUNTER:
                raise StateError("circuit sequence exhausted")
            cells.append(onion.wrap_forward(layers, payload, self._sequence, header))
            self._sequence += 1
        self.stats.cells_out += len(cells)
        self.stats.bytes_out += len(data) if command is RelayCommand.DATA else 0
        return cells

    def join_segment(self) -> list[bytearray]:
        """A PADDING message for the tail, sent once the circuit is built: the tail joins
        its L2 segment on it (``HopOutput.join``), so frames reach a client whose own LAN
        has not spoken yet. Middle hops see one cell like any other."""
        if not self.hops or self._pending is not None or self._refused:
            raise StateError("circuit not ready for data")
        return self._relay(RelayCommand.PADDING, b"")

    def ratchet(self) -> None:
        """Move every hop's forward layer to its next generation (the clock's epoch)."""
        for hop in self.hops:
            hop.forward.ratchet()
        self.stats.ratchets += 1

    def receive(self, frame: bytes | bytearray | memoryview, now: float) -> CircuitReceived:
        """One cell from hop 1; bad cells are dropped and counted."""
        if self.closed:
            return CircuitReceived()
        try:
            cell = parse_cell(frame)
        except MalformedMessage:
            self.stats.drops["not_a_cell"] += 1
            return CircuitReceived()
        if cell.circuit != self.circuit_id:
            self.stats.drops["wrong_circuit"] += 1
            return CircuitReceived()
        self.stats.cells_in += 1
        if cell.kind is CellKind.DESTROY:
            self.close()
            return CircuitReceived(events=(Destroyed(destroy_reason(cell.body)),))
        if cell.kind is CellKind.CREATED:
            return self._created_cell(cell.body)
        if cell.kind is not CellKind.RELAY or not self.hops:
            self.stats.drops["unexpected_cell"] += 1
            return CircuitReceived()
        try:
            payload = onion.unwrap_backward([h.backward for h in self.hops], cell.body, now)
        except RecordRejected as exc:
            self.stats.drops[exc.reason] += 1
            return CircuitReceived()
        message = self._messages.add(self.hops[-1].backward.last_sequence, payload)
        if message is None:
            return CircuitReceived()
        if message.command is RelayCommand.DATA:
            self.stats.bytes_in += len(message.data)
            return CircuitReceived(frames=[message.data])
        if message.command is RelayCommand.EXTENDED and self._pending is not None:
            return CircuitReceived(events=(self._finish(bytes(message.data)),))
        if message.command is RelayCommand.EXTEND_FAILED and self._pending is not None:
            node, self._pending = self._pending.node_id, None
            event = HopRefused(node, "the tail could not extend", usable=True)
            return CircuitReceived(events=(event,))
        if message.command is not RelayCommand.PADDING:
            self.stats.drops["unexpected_message"] += 1
        return CircuitReceived()

    def _created_cell(self, body: memoryview) -> CircuitReceived:
        if self.hops or self._pending is None:
            self.stats.drops["unexpected_cell"] += 1
            return CircuitReceived()
        try:
            data = self._created.add(body)
        except MalformedMessage:
            node, self._pending = self._pending.node_id, None
            return CircuitReceived(events=(HopRefused(node, "oversized CREATED"),))
        if data is None:
            return CircuitReceived()
        return CircuitReceived(events=(self._finish(data),))

    def _finish(self, created: bytes) -> CircuitEvent:
        init = self._pending
        assert init is not None
        self._pending = None
        try:
            keys = init.finish(created)
        except PeerError as exc:
            self._refused = True
            return HopRefused(init.node_id, f"{exc}: {exc.detail}")
        self.hops.append(keys)
        self.node_ids.append(init.node_id)
        return HopAdded(init.node_id, len(self.hops), keys.evidence)

    def close(self) -> bytes:
        """Wipe every layer; the DESTROY cell to send to hop 1."""
        self.closed = True
        for hop in self.hops:
            hop.forward.wipe()
            hop.backward.wipe()
        return destroy_cell(self.circuit_id, DestroyReason.NORMAL)


@dataclass(frozen=True, slots=True)
class HopOutput:
    """What one cell from the previous hop asks of this hop."""

    forward: bytearray | None = None  # the prefix and a body for the next hop (middle hops)
    frames: tuple[bytes | memoryview, ...] = ()  # tail: L2 frames to switch
    extend: Extend | None = None  # tail: open a link to the next hop and send the CREATE
    reply: tuple[bytearray, ...] = ()  # bodies to send back at once (EXTEND_FAILED)
    join: bool = False  # tail: an authentic DATA or PADDING message: be a port of the segment


class RelayCircuit:
    """One hop's state for one circuit (both directions)."""

    def __init__(
        self, circuit_id: int, keys: RelayHopKeys, drops: Counter[str] | None = None
    ) -> None:
        self.circuit_id = circuit_id
        self._keys = keys
        self.stats = CircuitStats(drops)
        self._messages = Reassembler(self.stats.drops)
        self._sequence = 0
        self.next_hop: bytes | None = None  # nodeId we extended to (or are extending to)
        self.extended = False
        self.closed = False

    @classmethod
    def accept(
        cls,
        create: bytes,
        circuit_id: int,
        identity: HybridSigningKey,
        *,
        modes: frozenset[Mode] = frozenset((Mode.HYBRID,)),
        evidence_provider: EvidenceProvider | None = None,
        backend: Backend | None = None,
        drops: Counter[str] | None = None,
    ) -> tuple[RelayCircuit, list[bytes]]:
        """Answer a CREATE: (the circuit, CREATED cells). PeerError on a bad CREATE."""
        created, keys = respond(
            create, identity, modes=modes, evidence_provider=evidence_provider, backend=backend
        )
        cells = handshake_cells(CellKind.CREATED, circuit_id, created)
        return cls(circuit_id, keys, drops), cells

    @property
    def is_tail(self) -> bool:
        return self.next_hop is None

    def from_previous(self, body: memoryview | bytes, now: float, prefix: bytes = b"") -> HopOutput:
        """What a cell from the previous hop asks; a middle hop's ``forward`` is ``prefix``
        (the next link's cell header) and the body for the next hop, in one buffer."""
        if self.closed:
            return HopOutput()
        tail = self.is_tail
        try:
            if tail:
                payload = onion.open_forward(self._keys.forward, body, now)
            else:
                peeled = onion.peel_forward(self._keys.forward, body, now, prefix)
        except RecordRejected as exc:
            self.stats.drops[exc.reason] += 1
            return HopOutput()
        self.stats.cells_in += 1
        if not tail:
            self.stats.bytes_out += len(peeled) - len(prefix)
            return HopOutput(forward=peeled)
        message = self._messages.add(self._keys.forward.last_sequence, payload)
        if message is None:
            return HopOutput()
        if message.command is RelayCommand.DATA:
            self.stats.bytes_in += len(message.data)
            return HopOutput(frames=(message.data,), join=True)
        if message.command is RelayCommand.EXTEND:
            try:
                request = Extend.decode(bytes(message.data))
            except MalformedMessage:
                self.stats.drops["bad_extend"] += 1
                return HopOutput(reply=tuple(self.extend_failed(ExtendFailure.REFUSED)))
            self.next_hop = request.node_id
            return HopOutput(extend=request)
        if message.command is RelayCommand.PADDING:
            return HopOutput(join=True)
        self.stats.drops["unexpected_message"] += 1
        return HopOutput()

    def from_next(self, body: memoryview | bytes, prefix: bytes = b"") -> bytearray | None:
        """``prefix`` and our layer over a body from the next hop, in one buffer; None
        (counted) when it is unusable."""
        if self.closed or not self.extended:
            self.stats.drops["unexpected_cell"] += 1
            return None
        try:
            wrapped = onion.wrap_backward(self._keys.backward, body, self._next_sequence(), prefix)
        except RecordRejected as exc:
            self.stats.drops[exc.reason] += 1
            return None
        self.stats.bytes_out += len(body)
        return wrapped

    def originate(
        self, frames: Sequence[bytes | bytearray | memoryview], prefix: bytes = b""
    ) -> list[bytearray]:
        """Tail: RELAY bodies carrying frames from our segment back to the client, each
        after ``prefix`` (the cell header toward the previous hop) in one buffer."""
        out: list[bytearray] = []
        for frame in frames:
            out.extend(self._originate(RelayCommand.DATA, frame, prefix))
        return out

    def extended_by(self, created: bytes) -> list[bytearray]:
        """The next hop answered: EXTENDED bodies toward the client."""
        self.extended = True
        return self._originate(RelayCommand.EXTENDED, created)

    def extend_failed(self, reason: ExtendFailure) -> list[bytearray]:
        """The extension failed: this hop is the tail again."""
        self.next_hop = None
        self.extended = False
        return self._originate(RelayCommand.EXTEND_FAILED, bytes((reason,)))

    def _originate(
        self, command: RelayCommand, data: bytes | bytearray | memoryview, prefix: bytes = b""
    ) -> list[bytearray]:
        if self.closed:
            return []
        out = []
        for payload in relay_payloads(command, data):
            out.append(
                onion.originate_backward(
                    self._keys.backward, payload, self._next_sequence(), prefix
                )
            )
        return out

    def _next_sequence(self) -> int:
        if self._sequence > MAX_COUNTER:
            raise StateError("circuit sequence exhausted")
        seq = self._sequence
        self._sequence += 1
        return seq

    def ratchet(self) -> None:
        """Move our backward layer to its next generation (the clock's epoch)."""
        self._keys.backward.ratchet()
        self.stats.ratchets += 1

    def close(self) -> None:
        self.closed = True
        self._keys.forward.wipe()
        self._keys.backward.wipe()
