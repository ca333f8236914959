"""The exit's data path: client links and the local TAP as ports of one virtual switch.

Everything runs on one asyncio loop, so the sans-I/O ``Switch`` needs no lock.

- A client port: received batches are switched as they arrive (by a direct link, from
  inside its socket callback: no task switch per record). Frames switched *to* a client go
  straight out as one record when its link can take them at once (``send_now``); otherwise
  they wait in that port's bounded queue (frames and bytes), and a sender task hands them
  to the link one batch (one record) at a time. A slow client fills its queue and further
  frames for it are dropped and counted (``queue_full``); it never grows memory and never
  stalls the other ports.
- The local TAP port (in a Linux bridge, so an operator can add a NIC or an IP address):
  read in batches when readable, written to directly.
- Every ``AGE_SWEEP_S`` the MAC table is aged, and every ``HOLDING_REFRESH_S`` a holding
  notice naming what the client ports hold goes out of the TAP (``exitnode.departures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from exitnode import constants
from exitnode.dhcpguard import DROP_DHCP_SERVER
from exitnode.errors import PortRefused
from exitnode.switch import PortPolicy, Switch
from hardware.tap import FrameDevice
from l2bridge.node.audit import audit
from l2bridge.node.metrics import Metrics
from l2bridge.transport.errors import TransportClosed

log = logging.getLogger(__name__)

Buffer: TypeAlias = bytes | bytearray | memoryview

PORT_QUEUE_BYTES = 4 * 1024 * 1024
SEND_BATCH_FRAMES = 64
SEND_BATCH_BYTES = 200 * 1024
DROP_QUEUE_FULL = "queue_full"


class PortLink(Protocol):
    """What the switchboard needs from one client's link (``l2bridge.node.link``)."""

    async def send_frames(self, frames: Sequence[Buffer]) -> None: ...

    async def recv_frames(self) -> Sequence[Buffer]: ...

    async def close(self) -> None: ...


@runtime_checkable
class DirectPortLink(PortLink, Protocol):
    """A link that also sends and delivers synchronously (``l2bridge.node.link.Link``)."""

    def send_now(self, frames: Sequence[Buffer]) -> bool: ...

    def deliver_to(self, sink: Callable[[list[memoryview]], None]) -> None: ...


class _Outbox:
    """Frames waiting for one client, bounded in count and bytes."""

    __slots__ = ("bytes", "direct", "frames", "ready")

    def __init__(self, direct: DirectPortLink | None = None) -> None:
        self.frames: deque[bytes] = deque()
        self.bytes = 0
        self.ready = asyncio.Event()
        # Frames may skip the queue and go out at once while it is empty.
        self.direct = direct

    def take(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        while self.frames and len(batch) < SEND_BATCH_FRAMES:
            nxt = len(self.frames[0])
            if batch and size + nxt > SEND_BATCH_BYTES:
                break
            batch.append(self.frames.popleft())
            size += nxt
        self.bytes -= size
        if not self.frames:
            self.ready.clear()
        return batch


class Switchboard:
    """Owns the switch, the local TAP and the client ports."""

    def __init__(
        self,
        switch: Switch,
        metrics: Metrics,
        *,
        local: FrameDevice | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue_frames: int = constants.PORT_QUEUE_FRAMES,
        queue_bytes: int = PORT_QUEUE_BYTES,
    ) -> None:
        self.switch = switch
        self.metrics = metrics
        self.local = local
        self._clock = clock
        self._queue_frames = queue_frames
        self._queue_bytes = queue_bytes
        self._outboxes: dict[str, _Outbox] = {}
        self._ids = itertools.count(1)
        # One drop counter for the whole node: the switch's reasons and ours side by side.
        switch.stats.drops = metrics.counters.drops
        if local is not None:
            local.stats.drops = metrics.counters.drops
        metrics.set_gauge("clients", lambda: float(len(self._outboxes)))
        metrics.set_gauge("mac_entries", lambda: float(len(self.switch)))
        metrics.set_gauge("ip_bindings", lambda: float(self.switch.bindings))
        # Other exits on the LAN heard: stations their notices put or kept on our LAN port,
        # and entries their departures freed (exitnode.departures). Both only ever grow.
        metrics.set_gauge("lan_notice_held", lambda: float(self.switch.stats.held))
        metrics.set_gauge("lan_notice_departed", lambda: float(self.switch.stats.departed))

    @property
    def clients(self) -> list[str]:
        return list(self._outboxes)

    # -- driving ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve the local TAP and age the MAC table until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        if self.local is not None:
            # The exit's LAN: every VLAN, the whole table, and stations beyond it forwarded
            # unlearned rather than dropped (a site's LAN is not a client to contain).
            lan = PortPolicy(vlans=None, max_macs=constants.MAX_MACS, enforce_max_macs=False)
            self.switch.attach(constants.LOCAL_PORT, lan, self._clock())
            loop.add_reader(self.local.fileno(), self._local_readable)
        next_holding = self._clock() + constants.HOLDING_REFRESH_S
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), constants.AGE_SWEEP_S)
                now = self._clock()
                self.switch.age(now)
                if now >= next_holding and not stop.is_set():
                    next_holding = now + constants.HOLDING_REFRESH_S
                    self._deliver(self.switch.holdings(now))
        finally:
            if self.local is not None:
                loop.remove_reader(self.local.fileno())
                self.switch.detach(constants.LOCAL_PORT)

    def _local_readable(self) -> None:
        assert self.local is not None
        frames = self.local.read_batch()
        if frames:
            self._deliver(self.switch.forward(constants.LOCAL_PORT, frames, self._clock()))

    async def serve_link(
        self, link: PortLink, device: str, policy: PortPolicy, *, owner: str | None = None
    ) -> None:
        """Run one client's port until its link fails or closes; then detach it.

        ``owner`` names the device for the switch's per-device limits (its tunnel count,
        MACs, addresses and flood budgets): the device id, since display names may repeat.
        A device over its tunnel limit (or a switch out of room) gets no port: the link is
        closed and the refusal counted.
        """
        port = f"{device}#{next(self._ids)}"
        outbox = _Outbox(link if isinstance(link, DirectPortLink) else None)
        try:
            self.switch.attach(port, policy, self._clock(), device=owner or device)
        except PortRefused as refused:
            log.warning("device %s gets no port: %s", device, refused.reason)
            await link.close()
            return
        self._outboxes[port] = outbox
        log.info("port %s attached", port)
        sender = asyncio.ensure_future(self._send_loop(link, outbox))
        receiver = asyncio.ensure_future(self._receive_loop(link, port))
        try:
            waiting: set[asyncio.Future[Any]] = {sender, receiver}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.info("port %s closed: %s", port, type(task.exception()).__name__)
        finally:
            for task in (sender, receiver):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            del self._outboxes[port]
            # Tell other exits on the LAN that this port's stations left (exitnode.departures).
            self._deliver(self.switch.detach(port))
            log.info("port %s detached", port)

    async def _receive_loop(self, link: PortLink, port: str) -> None:
        def switch_frames(frames: Sequence[Buffer]) -> None:
            if not frames:
                return
            counters = self.metrics.counters
            counters.frames_in += len(frames)
            counters.bytes_in += sum(map(len, frames))
            self._deliver(self.switch.forward(port, frames, self._clock()))
            if self.switch.refusals:
                self._tell_refusals()

        if isinstance(link, DirectPortLink):
            link.deliver_to(switch_frames)
        while True:  # with a direct link this only waits for its end
            switch_frames(await link.recv_frames())

    def _tell_refusals(self) -> None:
        """Say once per device (while attached) what the switch keeps refusing it."""
        for port, reason in self.switch.refusals:
            device = port.rpartition("#")[0] or port
            if reason == DROP_DHCP_SERVER:
                log.warning(
                    "device %s sends DHCP server replies: dropped, so its DHCP server serves "
                    "no host beyond its own site (counted as %s; if it is the server the "
                    "sites share, set devices.%s.dhcp_server: true)",
                    device, reason, device,
                )  # fmt: skip
                audit("dhcp_server_refused", device=device, port=port)
        self.switch.refusals.clear()

    async def _send_loop(self, link: PortLink, outbox: _Outbox) -> None:
        counters = self.metrics.counters
        while True:
            await outbox.ready.wait()
            batch = outbox.take()
            if batch:
                await link.send_frames(batch)
                counters.frames_out += len(batch)
                counters.bytes_out += sum(map(len, batch))

    def _deliver(self, out: dict[str, list[Buffer]]) -> None:
        counters = self.metrics.counters
        for port, frames in out.items():
            if port == constants.LOCAL_PORT:
                assert self.local is not None
                self.local.write_batch(frames)  # refusals are counted by reason by the TAP
                continue
            outbox = self._outboxes.get(port)
            if outbox is None:
                continue
            if outbox.direct is not None and not outbox.frames and self._send_now(outbox, frames):
                continue
            for frame in frames:
                if (
                    len(outbox.frames) >= self._queue_frames
                    or outbox.bytes + len(frame) > self._queue_bytes
                ):
                    counters.drop(DROP_QUEUE_FULL)
                    continue
                # A copy: a received frame is a view into its whole decrypted record, which
                # must not stay alive while the frame waits.
                data = frame if isinstance(frame, bytes) else bytes(frame)
                outbox.frames.append(data)
                outbox.bytes += len(data)
            if outbox.frames:
                outbox.ready.set()

    def _send_now(self, outbox: _Outbox, frames: list[Buffer]) -> bool:
        assert outbox.direct is not None
        try:
            sent = outbox.direct.send_now(frames)
        except TransportClosed:
            # The port's tasks see the end and detach it; until then, queue as usual.
            outbox.direct = None
            return False
        if sent:
            counters = self.metrics.counters
            counters.frames_out += len(frames)
            counters.bytes_out += sum(map(len, frames))
        return sent
