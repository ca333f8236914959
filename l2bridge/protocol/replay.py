"""Anti-replay sliding window (RFC 6479): a ring of 64-bit blocks, no bit shifting.

``check`` only looks; ``commit`` marks a counter as seen and must be called
only after the record authenticated, so a forged record cannot move the window.
Over an ordered transport the session also refuses counters below the highest
seen (``strict``); the window then tells a replay from a reorder for the stats.
"""

from __future__ import annotations

from enum import Enum

from l2bridge.constants import REPLAY_BLOCK_BITS, REPLAY_RING_BLOCKS

_BLOCK_SHIFT = REPLAY_BLOCK_BITS.bit_length() - 1
_BIT_MASK = REPLAY_BLOCK_BITS - 1


class Verdict(Enum):
    FRESH = "fresh"
    REPLAYED = "replayed"
    REORDERED = "reordered"  # unseen, inside the window, but below the highest seen
    TOO_OLD = "too_old"  # behind the window: cannot tell, so refuse


class ReplayWindow:
    __slots__ = ("_blocks", "_last", "_mask", "_ring", "_started", "window_size")

    def __init__(self, ring_blocks: int = REPLAY_RING_BLOCKS) -> None:
        if ring_blocks < 2 or ring_blocks & (ring_blocks - 1):
            raise ValueError("ring_blocks must be a power of two >= 2")
        self._ring = ring_blocks
        self._mask = ring_blocks - 1
        self._blocks = [0] * ring_blocks
        self._last = 0
        self._started = False
        # One block is always being cleared ahead, so it does not count.
        self.window_size = (ring_blocks - 1) * REPLAY_BLOCK_BITS

    @property
    def highest(self) -> int | None:
        return self._last if self._started else None

    def check(self, counter: int) -> Verdict:
        if not self._started or counter > self._last:
            return Verdict.FRESH
        if self._last - counter >= self.window_size:
            return Verdict.TOO_OLD
        block = self._blocks[(counter >> _BLOCK_SHIFT) & self._mask]
        if block >> (counter & _BIT_MASK) & 1:
            return Verdict.REPLAYED
        return Verdict.REORDERED

    def commit(self, counter: int) -> None:
        """Mark ``counter`` seen (call after ``check`` said FRESH or REORDERED)."""
        index = counter >> _BLOCK_SHIFT
        if not self._started or counter > self._last:
            current = self._last >> _BLOCK_SHIFT if self._started else index - self._ring
            if index != current:  # most records stay in the highest block: nothing to clear
                # Clear the blocks the window moves over (all of them if it jumps far).
                for i in range(1, min(index - current, self._ring) + 1):
                    self._blocks[(current + i) & self._mask] = 0
            self._last = counter
            self._started = True
        self._blocks[index & self._mask] |= 1 << (counter & _BIT_MASK)
