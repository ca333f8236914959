"""The client's data path over fake links and a FakeTap: both directions, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from scapy.layers.l2 import ARP, Ether

from hardware import ethernet
from hardware.tap import FakeTap
from l2bridge.client import pump
from l2bridge.client.pump import Backoff, Client
from l2bridge.node.metrics import Metrics
from tests.unit.exitnode.fakelink import FakeLink, link_pair

TIMEOUT = 5.0


def arp(n: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=f"10.0.0.{n}"))


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)


class Exit:
    """Hands out fake links; the far ends are what an exit would hold."""

    def __init__(self) -> None:
        self.far: list[FakeLink] = []
        self.up = True
        self.attempts = 0

    async def connect(self) -> FakeLink:
        self.attempts += 1
        if not self.up:
            raise ConnectionRefusedError("exit down")
        ours, theirs = link_pair(64)
        self.far.append(theirs)
        return ours


def start(tap: FakeTap, ex: Exit) -> tuple[Client, asyncio.Event, asyncio.Task[None]]:
    client = Client(tap, ex.connect, Metrics("client"), backoff=Backoff(0.01, 0.05))
    stop = asyncio.Event()
    return client, stop, asyncio.ensure_future(client.run(stop))


def test_frames_cross_both_ways_byte_for_byte() -> None:
    async def main() -> None:
        tap, ex = FakeTap(), Exit()
        client, stop, task = start(tap, ex)
        try:
            await asyncio.wait_for(client.connected.wait(), TIMEOUT)
            tap.inject(arp(1))
            tap.inject(arp(2))
            got: list[bytes] = []
            while len(got) < 2:
                got += await asyncio.wait_for(ex.far[0].recv_frames(), TIMEOUT)
            assert got == [ethernet.NO_OFFLOAD + arp(1), ethernet.NO_OFFLOAD + arp(2)]
            await ex.far[0].send_frames([ethernet.NO_OFFLOAD + arp(3)])
            await until(lambda: tap.stats.frames_written == 1)
            assert tap.delivered() == [arp(3)]
            assert client.metrics.counters.frames_out == 2
            assert client.metrics.counters.frames_in == 1
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT)
            tap.close()

    asyncio.run(main())


def test_reconnects_after_the_exit_goes_away_and_drops_frames_meanwhile() -> None:
    async def main() -> None:
        tap, ex = FakeTap(), Exit()
        client, stop, task = start(tap, ex)
        try:
            await asyncio.wait_for(client.connected.wait(), TIMEOUT)
            ex.up = False
            await ex.far[0].close()  # the exit dies
            await until(lambda: not client.connected.is_set())
            for n in range(5):
                tap.inject(arp(n))
            await until(lambda: client.metrics.counters.drops["link_down"] == 5)
            attempts = ex.attempts
            await until(lambda: ex.attempts >= attempts + 2)  # keeps retrying, with backoff
            ex.up = True
            await until(lambda: client.connections == 2 and client.connected.is_set())
            tap.inject(arp(9))
            assert await asyncio.wait_for(ex.far[1].recv_frames(), TIMEOUT) == [
                ethernet.NO_OFFLOAD + arp(9)
            ]  # nothing from the outage was kept
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT)
            tap.close()

    asyncio.run(main())


def test_backoff_grows_to_its_maximum_and_resets() -> None:
    b = Backoff(initial=1.0, maximum=8.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next_delay() == 1.0
    j = Backoff(initial=1.0, maximum=8.0, jitter=0.2)
    assert all(0.8 <= j.next_delay() / base <= 1.2 for base in (1.0, 2.0, 4.0))


def test_after_a_stable_link_the_first_retry_is_a_random_part_of_the_first_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[float] = []
    real_sleep = pump._sleep_or_stop

    async def recorded(delay: float, stop: asyncio.Event) -> None:
        delays.append(delay)
        await real_sleep(0.0, stop)

    monkeypatch.setattr(pump, "_sleep_or_stop", recorded)
    monkeypatch.setattr(pump.random, "uniform", lambda lo, hi: (lo + hi) / 4)

    async def main() -> None:
        tap, ex = FakeTap(), Exit()
        client = Client(tap, ex.connect, Metrics("client"), backoff=Backoff(8.0, 64.0, 0.0))
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        try:
            await until(client.connected.is_set)
            monkeypatch.setattr(pump, "STABLE_AFTER_S", 0.0)  # this link counts as stable
            await ex.far[0].close()
            await until(lambda: client.connections == 2)
            monkeypatch.setattr(pump, "STABLE_AFTER_S", 3600.0)  # the next one does not
            await ex.far[1].close()
            await until(lambda: client.connections == 3)
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT)
            tap.close()

    asyncio.run(main())
    # Stable link lost: uniform(0, initial) (patched to a quarter); then the backoff's steps.
    assert delays == [2.0, 8.0]
