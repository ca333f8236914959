"""Key schedule and key slots (previous / current / next), as wireguard-go's keypair.go.

Key schedule (HKDF-SHA-384)::

    okm = HKDF(salt, ikm = X25519 secret || ML-KEM secret, info, 136 bytes)
        = c2s key (32) | c2s iv (12) | s2c key (32) | s2c iv (12) | chaining secret (48)

The handshake salts with its transcript hash; a rekey salts with the previous
chaining secret, so every epoch's keys depend on every exchange before it.

Receiving keeps up to three epochs: ``next`` (installed before the peer switches
to it), ``current`` and ``previous`` (accepted for a grace period after a switch,
then wiped).  Sending has one key; a switch wipes the old one at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.hashes import SHA384
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from l2bridge.constants import AEAD_KEY_SIZE, AEAD_NONCE_SIZE, CHAIN_SECRET_SIZE, Cipher
from l2bridge.crypto.secret import wipe
from l2bridge.protocol.records import RecvKey, SendKey

_OKM_SIZE = 2 * (AEAD_KEY_SIZE + AEAD_NONCE_SIZE) + CHAIN_SECRET_SIZE


@dataclass(frozen=True, slots=True)
class EpochKeys:
    """Key material for one epoch, from one side's point of view (all wiped by ``wipe``)."""

    send_key: bytearray
    send_iv: bytearray
    recv_key: bytearray
    recv_iv: bytearray
    chain: bytearray

    def wipe(self) -> None:
        for buf in (self.send_key, self.send_iv, self.recv_key, self.recv_iv, self.chain):
            wipe(buf)


def derive(
    ikm: bytes | bytearray, salt: bytes | bytearray, info: bytes, is_client: bool
) -> EpochKeys:
    okm = bytearray(
        HKDF(algorithm=SHA384(), length=_OKM_SIZE, salt=bytes(salt), info=info).derive(bytes(ikm))
    )
    try:
        view = memoryview(okm)
        k, n = AEAD_KEY_SIZE, AEAD_NONCE_SIZE
        c2s_key, c2s_iv = bytearray(view[0:k]), bytearray(view[k : k + n])
        s2c_key, s2c_iv = (
            bytearray(view[k + n : 2 * k + n]),
            bytearray(view[2 * k + n : 2 * (k + n)]),
        )
        chain = bytearray(view[2 * (k + n) :])
        view.release()
    finally:
        wipe(okm)
    if is_client:
        return EpochKeys(c2s_key, c2s_iv, s2c_key, s2c_iv, chain)
    return EpochKeys(s2c_key, s2c_iv, c2s_key, c2s_iv, chain)


class KeySlots:
    """The keys of one session.  Time comes in as ``now``; nothing here reads a clock."""

    __slots__ = (
        "_grace",
        "chain",
        "cipher",
        "current",
        "next",
        "previous",
        "previous_until",
        "send",
    )

    def __init__(self, cipher: Cipher, keys: EpochKeys, epoch: int, now: float, grace: float):
        self.cipher = cipher
        self._grace = grace
        self.send: SendKey = SendKey(cipher, keys.send_key, keys.send_iv, epoch, now)
        self.current: RecvKey = RecvKey(cipher, keys.recv_key, keys.recv_iv, epoch, now)
        self.next: RecvKey | None = None
        self.previous: RecvKey | None = None
        self.previous_until = 0.0
        self.chain = keys.chain

    def lookup(self, epoch: int, now: float) -> RecvKey | None:
        """The receive key for ``epoch`` (or None); changes nothing but expiry."""
        if epoch == self.current.epoch:
            return self.current
        nxt = self.next
        if nxt is not None and epoch == nxt.epoch:
            return nxt
        self.expire(now)
        prev = self.previous
        if prev is not None and epoch == prev.epoch:
            return prev
        return None

    def confirm(self, key: RecvKey, now: float) -> bool:
        """Call after ``key`` opened a record: the first use of ``next`` promotes it.

        Promotion waits for an authentic record, so a forged header cannot
        retire the current key.  Returns True when a promotion happened.
        """
        if key is not self.next:
            # Retire the previous epoch on ordinary traffic too, not only when a record
            # for an unknown epoch happens to arrive: it must not outlive its grace.
            if self.previous is not None and now >= self.previous_until:
                self.expire(now)
            return False
        self._retire_current(now)
        self.current, self.next = key, None
        return True

    def install_next(self, keys: EpochKeys, epoch: int, now: float) -> None:
        """Exit side of a rekey: accept ``epoch`` from the peer before it switches."""
        if self.next is not None:
            self.next.wipe()
        self.next = RecvKey(self.cipher, keys.recv_key, keys.recv_iv, epoch, now)

    def install_current(self, keys: EpochKeys, epoch: int, now: float) -> None:
        """Client side of a rekey: the peer already sends in ``epoch``."""
        self._retire_current(now)
        self.current = RecvKey(self.cipher, keys.recv_key, keys.recv_iv, epoch, now)

    def switch_send(self, keys: EpochKeys, epoch: int, now: float) -> None:
        self.send.wipe()
        self.send = SendKey(self.cipher, keys.send_key, keys.send_iv, epoch, now)

    def replace_chain(self, chain: bytearray) -> None:
        wipe(self.chain)
        self.chain = chain

    def _retire_current(self, now: float) -> None:
        if self.previous is not None:
            self.previous.wipe()
        self.previous = self.current
        self.previous_until = now + self._grace

    def expire(self, now: float) -> None:
        """Wipe the previous epoch once its grace period is over."""
        if self.previous is not None and now >= self.previous_until:
            self.previous.wipe()
            self.previous = None

    def wipe(self) -> None:
        for key in (self.send, self.current, self.next, self.previous):
            if key is not None:
                key.wipe()
        self.next = self.previous = None
        wipe(self.chain)
