"""Two exits bridging one real LAN: a client of one cannot take a station that a client of
the other holds, even one whose frames only ever went to the gateway.

A Linux bridge in a namespace of its own is the LAN: the gateway (a namespace with an
address and a neighbour entry for the victim's station), exit A's TAP and exit B's TAP. Each
exit is a ``Switchboard`` on its real TAP; its one client is an in-memory link. The victim,
at A, pings the gateway with unicast frames only, so the bridge never shows them to B. Then
a client of B sends the same ping from the victim's MAC.

With holding notices (the default) A has told B, over the bridge, that its client holds the
station: B refuses the thief (``mac_spoof``), the bridge keeps the station at A's TAP and the
gateway keeps answering the victim. Without them (the exits of before), the thief's frame
crosses, the bridge moves the station to B's TAP and the gateway's answers go to the thief:
the attack the notices stop, shown on the real bridge.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from exitnode import constants
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from exitnode.switchboard import Switchboard
from hardware import ethernet, netns
from hardware.netns import Lab, Namespace, unique
from hardware.tap import LinuxTap, TapConfig
from l2bridge.node.metrics import Metrics
from tests.unit.exitnode.fakelink import FakeLink, link_pair

pytestmark = pytest.mark.integration

GW_IP, VICTIM_IP = "10.232.0.1", "10.232.0.50"
VICTIM = "02:00:00:00:32:50"
VICTIM_BYTES = bytes.fromhex(VICTIM.replace(":", ""))
LAN = constants.LOCAL_PORT
TIMEOUT = 10.0


def echo(gw_mac: str, seq: int) -> bytes:
    packet = Ether(src=VICTIM, dst=gw_mac) / IP(src=VICTIM_IP, dst=GW_IP) / ICMP(id=0x32, seq=seq)
    return ethernet.NO_OFFLOAD + bytes(packet / b"shadowmesh")


def is_reply(frame: bytes, seq: int) -> bool:
    packet = Ether(frame[ethernet.OFFLOAD_HEADER_LEN :])
    return (
        packet.dst == VICTIM
        and ICMP in packet
        and packet[ICMP].type == 0
        and packet[ICMP].seq == seq
    )


async def answered(link: FakeLink, seq: int, within: float = TIMEOUT) -> bool:
    """Whether the gateway's reply to ping ``seq`` reaches ``link`` within ``within`` s."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames = await asyncio.wait_for(link.recv_frames(), left)
        except TimeoutError:
            return False
        if any(is_reply(f, seq) for f in frames):
            return True
    return False


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.01)


def port_of(seg: Namespace, mac: str) -> str | None:
    """The bridge port the LAN's own forwarding table has ``mac`` on."""
    for entry in json.loads(seg.run(["bridge", "-j", "fdb", "show", "br", "br0"])):
        if entry.get("mac") == mac and "master" in entry:
            return str(entry["ifname"])
    return None


async def scenario(
    seg: Namespace, gw: Namespace, taps: list[LinuxTap], gw_mac: str, holdings: bool
) -> None:
    stop = asyncio.Event()
    boards = [
        Switchboard(Switch(SwitchConfig(announce_holdings=holdings)), Metrics("exit"), local=tap)
        for tap in taps
    ]
    at_a, at_b = boards
    victim, victim_port = link_pair(64)
    thief, thief_port = link_pair(64)
    tasks = [asyncio.ensure_future(board.run(stop)) for board in boards]
    tasks.append(asyncio.ensure_future(at_a.serve_link(victim_port, "victim", PortPolicy())))
    tasks.append(asyncio.ensure_future(at_b.serve_link(thief_port, "thief", PortPolicy())))
    try:
        # The gateway speaks first, as a LAN's gateway does: the bridge and both exits learn
        # where it is, so the victim's frames to it are unicast on the bridge.
        await asyncio.to_thread(gw.run, ["ping", "-c", "1", "-W", "1", "10.232.0.99"], check=False)
        gw_bytes = bytes.fromhex(gw_mac.replace(":", ""))
        await until(
            lambda: all(b.switch.lookup(gw_bytes, 0, time.monotonic()) == LAN for b in boards)
        )
        await victim.send_frames([echo(gw_mac, 1)])
        assert await answered(victim, 1)
        assert port_of(seg, VICTIM) == taps[0].name
        if holdings:
            # A's notice crossed the bridge: B has the station on its LAN port.
            await until(lambda: at_b.switch.lookup(VICTIM_BYTES, 0, time.monotonic()) == LAN)
        else:
            assert at_b.switch.lookup(VICTIM_BYTES, 0, time.monotonic()) is None
        await thief.send_frames([echo(gw_mac, 2)])
        stolen = await answered(thief, 2, within=2.0)
        if holdings:
            assert not stolen
            assert at_b.metrics.counters.drops["mac_spoof"] == 1
            assert port_of(seg, VICTIM) == taps[0].name
            await victim.send_frames([echo(gw_mac, 3)])
            assert await answered(victim, 3)
        else:
            assert stolen  # the gateway answered the thief
            assert port_of(seg, VICTIM) == taps[1].name
    finally:
        stop.set()
        for task in tasks[2:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("holdings", [True, False], ids=["holding-notices", "without-them"])
def test_a_client_of_another_exit_cannot_take_a_station_held_here(holdings: bool) -> None:
    with Lab() as lab:
        seg, gw = lab.namespace("seg"), lab.namespace("gw")
        netns.bridge(seg, "br0")
        lab.veth(gw, "eth0", seg, "gwport")
        netns.attach(seg, "gwport", "br0")
        gw.ip("addr", "add", f"{GW_IP}/24", "dev", "eth0")
        gw.ip("neigh", "replace", VICTIM_IP, "lladdr", VICTIM, "dev", "eth0", "nud", "permanent")
        gw_mac = gw.run(["cat", "/sys/class/net/eth0/address"]).strip()
        taps = [LinuxTap(TapConfig(unique("sa"))), LinuxTap(TapConfig(unique("sb")))]
        try:
            for tap in taps:
                netns.run(["ip", "link", "set", tap.name, "netns", seg.name])
                netns.attach(seg, tap.name, "br0")
                seg.ip("link", "set", tap.name, "up")
            asyncio.run(scenario(seg, gw, taps, gw_mac, holdings))
        finally:
            for tap in taps:
                tap.close()
