"""What a simulated clock reads at a given true time."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Window:
    """A span of seconds after the simulator started; ``amount`` is a lie's size."""

    start: float
    end: float
    amount: float = 0.0

    def contains(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.end

    @classmethod
    def parse(cls, text: str) -> Window:
        """``START:END`` or ``START:END:AMOUNT`` (seconds)."""
        parts = [float(p) for p in text.split(":")]
        if len(parts) not in (2, 3) or parts[1] <= parts[0]:
            raise ValueError(f"window {text!r}: want START:END[:AMOUNT] with END > START")
        return cls(*parts)


@dataclass(slots=True)
class ClockModel:
    """Device time = true + offset + drift * elapsed + lie(elapsed), plus jitter per message.

    ``outages`` are windows where the device says nothing; ``lies`` add their ``amount``
    to what it says (a spoofed GPS, a faulty rubidium); ``lock_after`` is how long it
    warms up before claiming a fix/lock.
    """

    offset: float = 0.0
    drift: float = 0.0
    jitter: float = 0.0
    outages: tuple[Window, ...] = ()
    lies: tuple[Window, ...] = ()
    lock_after: float = 0.0
    seed: int | None = None
    started: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def elapsed(self, true: float) -> float:
        return true - self.started

    def lie(self, true: float) -> float:
        e = self.elapsed(true)
        return sum(w.amount for w in self.lies if w.contains(e))

    def device_time(self, true: float) -> float:
        return true + self.offset + self.drift * self.elapsed(true) + self.lie(true)

    def true_time_of(self, device: float) -> float:
        """The true time at which the device clock reads ``device`` (a few iterations)."""
        t = device - self.offset
        for _ in range(3):
            t -= self.device_time(t) - device
        return t

    def noise(self) -> float:
        return self._rng.gauss(0.0, self.jitter) if self.jitter > 0 else 0.0

    def silent(self, true: float) -> bool:
        e = self.elapsed(true)
        return any(w.contains(e) for w in self.outages)

    def locked(self, true: float) -> bool:
        return self.elapsed(true) >= self.lock_after
