"""An in-memory chain of hops around one ClientCircuit (no sockets), for circuit tests.

``Net.build(n)`` telescopes a circuit through ``n`` hops exactly as the drivers do: cells
from the client go to hop 1; a hop that is not the tail hands the peeled body to the next
hop; the tail's EXTEND becomes a CREATE to a new hop whose CREATED comes back as EXTENDED
through every hop's ``from_next``. ``taps`` lets a test read or change what crosses each
link (index i: between hop i and hop i+1, 0 = client -> hop 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from l2bridge.constants import Mode
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.protocol.cells import CellKind, HandshakeAssembler, encode_cell, parse_cell
from l2bridge.protocol.circuit import ClientCircuit, HopAdded, RelayCircuit

NOW = 1_700_000_000.0

_KEYS: list[HybridSigningKey] = []


def identities(n: int) -> list[HybridSigningKey]:
    while len(_KEYS) < n:
        _KEYS.append(HybridSigningKey.generate())
    return _KEYS[:n]


def provider(nonce: bytes, node_id: bytes) -> bytes:
    """A stand-in for TPM evidence: a hash over exactly what real evidence must cover."""
    return b"EV" + hashlib.sha256(nonce + node_id).digest()


def checker(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
    if evidence != provider(nonce, node_id):
        raise ValueError("evidence does not cover this nonce and node")


Tap = Callable[[int, str, bytes], bytes | None]


@dataclass
class Net:
    mode: Mode = Mode.HYBRID
    keys: list[HybridSigningKey] = field(default_factory=list)
    hops: list[RelayCircuit] = field(default_factory=list)
    client: ClientCircuit = field(default_factory=lambda: ClientCircuit(7))
    frames_at_tail: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    providers: dict[int, Callable[[bytes, bytes], bytes]] = field(default_factory=dict)
    tap: Tap | None = None
    created: dict[int, HandshakeAssembler] = field(default_factory=dict)

    @classmethod
    def build(cls, n: int, mode: Mode = Mode.HYBRID) -> Net:
        net = cls(mode=mode, keys=identities(n), client=ClientCircuit(7, mode=mode))
        net.deliver_from_client(net.client.first_hop(net.keys[0].node_id, checker))
        for i in range(1, n):
            net.deliver_from_client(
                net.client.extend(net.keys[i].node_id, f"ws://hop{i}/ws", checker)
            )
        assert [e.length for e in net.events if isinstance(e, HopAdded)] == list(range(1, n + 1))
        return net

    def _tapped(self, link: int, direction: str, body: bytes) -> bytes | None:
        return body if self.tap is None else self.tap(link, direction, body)

    def _accept(self, index: int, create: bytes) -> list[bytes]:
        prov = self.providers.get(index, provider)
        circuit = 7 if index == 0 else 100 + index
        hop, created = RelayCircuit.accept(
            create, circuit, self.keys[index], modes=frozenset((self.mode,)), evidence_provider=prov
        )
        self.hops.append(hop)
        return created

    def deliver_from_client(self, cells: list[bytes]) -> None:
        assembler = HandshakeAssembler()
        for frame in cells:
            cell = parse_cell(frame)
            if cell.kind is CellKind.CREATE:
                create = assembler.add(cell.body)
                if create is not None:
                    for c in self._accept(0, create):
                        self.to_client(c)
            else:
                body = self._tapped(0, "F", bytes(cell.body))
                if body is not None:
                    self.forward(0, body)

    def forward(self, index: int, body: bytes) -> None:
        out = self.hops[index].from_previous(body, NOW)
        if out.forward is not None:
            nxt = self._tapped(index + 1, "F", out.forward)
            if nxt is not None:
                self.forward(index + 1, nxt)
        self.frames_at_tail.extend(out.frames)
        if out.join:
            self.joined.append(index)
        for reply in out.reply:
            self.backward(index, reply)
        if out.extend is not None:
            created_cells = self._accept(index + 1, out.extend.create)
            assembler = HandshakeAssembler()
            for frame in created_cells:
                created = assembler.add(parse_cell(frame).body)
                if created is not None:
                    for reply in self.hops[index].extended_by(created):
                        self.backward(index, reply)

    def backward(self, index: int, body: bytes) -> None:
        """``body`` leaves hop ``index`` toward the client (already wrapped by that hop)."""
        body_or_none = self._tapped(index, "B", body)
        if body_or_none is None:
            return
        if index == 0:
            self.to_client(encode_cell(CellKind.RELAY, 7, body_or_none))
            return
        wrapped = self.hops[index - 1].from_next(body_or_none)
        if wrapped is not None:
            self.backward(index - 1, wrapped)

    def to_client(self, frame: bytes) -> None:
        got = self.client.receive(frame, NOW)
        self.events.extend(got.events)
        self.client_frames.extend(got.frames)

    client_frames: list[bytes] = field(default_factory=list)
    joined: list[int] = field(default_factory=list)  # hops that asked to join the segment

    def send(self, frames: list[bytes]) -> None:
        self.deliver_from_client(self.client.seal_frames(frames))

    def reply(self, frames: list[bytes]) -> None:
        tail = len(self.hops) - 1
        for body in self.hops[tail].originate(frames):
            self.backward(tail, body)
