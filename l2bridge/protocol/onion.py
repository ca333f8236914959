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

    def open(self, block: bytes) -> tuple[int, int]:
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

    __slots__ = ("_gen", "_header", "_label", "_ratchet_due", "filler")

    def __init__(self, secret: DirectionSecret, direction: bytes) -> None:
        self._label = _AAD[direction]
        self._header = _HeaderCipher(secret.header_key)
        self._gen = _Generation.make(0, secret.key, secret.iv, secret.chain)
        self._ratchet_due = False
        self.filler = _Filler()

    @property
    def generation(self) -> int:
        """The generation the next cell is sealed in."""
        return self._gen.number + (1 if self._ratchet_due else 0)

    def seal(
        self, payload: bytes | bytearray | memoryview, sequence: int
    ) -> tuple[memoryview, bytes]:
        """(ciphertext of the same size, a view without copy; 32-byte slot)."""
        if self._ratchet_due:
            old = self._gen
            self._gen = old.ratcheted()
            old.wipe()
            self._ratchet_due = False
        aead = self._gen.aead
        if aead is None:
            raise StateError("layer wiped")
        if not 0 <= sequence <= MAX_COUNTER:
            raise StateError("sequence exhausted")
        out = aead.encrypt(self._gen.nonce(sequence), payload, self._label)
        slot = self._header.seal(sequence, self._gen.number) + out[-AEAD_TAG_SIZE:]
        return memoryview(out)[:-AEAD_TAG_SIZE], slot

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
        "_current", "_header", "_label", "_previous", "_previous_until", "_window", "filler",
        "last_sequence",
    )  # fmt: skip

    def __init__(self, secret: DirectionSecret, direction: bytes) -> None:
        self._label = _AAD[direction]
        self._header = _HeaderCipher(secret.header_key)
        self._current = _Generation.make(0, secret.key, secret.iv, secret.chain)
        self._previous: _Generation | None = None
        self._previous_until = 0.0
        self._window = ReplayWindow()
        self.last_sequence = -1  # the sequence of the last cell that opened
        self.filler = _Filler()

    @property
    def generation(self) -> int:
        return self._current.number

    def open(self, slot: bytes, ciphertext: bytes | bytearray | memoryview, now: float) -> bytes:
        """The plaintext; ``RecordRejected`` (nothing changed) when the layer does not open."""
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
        try:
            plain = gen.aead.decrypt(
                gen.nonce(sequence), bytes(ciphertext) + slot[_BLOCK_SIZE:], self._label
            )
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
        return plain

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


def wrap_forward(layers: list[LayerSender], payload: bytes, sequence: int) -> bytes:
    """Client: seal ``payload`` for hops len(layers)..1; the body hop 1 receives."""
    if not 0 < len(layers) <= MAX_HOPS:
        raise StateError("a circuit has 1..MAX_HOPS hops")
    data: bytes | memoryview = payload
    slots: list[bytes] = []
    for layer in reversed(layers):
        data, slot = layer.seal(data, sequence)
        slots.append(slot)
    slots.reverse()
    filler = layers[0].filler.take((MAX_HOPS - len(layers)) * ONION_SLOT_SIZE)
    return b"".join(slots) + filler + data


def peel_forward(layer: LayerReceiver, body: bytes | memoryview, now: float) -> bytes:
    """Hop: open our layer; the body for the next hop (or, at the tail, the plaintext
    message in the payload part). ``RecordRejected`` when the layer does not open."""
    if not is_body_size(len(body)):
        raise RecordRejected("bad_size")
    view = memoryview(body)
    plain = layer.open(bytes(view[:ONION_SLOT_SIZE]), view[ONION_HEADER_SIZE:], now)
    filler = layer.filler.take(ONION_SLOT_SIZE)
    return bytes(view[ONION_SLOT_SIZE:ONION_HEADER_SIZE]) + filler + plain


def wrap_backward(layer: LayerSender, body: bytes | memoryview, sequence: int) -> bytes:
    """Hop: add our layer to a body coming back from the next hop."""
    if not is_body_size(len(body)):
        raise RecordRejected("bad_size")
    view = memoryview(body)
    data, slot = layer.seal(view[ONION_HEADER_SIZE:], sequence)
    return slot + bytes(view[: ONION_HEADER_SIZE - ONION_SLOT_SIZE]) + data


def originate_backward(layer: LayerSender, payload: bytes, sequence: int) -> bytes:
    """Tail: the first (innermost) backward layer over a plaintext payload."""
    data, slot = layer.seal(payload, sequence)
    return slot + layer.filler.take((MAX_HOPS - 1) * ONION_SLOT_SIZE) + data


def unwrap_backward(layers: list[LayerReceiver], body: bytes | memoryview, now: float) -> bytes:
    """Client: open hops 1..len(layers) in turn; the tail's plaintext payload."""
    if not is_body_size(len(body)):
        raise RecordRejected("bad_size")
    if not 0 < len(layers) <= MAX_HOPS:
        raise StateError("a circuit has 1..MAX_HOPS hops")
    view = memoryview(body)
    data: bytes | memoryview = view[ONION_HEADER_SIZE:]
    for i, layer in enumerate(layers):
        slot = bytes(view[i * ONION_SLOT_SIZE : (i + 1) * ONION_SLOT_SIZE])
        data = layer.open(slot, data, now)
    return bytes(data)
