"""The record layer: one AEAD record per batch of frames.

Wire format of a record::

    type (u8) | key epoch (u32) | counter (u64) | ciphertext of the plaintext | tag (16)

The 13-byte header is the AEAD associated data.  The nonce is the direction's
12-byte IV XOR the counter (right-aligned), as in TLS 1.3, so a counter is
never reused under one key.  A DATA plaintext is a run of frames, each
``u32 length || frame`` (1..MAX_FRAME_SIZE bytes); a zero length ends the
frames and whatever follows is padding.  Control records carry their own
body (see session.py).

The size limit is checked before anything is decrypted.  Sealing writes the
header, the frames and the tag into one buffer and encrypts in place, so the
hot path makes one copy of each frame; opening returns read-only memoryviews
into the single decrypted buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from l2bridge.constants import (
    AEAD_TAG_SIZE,
    FRAME_LENGTH_SIZE,
    MAX_COUNTER,
    MAX_FRAME_SIZE,
    MAX_RECORD_PLAINTEXT,
    MAX_RECORD_SIZE,
    RECORD_CLOSE,
    RECORD_DATA,
    RECORD_FINISH,
    RECORD_HEADER_SIZE,
    RECORD_REKEY_INIT,
    RECORD_REKEY_REPLY,
    Cipher,
)
from l2bridge.crypto.secret import wipe
from l2bridge.errors import RecordRejected, RecordTooLarge
from l2bridge.protocol.replay import ReplayWindow, Verdict

_HEADER = struct.Struct(">BIQ")
_FRESH = Verdict.FRESH
_LEN = struct.Struct(">I")
RECORD_TYPES = frozenset(
    (RECORD_DATA, RECORD_FINISH, RECORD_REKEY_INIT, RECORD_REKEY_REPLY, RECORD_CLOSE)
)

Buffer: TypeAlias = bytes | bytearray | memoryview
Aead: TypeAlias = AESGCM | ChaCha20Poly1305


def make_aead(cipher: Cipher, key: bytes | bytearray) -> Aead:
    if cipher is Cipher.AES_256_GCM:
        return AESGCM(bytes(key))
    return ChaCha20Poly1305(bytes(key))


def parse_header(record: Buffer) -> tuple[int, int, int]:
    """(type, epoch, counter); ``RecordRejected`` if the size or type is wrong.

    Called before any decryption: the size check is what bounds our work.
    """
    size = len(record)
    if size > MAX_RECORD_SIZE:
        raise RecordRejected("too_large")
    if size < RECORD_HEADER_SIZE + AEAD_TAG_SIZE:
        raise RecordRejected("truncated")
    rtype, epoch, counter = _HEADER.unpack_from(record, 0)
    if rtype not in RECORD_TYPES:
        raise RecordRejected("bad_type")
    return rtype, epoch, counter


def _nonce(iv_int: int, counter: int) -> bytes:
    return (iv_int ^ counter).to_bytes(12, "big")


def data_plaintext_size(frames: Sequence[Buffer], padding: int = 0) -> int:
    size = sum(FRAME_LENGTH_SIZE + len(f) for f in frames if len(f))
    if padding:
        size += FRAME_LENGTH_SIZE + padding
    return size


def split_frames(plaintext: bytes) -> list[memoryview]:
    """Frames of a DATA plaintext as read-only views; ``RecordRejected("malformed")``."""
    view = memoryview(plaintext)
    frames: list[memoryview] = []
    pos, end = 0, len(plaintext)
    while pos < end:
        if end - pos < FRAME_LENGTH_SIZE:
            raise RecordRejected("malformed")
        (n,) = _LEN.unpack_from(plaintext, pos)
        pos += FRAME_LENGTH_SIZE
        if n == 0:
            break  # padding follows
        if n > MAX_FRAME_SIZE or n > end - pos:
            raise RecordRejected("malformed")
        frames.append(view[pos : pos + n])
        pos += n
    return frames


class _EpochKey:
    """One direction's AEAD key and IV for one key generation; ``wipe`` zeroes them."""

    __slots__ = ("_aead", "_iv", "_iv_int", "_key", "created", "epoch")

    def __init__(self, cipher: Cipher, key: bytearray, iv: bytearray, epoch: int, now: float):
        self._key, self._iv = key, iv
        self._aead: Aead | None = make_aead(cipher, key)
        self._iv_int = int.from_bytes(iv, "big")
        self.epoch = epoch
        self.created = now

    @property
    def wiped(self) -> bool:
        return self._aead is None

    def wipe(self) -> None:
        wipe(self._key)
        wipe(self._iv)
        self._aead = None
        self._iv_int = 0


class SendKey(_EpochKey):
    """One direction's sealing key for one epoch; counters start at 0 and never repeat."""

    __slots__ = ("next_counter",)

    def __init__(self, cipher: Cipher, key: bytearray, iv: bytearray, epoch: int, now: float):
        super().__init__(cipher, key, iv, epoch, now)
        self.next_counter = 0

    def _start(self, rtype: int, body_size: int) -> tuple[bytearray, bytes, Aead]:
        if self._aead is None:
            raise RecordTooLarge("key wiped")  # unreachable through Session (it checks first)
        if body_size > MAX_RECORD_PLAINTEXT:
            raise RecordTooLarge(f"{body_size} bytes > {MAX_RECORD_PLAINTEXT}")
        counter = self.next_counter
        if counter >= MAX_COUNTER:
            raise RecordTooLarge("counter exhausted")
        self.next_counter = counter + 1
        out = bytearray(RECORD_HEADER_SIZE + body_size + AEAD_TAG_SIZE)
        _HEADER.pack_into(out, 0, rtype, self.epoch, counter)
        return out, _nonce(self._iv_int, counter), self._aead

    def seal_frames(self, frames: Sequence[Buffer], padding: int = 0) -> bytearray:
        """A DATA record holding ``frames`` (empty ones skipped) and ``padding`` zero bytes."""
        # One C-level join builds the plaintext (faster than slice-assigning each frame
        # into the record buffer); the AEAD then writes straight into the record.
        parts: list[Buffer] = []
        append = parts.append
        pack = _LEN.pack
        for f in frames:
            n = len(f)
            if n > MAX_FRAME_SIZE:
                raise RecordTooLarge(f"frame of {n} bytes > {MAX_FRAME_SIZE}")
            if n:
                append(pack(n))
                append(f)
        if padding:
            # A zero length field ends the frames; zeros follow.
            append(bytes(FRAME_LENGTH_SIZE + padding))
        plaintext = b"".join(parts)
        out, nonce, aead = self._start(RECORD_DATA, len(plaintext))
        view = memoryview(out)
        aead.encrypt_into(nonce, plaintext, view[:RECORD_HEADER_SIZE], view[RECORD_HEADER_SIZE:])
        return out

    def seal_body(self, rtype: int, body: Buffer) -> bytearray:
        """A control record with an opaque body."""
        out, nonce, aead = self._start(rtype, len(body))
        view = memoryview(out)
        view[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + len(body)] = body
        aead.encrypt_into(nonce, view[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + len(body)],
                          view[:RECORD_HEADER_SIZE], view[RECORD_HEADER_SIZE:])  # fmt: skip
        return out


class RecvKey(_EpochKey):
    """One direction's opening key for one epoch, with its own replay window."""

    __slots__ = ("records", "window")

    def __init__(self, cipher: Cipher, key: bytearray, iv: bytearray, epoch: int, now: float):
        super().__init__(cipher, key, iv, epoch, now)
        self.records = 0
        self.window = ReplayWindow()

    def open(self, record: Buffer, counter: int, strict_order: bool = True) -> bytes:
        """The plaintext of an authentic, fresh record, or ``RecordRejected``."""
        if self._aead is None:
            raise RecordRejected("unknown_epoch")
        window = self.window
        verdict = window.check(counter)
        if verdict is not _FRESH:
            if verdict is Verdict.REPLAYED or verdict is Verdict.TOO_OLD:
                raise RecordRejected(verdict.value)
            if strict_order:  # REORDERED
                raise RecordRejected("reordered")
        view = memoryview(record)
        try:
            plaintext = self._aead.decrypt(
                _nonce(self._iv_int, counter), view[RECORD_HEADER_SIZE:], view[:RECORD_HEADER_SIZE]
            )
        except InvalidTag:
            raise RecordRejected("auth_failed") from None
        # Only an authentic record may move the window.
        window.commit(counter)
        self.records += 1
        return plaintext
