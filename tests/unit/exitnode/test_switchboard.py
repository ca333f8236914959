"""The exit's data path over fake links and a FakeTap: switching, VLANs, bounded queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from exitnode import constants, departures
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from exitnode.switchboard import Switchboard
from hardware import ethernet
from hardware.tap import FakeTap
from l2bridge.node.metrics import Metrics
from tests.unit.exitnode.fakelink import FakeLink, link_pair

A, B, H = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:01"
BCAST = "ff:ff:ff:ff:ff:ff"
ANY = PortPolicy(vlans=None)
TIMEOUT = 5.0


def raw(src: str, dst: str, vlan: int | None = None, size: int = 10) -> bytes:
    pkt = Ether(src=src, dst=dst)
    if vlan is not None:
        pkt = pkt / Dot1Q(vlan=vlan)
    return bytes(pkt / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / (b"z" * size))


class Bench:
    def __init__(self, holdings: bool = False) -> None:
        self.tap = FakeTap()
        self.metrics = Metrics("exit")
        # Holding notices to the TAP only where a test asks for them (``holdings``).
        config = SwitchConfig(announce_holdings=holdings)
        self.board = Switchboard(Switch(config), self.metrics, local=self.tap, queue_frames=16)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def client(self, name: str, policy: PortPolicy = ANY, maxsize: int = 64) -> FakeLink:
        ours, theirs = link_pair(maxsize)
        self.tasks.append(asyncio.ensure_future(self.board.serve_link(theirs, name, policy)))
        return ours

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                await asyncio.sleep(0.005)


def run(coro_fn: Callable[[Bench], object], *, holdings: bool = False) -> None:
    async def main() -> None:
        b = Bench(holdings)
        runner = asyncio.ensure_future(b.board.run(b.stop))
        await asyncio.sleep(0)
        try:
            await coro_fn(b)  # type: ignore[misc]
        finally:
            b.stop.set()
            for t in b.tasks:
                t.cancel()
            await asyncio.gather(runner, *b.tasks, return_exceptions=True)
            b.tap.close()

    asyncio.run(main())


def test_frames_cross_between_clients_and_the_local_tap_byte_for_byte() -> None:
    async def body(b: Bench) -> None:
        ca, cb = b.client("a"), b.client("b")
        await b.until(lambda: len(b.board.clients) == 2)
        arp = bytes(Ether(src=A, dst=BCAST) / ARP(hwsrc=A, psrc="10.0.0.1", pdst="10.0.0.2"))
        await ca.send_frames([ethernet.NO_OFFLOAD + arp])
        got = await asyncio.wait_for(cb.recv_frames(), TIMEOUT)
        assert got == [ethernet.NO_OFFLOAD + arp]
        await b.until(lambda: b.tap.stats.frames_written == 1)
        assert b.tap.delivered() == [arp]
        # The host behind the local TAP answers A by unicast: only client a gets it.
        reply = raw(H, A)
        b.tap.inject(reply)
        assert await asyncio.wait_for(ca.recv_frames(), TIMEOUT) == [ethernet.NO_OFFLOAD + reply]
        assert cb.inbox.empty()
        assert b.metrics.counters.frames_in == 1

    run(body)


def test_vlan_allow_list_per_device() -> None:
    async def body(b: Bench) -> None:
        c10 = b.client("v10", PortPolicy(vlans=frozenset({10})))
        c20 = b.client("v20", PortPolicy(vlans=frozenset({20})))
        await b.until(lambda: len(b.board.clients) == 2)
        for vlan in (10, 20, 30):
            b.tap.inject(raw(H, BCAST, vlan=vlan))
        assert await asyncio.wait_for(c10.recv_frames(), TIMEOUT) == [
            ethernet.NO_OFFLOAD + raw(H, BCAST, vlan=10)
        ]
        assert await asyncio.wait_for(c20.recv_frames(), TIMEOUT) == [
            ethernet.NO_OFFLOAD + raw(H, BCAST, vlan=20)
        ]
        await c10.send_frames([ethernet.NO_OFFLOAD + raw(A, BCAST, vlan=20)])
        await b.until(lambda: b.metrics.counters.drops["vlan_denied"] == 1)
        assert c20.inbox.empty() and b.tap.delivered() == []

    run(body)


def test_a_stalled_client_is_bounded_and_does_not_stall_others() -> None:
    async def body(b: Bench) -> None:
        slow = b.client("slow", maxsize=1)  # its link takes one batch, then blocks
        fast = b.client("fast", maxsize=1000)
        await b.until(lambda: len(b.board.clients) == 2)
        received: list[bytes] = []
        for chunk in range(25):  # 200 frames, in bursts the local port may send at once
            for i in range(8):
                b.tap.inject(raw(H, BCAST, size=chunk * 8 + i + 1))
            while len(received) < (chunk + 1) * 8:
                received += await asyncio.wait_for(fast.recv_frames(), TIMEOUT)
        assert received == [ethernet.NO_OFFLOAD + raw(H, BCAST, size=n + 1) for n in range(200)]
        # The stalled link holds at most two batches of 8 (one queued, one being put), at
        # most 16 frames wait in its outbox, and every other frame was dropped and counted.
        waiting = len(b.board._outboxes[b.board.clients[0]].frames)
        assert waiting <= 16
        assert b.metrics.counters.drops["queue_full"] >= 200 - 16 - 2 * 8
        del slow

    run(body)


def test_port_is_detached_and_its_macs_forgotten_when_the_link_closes() -> None:
    async def body(b: Bench) -> None:
        ca = b.client("a")
        await b.until(lambda: len(b.board.clients) == 1)
        await ca.send_frames([ethernet.NO_OFFLOAD + raw(A, BCAST)])
        await b.until(lambda: len(b.board.switch) == 1)
        await ca.close()
        await b.until(lambda: b.board.clients == [])
        assert len(b.board.switch) == 0
        assert b.board.switch.ports == ["local"]

    run(body)


def test_malformed_frames_from_a_client_are_dropped_and_counted() -> None:
    async def body(b: Bench) -> None:
        ca = b.client("a")
        await b.until(lambda: len(b.board.clients) == 1)
        await ca.send_frames(
            [
                b"\x00" * 3,
                ethernet.NO_OFFLOAD + bytes(Ether(src=A, dst=B, type=0x8100)) + b"\x00\x0a",
                ethernet.NO_OFFLOAD + b"\x02" * 2000,
                ethernet.NO_OFFLOAD + raw(BCAST, B),
            ]
        )
        await b.until(lambda: sum(b.metrics.counters.drops.values()) == 4)
        assert b.metrics.counters.drops == {
            "short": 1,
            "bad_vlan": 1,
            "oversized": 1,
            "bad_source": 1,
        }
        assert b.tap.delivered() == [] and len(b.board.switch) == 0

    run(body)


def test_a_device_over_its_tunnel_limit_is_closed_and_counted() -> None:
    async def body(b: Bench) -> None:
        links = []
        for _ in range(constants.MAX_TUNNELS_PER_DEVICE + 1):
            ours, theirs = link_pair(64)
            b.tasks.append(
                asyncio.ensure_future(b.board.serve_link(theirs, "laptop", ANY, owner="id-1"))
            )
            links.append(ours)
        await b.until(links[-1].closed.is_set)
        assert len(b.board.clients) == constants.MAX_TUNNELS_PER_DEVICE
        assert b.metrics.counters.drops["tunnel_limit"] == 1
        # Another device with the same display name is a device of its own.
        other, theirs = link_pair(64)
        b.tasks.append(
            asyncio.ensure_future(b.board.serve_link(theirs, "laptop", ANY, owner="id-2"))
        )
        await b.until(lambda: len(b.board.clients) == constants.MAX_TUNNELS_PER_DEVICE + 1)
        assert not other.closed.is_set()

    run(body)


def test_what_the_clients_hold_is_announced_on_the_tap_at_once_and_then_periodically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other exits on the LAN hear of a client's station when it is learned, and again
    every HOLDING_REFRESH_S while the client holds it (exitnode.departures)."""
    monkeypatch.setattr(constants, "AGE_SWEEP_S", 0.01)
    monkeypatch.setattr(constants, "HOLDING_REFRESH_S", 0.05)

    def held(frames: list[bytes]) -> list[tuple[int, bytes]]:
        names = []
        for frame in frames:
            header = ethernet.parse(ethernet.NO_OFFLOAD + frame, 1518)
            if departures.is_notice(header):
                notice = departures.decode(ethernet.NO_OFFLOAD + frame, header)
                assert notice.held
                names += notice.macs
        return names

    async def body(b: Bench) -> None:
        ca = b.client("a")
        await b.until(lambda: len(b.board.clients) == 1)
        frame = raw(A, H)
        await ca.send_frames([ethernet.NO_OFFLOAD + frame])
        await b.until(lambda: b.tap.stats.frames_written >= 2)
        first = b.tap.delivered()
        assert first[0] == frame  # the frame, then the notice naming its source
        assert held(first[1:]) == [(0, bytes.fromhex(A.replace(":", "")))]
        later: list[bytes] = []

        def refreshed() -> bool:
            later.extend(b.tap.delivered())  # delivered() hands each frame once
            return len(held(later)) >= 2

        await b.until(refreshed)  # unasked, within a few refresh periods
        assert set(held(later)) == {(0, bytes.fromhex(A.replace(":", "")))}
        # Another exit's notice arriving on the TAP shows in the metrics.
        gauges = b.metrics.gauges
        assert gauges["lan_notice_held"]() == gauges["lan_notice_departed"]() == 0.0
        station = (0, bytes.fromhex("020000000077"))
        other = bytes.fromhex("02000000aaaa")
        for notice in departures.encode(other, [station], [], held=True):
            b.tap.inject(notice[ethernet.OFFLOAD_HEADER_LEN :])
        await b.until(lambda: gauges["lan_notice_held"]() == 1.0)
        for notice in departures.encode(other, [station], []):
            b.tap.inject(notice[ethernet.OFFLOAD_HEADER_LEN :])
        await b.until(lambda: gauges["lan_notice_departed"]() == 1.0)

    run(body, holdings=True)


def test_a_client_whose_dhcp_server_is_refused_is_named_once_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    offer = bytes(
        Ether(src=A, dst=BCAST)
        / IP(src="10.0.0.1", dst="255.255.255.255")
        / UDP(sport=67, dport=68)
        / (b"\x02" + bytes(299))
    )

    async def body(b: Bench) -> None:
        rogue, other = b.client("rogue", PortPolicy()), b.client("other", PortPolicy())
        await b.until(lambda: len(b.board.clients) == 2)
        with caplog.at_level("WARNING", logger="exitnode.switchboard"):
            for _ in range(3):
                await rogue.send_frames([ethernet.NO_OFFLOAD + offer] * 2)
            await b.until(lambda: b.metrics.counters.drops["dhcp_server"] == 6)
        assert other.inbox.empty()
        assert b.tap.delivered() == []
        warned = [r.getMessage() for r in caplog.records if "DHCP server" in r.getMessage()]
        assert len(warned) == 1
        assert "device rogue " in warned[0]
        assert "devices.rogue.dhcp_server: true" in warned[0]

    run(body)
