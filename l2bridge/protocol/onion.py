"""Onion layers of a multi-hop circuit (sans-I/O): one AEAD layer per hop and direction.

A relay cell body is a fixed-size onion header followed by a payload of one size class::

    header: MAX_HOPS slots of 32 bytes   (ONION_HEADER_SIZE = 160)
        slot = AES-256(header key, sequence u64 | generation u32 | 0 u32) | GCM tag (16)
    payload: S bytes (one of RELAY_SIZE_CLASSES), AES-256-GCM ciphertext without its tag

Each layer is AES-256-GCM with the tag *detached* into the layer's slot, so the payload
keeps its size through every layer and only the header changes:

* forward (client -> tail): the client seals the payload for hops k..1 (innermost first)
  and writes their slots in order 1..k, then random slots up to MAX_HOPS. Hop i opens slot
  0, shifts the header left by one slot and appends a random slot.
* backward (tail -> client): the tail seals and writes its slot first (the rest random);
  each hop on the way seals once more and puts its slot in front, dropping the last slot
  (never a needed one: a circuit has at most MAX_HOPS hops). The client opens slots 1..k.

Every hop therefore sees a 160-byte header and an S-byte payload whatever the circuit's
length and its own position; the slots it cannot open look like random bytes.

The sequence number is the AEAD nonce (the direction's IV XOR the sequence, as records do)
and is carried inside the slot's AES block under a per-hop header key, so hops on one
circuit see unrelated values and cannot line their cells up by counter. The generation
counts key ratchets: ``ratchet()`` replaces the sender's key by HKDF of its chaining
secret; a receiver follows when an authentic cell of the next generation arrives and keeps
the previous one for a grace period, so no cell is lost across a ratchet. Cells that fail
(bad slot, bad tag, replayed, unknown generation) raise ``RecordRejected(reason)``; the
caller counts and drops them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA384
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from l2bridge.constants import (
    AEAD_KEY_SIZE,
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    CHAIN_SECRET_SIZE,
    CIRCUIT_GRACE_SECONDS,
    MAX_COUNTER,
    MAX_GENERATION_STEP,
    MAX_HOPS,
    ONION_HEADER_SIZE,
    ONION_SLOT_SIZE,
    RELAY_SIZE_CLASSES,
)
from l2bridge.crypto.secret import wipe
from l2bridge.errors import RecordRejected, StateError
from l2bridge.protocol.replay import ReplayWindow, Verdict

Buffer: TypeAlias = bytes | bytearray | memoryview
_BLOCK = struct.Struct(">QII")
_BLOCK_SIZE = 16
_HEADER_KEY_SIZE = 32
_DIRECTION_SIZE = AEAD_KEY_SIZE + AEAD_NONCE_SIZE + _HEADER_KEY_SIZE + CHAIN_SECRET_SIZE
_RATCHET_SIZE = AEAD_KEY_SIZE + AEAD_NONCE_SIZE + CHAIN_SECRET_SIZE
_HOP_INFO = b"shadowmesh v1 circuit hop keys"
_RATCHET_INFO = b"shadowmesh v1 circuit ratchet"
FORWARD, BACKWARD = b"F", b"B"
_AAD = {FORWARD: b"shadowmesh v1 onion F", BACKWARD: b"shadowmesh v1 onion B"}


def body_size(payload_size: int) -> int:
    return ONION_HEADER_SIZE + payload_size


def is_body_size(size: int) -> bool:
    return size - ONION_HEADER_SIZE in RELAY_SIZE_CLASSES


@dataclass(slots=True)
class _Generation:
    number: int
    key: bytearray
    iv: bytearray
    chain: bytearray
    aead: AESGCM | None
    iv_int: int = 0  # the IV as an integer, for the per-cell nonce

    @classmethod
    def make(cls, number: int, key: bytearray, iv: bytearray, chain: bytearray) -> _Generation:
        return cls(number, key, iv, chain, AESGCM(bytes(key)), int.from_bytes(iv, "big"))

    def ratcheted(self) -> _Generation:
        okm = bytearray(
            HKDF(SHA384(), _RATCHET_SIZE, salt=None, info=_RATCHET_INFO).derive(bytes(self.chain))
        )
        try:
            k, n = AEAD_KEY_SIZE, AEAD_NONCE_SIZE
            return _Generation.make(
                self.number + 1,
                bytearray(okm[:k]),
                bytearray(okm[k : k + n]),
                bytearray(okm[k + n :]),
            )
        finally:
            wipe(okm)

    def nonce(self, sequence: int) -> bytes:
        return (self.iv_int ^ sequence).to_bytes(AEAD_NONCE_SIZE, "big")

    def wipe(self) -> None:
        for buf in (self.key, self.iv, self.chain):
            wipe(buf)
        self.aead = None
        self.iv_int = 0


@dataclass(frozen=True, slots=True)
class DirectionSecret:
    """One direction's starting key material (all wiped by the layer that takes it)."""

    key: bytearray
    iv: bytearray
    header_key: bytearray
    chain: bytearray


def derive_hop(ikm: bytes | bytearray, salt: bytes) -> tuple[DirectionSecret, DirectionSecret]:
    """(forward, backward) secrets of one hop from its hybrid exchange (HKDF-SHA-384)."""
    okm = bytearray(
        HKDF(SHA384(), 2 * _DIRECTION_SIZE, salt=salt, info=_HOP_INFO).derive(bytes(ikm))
    )
    try:
        out = []
        for base in (0, _DIRECTION_SIZE):
            k, n, h = AEAD_KEY_SIZE, AEAD_NONCE_SIZE, _HEADER_KEY_SIZE
            view = okm[base : base + _DIRECTION_SIZE]
            out.append(
                DirectionSecret(
                    bytearray(view[:k]),
                    bytearray(view[k : k + n]),
                    bytearray(view[k + n : k + n + h]),
                    bytearray(view[k + n + h :]),
                )
            )
            wipe(view)
        return out[0], out[1]
    finally:
        wipe(okm)


class _HeaderCipher:
    """The slot's 16-byte block under the hop's header key: a pseudorandom permutation."""

    __slots__ = ("_dec", "_enc", "_key")

    def __init__(self, key: bytearray) -> None:
        self._key = key
        # One block of a value never repeated under this key: AES as a pseudorandom
        # permutation (as QUIC's header protection uses it), not ECB over a message. ECB
        # keeps no state between blocks, so one context serves every cell.
        cipher = Cipher(algorithms.AES(bytes(key)), modes.ECB())  # noqa: S305
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def seal(self, sequence: int, generation: int) -> bytes:
        return self._enc.update(_BLOCK.pack(sequence, generation, 0))

    def open(self, block: Buffer) -> tuple[int, int]:
        sequence, generation, zero = _BLOCK.unpack(self._dec.update(block))
        if zero:
            raise RecordRejected("bad_slot")
        return sequence, generation

    def wipe(self) -> None:
        wipe(self._key)


class LayerSender:
    """Seals one hop's layer in one direction. The caller supplies unique sequences.

    ``ratchet()`` takes effect at the next ``seal``, once however often it was called
    meanwhile: consecutive cells are never more than one generation apart, so a receiver
    that follows one step at a time keeps up with a circuit that was idle for many epochs.
    """

    __slots__ = ("_gen", "_header", "_label", "_ratchet_due", "_scratch", "filler")

    def __init__(self, secret: DirectionSecret, direction: bytes) -> None:
        self._label = _AAD[direction]
        self._header = _HeaderCipher(secret.header_key)
        self._gen = _Generation.make(0, secret.key, secret.iv, secret.chain)
        self._ratchet_due = False
        self._scratch = bytearray()
        self.filler = _Filler()

    @property
    def generation(self) -> int:
        """The generation the next cell is sealed in."""
        return self._gen.number + (1 if self._ratchet_due else 0)

    def seal_into(self, payload: Buffer, sequence: int, out: memoryview) -> bytes:
        """Encrypt ``payload`` (n bytes) into ``out`` (n + 16 bytes: the ciphertext, then the
        tag in its last 16, which the caller may drop); the 32-byte slot. ``out`` must not
        overlap ``payload``."""
        if self._ratchet_due:
            old = self._gen
            self._gen = old.ratcheted()
            old.wipe()
            self._ratchet_due = False
        gen = self._gen
        if gen.aead is None:
            raise StateError("layer wiped")
        if not 0 <= sequence <= MAX_COUNTER:
            raise StateError("sequence exhausted")
        gen.aead.encrypt_into(gen.nonce(sequence), payload, self._label, out)
        return self._header.seal(sequence, gen.number) + out[-AEAD_TAG_SIZE:].tobytes()

    def seal(self, payload: Buffer, sequence: int) -> tuple[memoryview, bytes]:
        """(ciphertext of the same size; 32-byte slot)."""
        out = bytearray(len(payload) + AEAD_TAG_SIZE)
        view = memoryview(out)
        slot = self.seal_into(payload, sequence, view)
        return view[:-AEAD_TAG_SIZE], slot

    def scratch(self, size: int) -> memoryview:
        """A buffer of ``size`` bytes owned by this layer, reused by the next call: where
        ``wrap_forward`` puts an inner layer's ciphertext for the next layer to seal."""
        if len(self._scratch) < size:
            self._scratch = bytearray(size)
        return memoryview(self._scratch)[:size]

    def ratchet(self) -> int:
        """Move to the next generation at the next seal (the old key is wiped then)."""
        self._ratchet_due = True
        return self.generation

    def wipe(self) -> None:
        self._gen.wipe()
        self._header.wipe()


class LayerReceiver:
    """Opens one hop's layer in one direction; follows the sender's ratchets."""

    __slots__ = (
        "_current", "_header", "_label", "_previous", "_previous_until", "_sealed", "_window",
        "filler", "last_sequence",
    )  # fmt: skip

    def __init__(self, secret: DirectionSecret, direction: bytes) -> None:
        self._label = _AAD[direction]
        self._header = _HeaderCipher(secret.header_key)
        self._current = _Generation.make(0, secret.key, secret.iv, secret.chain)
        self._previous: _Generation | None = None
        self._previous_until = 0.0
        self._window = ReplayWindow()
        self.last_sequence = -1  # the sequence of the last cell that opened
        self._sealed = bytearray()  # ciphertext || tag of the cell being opened (reused)
        self.filler = _Filler()

    @property
    def generation(self) -> int:
        return self._current.number

    def open(self, slot: Buffer, ciphertext: Buffer, now: float) -> bytearray:
        """The plaintext; ``RecordRejected`` (nothing changed) when the layer does not open."""
        out = bytearray(len(ciphertext))
        self.open_into(slot, ciphertext, memoryview(out), now)
        return out

    def open_into(self, slot: Buffer, ciphertext: Buffer, out: memoryview, now: float) -> None:
        """Decrypt into ``out`` (the ciphertext's size, not overlapping it). On
        ``RecordRejected`` nothing changed here and ``out`` holds garbage: drop it."""
        if len(slot) != ONION_SLOT_SIZE:
            raise RecordRejected("bad_slot")
        sequence, number = self._header.open(slot[:_BLOCK_SIZE])
        verdict = self._window.check(sequence)
        if verdict is Verdict.REPLAYED or verdict is Verdict.TOO_OLD:
            raise RecordRejected(verdict.value)
        self._expire(now)
        candidate: _Generation | None = None
        if number == self._current.number:
            gen = self._current
        elif self._previous is not None and number == self._previous.number:
            gen = self._previous
        elif 0 < number - self._current.number <= MAX_GENERATION_STEP:
            candidate = self._current.ratcheted()
            gen = candidate
        else:
            raise RecordRejected("unknown_generation")
        assert gen.aead is not None
        # AES-GCM wants ciphertext || tag in one buffer: one copy into a reused one.
        size = len(ciphertext)
        if len(self._sealed) < size + AEAD_TAG_SIZE:
            self._sealed = bytearray(size + AEAD_TAG_SIZE)
        sealed = memoryview(self._sealed)[: size + AEAD_TAG_SIZE]
        sealed[:size] = ciphertext
        sealed[size:] = slot[_BLOCK_SIZE:]
        try:
            gen.aead.decrypt_into(gen.nonce(sequence), sealed, self._label, out)
        except InvalidTag:
            if candidate is not None:
                candidate.wipe()
            raise RecordRejected("bad_tag") from None
        self._window.commit(sequence)
        self.last_sequence = sequence
        if candidate is not None:
            # An authentic cell of the next generation: the sender has switched.
            if self._previous is not None:
                self._previous.wipe()
            self._previous, self._current = self._current, candidate
            self._previous_until = now + CIRCUIT_GRACE_SECONDS

    def _expire(self, now: float) -> None:
        if self._previous is not None and now >= self._previous_until:
            self._previous.wipe()
            self._previous = None

    def wipe(self) -> None:
        self._current.wipe()
        if self._previous is not None:
            self._previous.wipe()
            self._previous = None
        self._header.wipe()


class _Filler:
    """Random bytes for filler slots, drawn from ``os.urandom`` a pool at a time: one
    getrandom call per 128 slots instead of one per cell and hop. Each byte is used once;
    one per layer (never shared between threads or circuits)."""

    __slots__ = ("_at", "_pool")

    POOL = 128 * ONION_SLOT_SIZE

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._pool):
            self._pool = os.urandom(max(self.POOL, size))
            self._at = 0
        out = self._pool[self._at : self._at + size]
        self._at += size
        return out


def _sealed_cell(size: int, prefix: bytes) -> bytearray:
    """A cell buffer: ``prefix``, the onion header, a ``size``-byte payload and 16 bytes
    where the outermost layer's tag lands (dropped by ``_drop_tag`` once it is in its slot)."""
    out = bytearray(len(prefix) + ONION_HEADER_SIZE + size + AEAD_TAG_SIZE)
    out[: len(prefix)] = prefix
    return out


def _seal_payload(layer: LayerSender, src: Buffer, sequence: int, out: bytearray) -> bytes:
    """Seal ``src`` into the payload part of ``out`` (a ``_sealed_cell``); its slot."""
    with memoryview(out) as view:
        return layer.seal_into(src, sequence, view[len(out) - len(src) - AEAD_TAG_SIZE :])


def _drop_tag(out: bytearray) -> bytearray:
    del out[-AEAD_TAG_SIZE:]  # shrinking a bytearray at its end copies nothing
    return out


def wrap_forward(
    layers: list[LayerSender], payload: Buffer, sequence: int, prefix: bytes = b""
) -> bytearray:
    """Client: seal ``payload`` for hops len(layers)..1; ``prefix`` (the cell header) and
    the body hop 1 receives, in one buffer. Each layer encrypts straight into the next
    one's input (its scratch), the outermost into the cell: no copy of the payload."""
    if not 0 < len(layers) <= MAX_HOPS:
        raise StateError("a circuit has 1..MAX_HOPS hops")
    size = len(payload)
    out = _sealed_cell(size, prefix)
    slots: list[bytes] = [b""] * len(layers)
    src: Buffer = payload
    for i in range(len(layers) - 1, 0, -1):
        scratch = layers[i].scratch(size + AEAD_TAG_SIZE)
        slots[i] = layers[i].seal_into(src, sequence, scratch)
        src = scratch[:size]
    slots[0] = _seal_payload(layers[0], src, sequence, out)
    at = len(prefix)
    filler = layers[0].filler.take((MAX_HOPS - len(layers)) * ONION_SLOT_SIZE)
    out[at : at + ONION_HEADER_SIZE] = b"".join(slots) + filler
    return _drop_tag(out)


def _peeled(
    layer: LayerReceiver, body: Buffer, now: float, keep_header: bool, prefix: bytes
) -> bytearray:
    if not is_body_size(len(body)):
        raise RecordRejected("bad_size")
    view = memoryview(body)
    at = len(prefix) + (ONION_HEADER_SIZE if keep_header else 0)
    out = bytearray(at + len(view) - ONION_HEADER_SIZE)
    with memoryview(out) as target:
        layer.open_into(view[:ONION_SLOT_SIZE], view[ONION_HEADER_SIZE:], target[at:], now)
    if keep_header:
        head = len(prefix)
        out[:head] = prefix
        out[head : head + ONION_HEADER_SIZE - ONION_SLOT_SIZE] = view[
            ONION_SLOT_SIZE:ONION_HEADER_SIZE
        ]
        out[at - ONION_SLOT_SIZE : at] = layer.filler.take(ONION_SLOT_SIZE)
    return out


def peel_forward(layer: LayerReceiver, body: Buffer, now: float, prefix: bytes = b"") -> bytearray:
    """Hop: open our layer; ``prefix`` (the next link's cell header) and the body for the
    next hop, in one buffer. ``RecordRejected`` when the layer does not open."""
    return _peeled(layer, body, now, True, prefix)


def open_forward(layer: LayerReceiver, body: Buffer, now: float) -> bytearray:
    """Tail: open the innermost layer; the plaintext payload (no header)."""
    return _peeled(layer, body, now, False, b"")


def wrap_backward(
    layer: LayerSender, body: Buffer, sequence: int, prefix: bytes = b""
) -> bytearray:
    """Hop: add our layer to a body coming back from the next hop; ``prefix`` (the cell
    header toward the previous hop) and the new body, in one buffer."""
    if not is_body_size(len(body)):
        raise RecordRejected("bad_size")
    view = memoryview(body)
    payload = view[ONION_HEADER_SIZE:]
    out = _sealed_cell(len(payload), prefix)
    at = len(prefix)
    out[at + ONION_SLOT_SIZE : at + ONION_HEADER_SIZE] = view[: ONION_HEADER_SIZE - ONION_SLOT_SIZE]
    out[at : at + ONION_SLOT_SIZE] = _seal_payload(layer, payload, sequence, out)
    return _drop_tag(out)


def originate_backward(
    layer: LayerSender, payload: Buffer, sequence: int, prefix: bytes = b""
) -> bytearray:
    """Tail: the first (innermost) backward layer over a plaintext payload."""
    out = _sealed_cell(len(payload), prefix)
    slot = _seal_payload(layer, payload, sequence, out)
    at = len(prefix)
    out[at : at + ONION_HEADER_SIZE] = slot + layer.filler.take((MAX_HOPS - 1) * ONION_SLOT_SIZE)
    return _drop_tag(out)


def unwrap_backward(layers: list[LayerReceiver], body: Buffer, now: float) -> bytearray:
    """Client: open hops 1..len(layers) in turn; the tail's plaintext payload."""
    if not is_body_size(len(body)):
        raise RecordRejected("bad_size")
    if not 0 < len(layers) <= MAX_HOPS:
        raise StateError("a circuit has 1..MAX_HOPS hops")
    view = memoryview(body)
    data: Buffer = view[ONION_HEADER_SIZE:]
    for i, layer in enumerate(layers):
        data = layer.open(view[i * ONION_SLOT_SIZE : (i + 1) * ONION_SLOT_SIZE], data, now)
    assert isinstance(data, bytearray)
    return data
