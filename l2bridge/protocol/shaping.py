"""Traffic shaping, sans-I/O: which frames go into which record, padded to what size, when.

An observer on the path sees the sizes and times of our WebSocket messages. ``Shaper`` makes
them follow a browser WebSocket profile (``BrowserProfile``, measured from Chromium by
bench/traffic/make_profile.py): frames are queued with ``push``, and ``due(now)`` returns the
records to send now, each an ``Emission`` of whole frames and the plaintext size to pad to.

- ``sizes``: the first ``len(profile.first)`` records take sizes drawn from what a browser's
  first messages measure (where a session is most recognisable); later ones go at once.
- ``browser``: every record takes a size drawn from the profile's message sizes, and after
  each record the next waits a gap drawn from the profile's gaps (bursts and pauses).

Guarantees the link relies on (tests/unit/l2bridge/test_shaping.py): frames leave in the
order pushed and none is dropped or split; a frame larger than any profile size goes alone
in a record of its own size; no frame waits longer than ``max_delay_s`` and the queue never
holds more than ``max_queue_bytes`` (past either bound everything queued goes at once, in
profile-sized records, without gaps: shaping gives way rather than adding unbounded delay).

``ChatterFilter`` (client side) holds the LAN's broadcast and multicast frames (ARP, mDNS,
SSDP, NetBIOS ...) up to ``hold_s`` and sends them in one record with the next unicast
frames or at the deadline, so the LAN's periodic chatter does not make small periodic
records; an exact copy of a frame already held is sent once.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from l2bridge.constants import FRAME_LENGTH_SIZE, MAX_RECORD_PLAINTEXT
from l2bridge.protocol.records import Buffer

MAX_DELAY_S = 0.05  # the most a frame waits in the shaper
MAX_QUEUE_BYTES = 256 * 1024
CHATTER_HOLD_S = 1.0  # the most a broadcast frame waits for company
CHATTER_MAX_HELD = 64
# A tunnel frame is the 10-byte offload header (hardware.ethernet.OFFLOAD_HEADER_LEN: this
# package may not import hardware; a test checks they agree), then the Ethernet frame.
OFFLOAD_HEADER_LEN = 10


class Shaping(Enum):
    OFF = "off"
    SIZES = "sizes"
    BROWSER = "browser"


def _quantiles(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not out or any(b < a for a, b in itertools.pairwise(out)) or out[0] < 0:
        raise ValueError(f"{name}: a non-empty ascending list of non-negative numbers")
    return out


@dataclass(frozen=True, slots=True)
class Distribution:
    """An empirical distribution given by ascending quantiles (inverse-CDF sampling)."""

    quantiles: tuple[float, ...]

    def sample(self, rng: random.Random) -> float:
        q = self.quantiles
        if len(q) == 1:
            return q[0]
        x = rng.random() * (len(q) - 1)
        i = int(x)
        return q[i] + (q[min(i + 1, len(q) - 1)] - q[i]) * (x - i)

    def smallest_at_least(self, size: int) -> int | None:
        """The smallest quantile that is >= ``size`` (None when every one is smaller)."""
        i = bisect.bisect_left(self.quantiles, size)
        return None if i == len(self.quantiles) else int(self.quantiles[i])


@dataclass(frozen=True, slots=True)
class BrowserProfile:
    """One direction of a browser's WebSocket traffic: message payload sizes (bytes) of the
    first messages one by one, of all messages, and the gaps (s) between messages."""

    first: tuple[Distribution, ...]
    sizes: Distribution
    gaps: Distribution

    @classmethod
    def from_dict(cls, doc: object) -> BrowserProfile:
        """From the JSON written by bench/traffic/make_profile.py (one direction's part);
        ``ValueError`` naming what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("profile: a mapping")
        try:
            first = tuple(Distribution(_quantiles(q, "first")) for q in doc["first"])
            sizes = Distribution(_quantiles(doc["sizes"], "sizes"))
            gaps = Distribution(_quantiles(doc["gaps"], "gaps"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"profile: missing or malformed {exc}") from None
        return cls(first, sizes, gaps)


@dataclass(frozen=True, slots=True)
class Emission:
    """One record to seal: these frames, the plaintext padded to at least ``size`` bytes."""

    frames: tuple[Buffer, ...]
    size: int


def _cost(frame: Buffer) -> int:
    return FRAME_LENGTH_SIZE + len(frame)


class Shaper:
    """Queues frames and says which records to send when (module docstring). Not thread-safe;
    the link calls it from its event loop and passes the time in."""

    def __init__(
        self,
        mode: Shaping,
        profile: BrowserProfile,
        *,
        overhead: int = 0,
        max_delay_s: float = MAX_DELAY_S,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        """``overhead``: bytes the record and WebSocket framing add to a plaintext, taken off
        a profile's message size to get the plaintext size."""
        if mode is Shaping.OFF:
            raise ValueError("no shaper for shaping: off")
        if max_delay_s < 0 or max_queue_bytes <= 0:
            raise ValueError("max_delay_s >= 0 and max_queue_bytes > 0")
        self.mode = mode
        self._profile = profile
        self._overhead = overhead
        self._max_delay = max_delay_s
        self._max_queue = max_queue_bytes
        self._rng = rng or random.SystemRandom()
        self._queue: deque[tuple[Buffer, float]] = deque()
        self._queued_bytes = 0
        self._records = 0  # records emitted so far (index into profile.first)
        self._next_at = 0.0  # browser mode: no record before this time
        self.padding_bytes = 0  # padding added by shaping, for the overhead figure

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, frames: Sequence[Buffer], now: float) -> None:
        for f in frames:
            if len(f):
                self._queue.append((f, now))
                self._queued_bytes += _cost(f)

    def deadline(self) -> float | None:
        """When ``due`` next has something to send (None: the queue is empty)."""
        if not self._queue:
            return None
        if self.mode is Shaping.SIZES:
            return self._queue[0][1]
        return min(self._next_at, self._queue[0][1] + self._max_delay)

    def flush(self) -> list[Emission]:
        """Everything queued, now, in profile-sized records (the link is closing)."""
        out = []
        while self._queue:
            out.append(self._emit())
        return out

    def due(self, now: float) -> list[Emission]:
        """The records to send at ``now``, in order."""
        out: list[Emission] = []
        while self._queue:
            # Compared as deadline() computes it, so a timer set for it always finds work.
            overdue = (
                now >= self._queue[0][1] + self._max_delay or self._queued_bytes > self._max_queue
            )
            if self.mode is Shaping.BROWSER and now < self._next_at and not overdue:
                break
            out.append(self._emit())
            if self.mode is Shaping.BROWSER:
                self._next_at = now + self._profile.gaps.sample(self._rng)
        return out

    def _target(self) -> int | None:
        """The plaintext size for the next record, or None for "no shaping" (past the
        first messages in ``sizes`` mode)."""
        index = self._records
        if index < len(self._profile.first):
            size = self._profile.first[index].sample(self._rng)
        elif self.mode is Shaping.BROWSER:
            size = self._profile.sizes.sample(self._rng)
        else:
            return None
        # A record's plaintext never exceeds what the session seals (frame marker kept).
        return min(max(0, int(size) - self._overhead), MAX_RECORD_PLAINTEXT - FRAME_LENGTH_SIZE)

    def _emit(self) -> Emission:
        target = self._target()
        self._records += 1
        first, _ = self._queue.popleft()
        frames = [first]
        used = _cost(first)
        if target is None:
            # Unshaped: take whatever is queued, as the link would without a shaper.
            while self._queue:
                frames.append(self._queue.popleft()[0])
                used += _cost(frames[-1])
            self._queued_bytes -= used
            return Emission(tuple(frames), 0)
        if used > target:
            # Too big for the drawn size: the smallest profile size it fits, else its own.
            bigger = self._profile.sizes.smallest_at_least(used + self._overhead)
            target = used if bigger is None else bigger - self._overhead
        while self._queue and used + _cost(self._queue[0][0]) <= target:
            f, _ = self._queue.popleft()
            frames.append(f)
            used += _cost(f)
        self._queued_bytes -= used
        size = max(target, used)
        self.padding_bytes += size - used
        return Emission(tuple(frames), size)


def is_group_frame(frame: Buffer) -> bool:
    """A tunnel frame to a broadcast or multicast address (the destination MAC's group bit)."""
    return len(frame) >= OFFLOAD_HEADER_LEN + 14 and bool(frame[OFFLOAD_HEADER_LEN] & 1)


class ChatterFilter:
    """Holds broadcast/multicast frames so the LAN's chatter rides with other traffic."""

    def __init__(self, hold_s: float = CHATTER_HOLD_S, max_held: int = CHATTER_MAX_HELD) -> None:
        if hold_s < 0 or max_held < 1:
            raise ValueError("hold_s >= 0 and max_held >= 1")
        self._hold = hold_s
        self._max_held = max_held
        self._held: list[Buffer] = []
        self._held_set: set[bytes] = set()
        self._since = 0.0
        self.collapsed = 0  # exact copies not sent twice

    def filter(self, frames: Sequence[Buffer], now: float) -> list[Buffer]:
        """The frames to send now: held ones first (order is kept), then these, unless all
        of these are chatter (then they are held, and nothing goes now)."""
        if not any(not is_group_frame(f) for f in frames):
            for f in frames:
                key = bytes(f)
                if key in self._held_set:
                    self.collapsed += 1
                    continue
                if not self._held:
                    self._since = now
                self._held.append(f)
                self._held_set.add(key)
            if len(self._held) >= self._max_held:
                return self.release()
            return []
        out = self.release()
        out.extend(frames)
        return out

    def deadline(self) -> float | None:
        return self._since + self._hold if self._held else None

    def due(self, now: float) -> list[Buffer]:
        return self.release() if self._held and now >= self._since + self._hold else []

    def release(self) -> list[Buffer]:
        out, self._held = self._held, []
        self._held_set.clear()
        return out
