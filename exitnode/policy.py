"""Per-device policy (the ``devices`` section): VLANs, rate, broadcast rate, hours, DHCP.

Mapped onto what the exit already enforces rather than into the switch:

- ``vlans`` and ``broadcast_rate`` become the device's ``PortPolicy`` (exitnode.switch), the
  same allow-list and token bucket every port has; ``dhcp_server: true`` lets its site's
  DHCP server answer the other sites' hosts (``exitnode.dhcpguard``; off by default);
- ``rate`` (bytes per second from the device) is a byte bucket in front of the switch:
  ``RateLimitedLink`` wraps the device's link and drops, counted as ``policy_rate``, what
  arrives faster (a bridge cannot slow a LAN down; TCP inside backs off on the losses);
- ``hours`` (a UTC window of the day) is checked when the device connects and every
  ``HOURS_CHECK_S`` while it is connected; outside it the tunnel ends.

``shadowmesh peers reload`` re-reads the config: a connected device whose policy changed
has its tunnel ended, and comes back under the new one (a port's policy is fixed while it
is attached).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

from exitnode.switch import PortPolicy
from l2bridge.node.config import DevicePolicy
from l2bridge.node.metrics import Metrics

Buffer: TypeAlias = bytes | bytearray | memoryview

HOURS_CHECK_S = 30.0
RATE_BURST_S = 0.25  # a device may send this many seconds of its rate at once
DROP_POLICY_RATE = "policy_rate"


def port_policy(device: DevicePolicy | None, default: PortPolicy) -> PortPolicy:
    """The switch port policy for a device: its VLANs, broadcast rate and DHCP trust over
    the default."""
    if device is None:
        return default
    policy = default
    if device.vlans is not None:
        policy = dataclasses.replace(policy, vlans=frozenset(device.vlans))
    if device.dhcp_server:
        policy = dataclasses.replace(policy, dhcp_server=True)
    if device.broadcast_rate is not None:
        policy = dataclasses.replace(
            policy,
            broadcast_rate=device.broadcast_rate,
            broadcast_burst=max(policy.broadcast_burst, device.broadcast_rate),
        )
    return policy


def within_hours(device: DevicePolicy | None, now: float) -> bool:
    """Whether ``now`` (unix seconds) is inside the device's UTC window (or it has none)."""
    if device is None or device.hours is None:
        return True
    start, end = device.hours
    minute = int(now // 60) % 1440
    return start <= minute < end if start < end else (minute >= start or minute < end)


def hours_text(device: DevicePolicy) -> str:
    assert device.hours is not None
    (h1, m1), (h2, m2) = (divmod(t, 60) for t in device.hours)
    return f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d} UTC"


class ByteBucket:
    """``rate`` bytes per second with ``burst`` bytes of room (sans-I/O: time passed in)."""

    __slots__ = ("_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self._last = rate, burst, burst, now

    def take(self, size: int, now: float) -> bool:
        if now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
            self._last = now
        if self.tokens >= size:
            self.tokens -= size
            return True
        return False


class RateLimitedLink:
    """A device's link with its ingress held to ``rate`` bytes per second.

    Sends go straight through; received frames over the rate are dropped and counted.
    Offers what the switchboard uses of a link (exitnode.switchboard.DirectPortLink)."""

    def __init__(
        self, link: object, rate: float, metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._link = link
        self._clock = clock
        self._metrics = metrics
        burst = max(rate * RATE_BURST_S, 65536 + 64)  # always room for one super-frame
        self.bucket = ByteBucket(rate, burst, clock())

    def _admit(self, frames: Sequence[Buffer]) -> list[Buffer]:
        now = self._clock()
        kept = [f for f in frames if self.bucket.take(len(f), now)]
        if len(kept) != len(frames):
            self._metrics.counters.drop(DROP_POLICY_RATE, len(frames) - len(kept))
        return kept

    def send_now(self, frames: Sequence[Buffer]) -> bool:
        return bool(self._link.send_now(frames))  # type: ignore[attr-defined]

    async def send_frames(self, frames: Sequence[Buffer]) -> None:
        await self._link.send_frames(frames)  # type: ignore[attr-defined]

    def deliver_to(self, sink: Callable[[list[memoryview]], None]) -> None:
        def limited(frames: list[memoryview]) -> None:
            kept = self._admit(frames)
            if kept:
                sink(kept)  # type: ignore[arg-type]

        self._link.deliver_to(limited)  # type: ignore[attr-defined]

    async def recv_frames(self) -> Sequence[Buffer]:
        while True:
            kept = self._admit(await self._link.recv_frames())  # type: ignore[attr-defined]
            if kept:
                return kept

    async def close(self) -> None:
        await self._link.close()  # type: ignore[attr-defined]
