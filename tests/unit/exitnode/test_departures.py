"""Two exits bridging one LAN: a client's traffic moving from one exit's port to the other's
(a circuit rebuilt through another tail, a failover) works at once, and a spoofing client
still cannot take a station that is live on the LAN.

Exits A and B are two ``Switch``es whose LAN ports share one segment: whatever one sends to
its LAN port arrives on the other's.
"""

from __future__ import annotations

import pytest
from scapy.layers.l2 import ARP, Ether

from exitnode import constants, departures
from exitnode.switch import PortPolicy, Switch
from hardware import ethernet

LAN = constants.LOCAL_PORT
TRUNK = PortPolicy(vlans=None)
BCAST = "ff:ff:ff:ff:ff:ff"
GW_MAC = "02:00:00:00:00:fe"
CLIENT = "02:00:00:00:00:0c"
PRINTER = "02:00:00:00:00:0d"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def raw(dst: str, src: str) -> bytes:
    return ethernet.NO_OFFLOAD + mac(dst) + mac(src) + b"\x08\x00" + bytes(46)


def arp(src: str, ip: str) -> bytes:
    return ethernet.NO_OFFLOAD + bytes(
        Ether(src=src, dst=BCAST) / ARP(op=2, hwsrc=src, psrc=ip, pdst=ip)
    )


class Lan:
    """Two exits' switches on one segment, with a gateway and a quiet printer on it."""

    def __init__(self) -> None:
        self.a, self.b = Switch(), Switch()
        for sw in (self.a, self.b):
            sw.attach(LAN, TRUNK, 0.0)
            sw.forward(LAN, [arp(GW_MAC, "10.0.0.1"), arp(PRINTER, "10.0.0.9")], 0.0)

    def send(self, exit_: Switch, port: str, frames: list[bytes], now: float) -> dict[str, list]:
        """Switch ``frames`` at ``exit_``; what it puts on the LAN reaches the other exit."""
        out = exit_.forward(port, frames, now)
        other = self.b if exit_ is self.a else self.a
        if out.get(LAN):
            out = {**out, "other": other.forward(LAN, out[LAN], now)}  # type: ignore[dict-item]
        return out

    def detach(self, exit_: Switch, port: str, now: float, *, delivered: bool = True) -> None:
        out = exit_.detach(port)
        other = self.b if exit_ is self.a else self.a
        assert set(out) == {LAN}  # the notice goes to the LAN only
        if delivered:
            assert other.forward(LAN, out[LAN], now) == {}  # obeyed, never flooded on


def moved_client(lan: Lan) -> None:
    """The client's circuit ended at A: its stations were learned on B's LAN port."""
    lan.a.attach("circuit-1", PortPolicy(), 1.0, device="circuit:1")
    lan.send(lan.a, "circuit-1", [arp(CLIENT, "10.0.0.50"), raw(GW_MAC, CLIENT)], 1.0)
    assert lan.b.lookup(mac(CLIENT), 0, 1.0) == LAN
    assert lan.b.owner(bytes([10, 0, 0, 50]), 0, 1.0) == LAN


def test_a_client_moving_to_another_exit_on_the_lan_is_switched_at_once() -> None:
    lan = Lan()
    moved_client(lan)
    lan.detach(lan.a, "circuit-1", 2.0)  # the circuit through A ends: A sends the notice
    assert lan.b.stats.departed == 1
    # The rebuilt circuit ends at B, a second later (not five minutes): its frames, its ARP
    # claim and the LAN's replies all work.
    lan.b.attach("circuit-2", PortPolicy(), 3.0, device="circuit:2")
    out = lan.b.forward("circuit-2", [raw(GW_MAC, CLIENT), arp(CLIENT, "10.0.0.50")], 3.0)
    assert len(out[LAN]) == 2
    assert lan.b.stats.drops["mac_spoof"] == lan.b.stats.drops["ip_spoof"] == 0
    reply = raw(CLIENT, GW_MAC)
    assert lan.b.forward(LAN, [reply], 3.1) == {"circuit-2": [reply]}


def test_without_the_notice_the_move_is_refused_as_before() -> None:
    """The old tail crashed (no notice): B keeps the LAN entry until it ages out."""
    lan = Lan()
    moved_client(lan)
    lan.a.detach("circuit-1")  # sent, but lost
    lan.b.attach("circuit-2", PortPolicy(), 3.0, device="circuit:2")
    assert lan.b.forward("circuit-2", [raw(GW_MAC, CLIENT)], 3.0) == {}
    assert lan.b.stats.drops["mac_spoof"] == 1


def test_a_spoofing_client_cannot_steal_a_live_lan_station_with_or_without_notices() -> None:
    lan = Lan()
    lan.a.attach("evil-a", PortPolicy(), 1.0, device="evil")
    lan.b.attach("evil-b", PortPolicy(), 1.0, device="evil")
    # Sending from the printer at A is refused there, so A's notice never names it.
    assert lan.send(lan.a, "evil-a", [raw(GW_MAC, PRINTER)], 1.0) == {}
    assert lan.a.stats.drops["mac_spoof"] == 1
    # A notice forged by the client (naming the printer and the gateway) is dropped at A,
    # not put on the LAN...
    forged = departures.encode(mac(CLIENT), [(0, mac(PRINTER)), (0, mac(GW_MAC))], [])
    assert lan.send(lan.a, "evil-a", forged, 1.5) == {}
    assert lan.a.stats.drops[departures.DROP_FORGED] == 1
    # ...and one sent straight to B from a client port is not obeyed either.
    assert lan.b.forward("evil-b", forged, 1.6) == {}
    assert lan.b.stats.drops[departures.DROP_FORGED] == 1
    lan.detach(lan.a, "evil-a", 2.0)  # held nothing: no notice at all
    assert lan.b.stats.departed == 0
    # The printer stays on B's LAN port: the spoofer at B is still refused.
    assert lan.b.forward("evil-b", [raw(GW_MAC, PRINTER)], 3.0) == {}
    assert lan.b.stats.drops["mac_spoof"] == 1
    assert lan.b.lookup(mac(PRINTER), 0, 3.0) == LAN


def test_a_notice_frees_only_entries_on_the_port_it_arrived_on() -> None:
    """A notice from the LAN naming a station that is a client's of *this* exit (or a
    station nobody holds) changes nothing."""
    lan = Lan()
    lan.b.attach("victim", PortPolicy(), 1.0, device="victim")
    lan.b.forward("victim", [raw(GW_MAC, CLIENT)], 1.0)
    notice = departures.encode(mac("02:00:00:00:00:99"), [(0, mac(CLIENT)), (5, mac(PRINTER))], [])
    assert lan.b.forward(LAN, notice, 2.0) == {}
    assert lan.b.lookup(mac(CLIENT), 0, 2.0) == "victim"
    assert lan.b.lookup(mac(PRINTER), 0, 2.0) == LAN
    assert lan.b.stats.departed == 0


def test_a_malformed_notice_from_the_lan_is_counted_and_not_flooded() -> None:
    lan = Lan()
    lan.b.attach("c", PortPolicy(), 1.0)
    good = departures.encode(mac("02:00:00:00:00:99"), [(0, mac(PRINTER))], [])[0]
    for bad in (good[:-3], good + b"\x01", good.replace(constants.DEPARTURE_MAGIC, b"X" * 8)):
        assert lan.b.forward(LAN, [bad], 2.0) == {}
    assert lan.b.stats.drops[departures.DROP_MALFORMED] == 3
    assert lan.b.lookup(mac(PRINTER), 0, 2.0) == LAN


@pytest.mark.parametrize(("n_macs", "n_ips"), [(1, 0), (0, 1), (64, 32), (200, 70)])
def test_notices_round_trip_in_as_many_frames_as_needed(n_macs: int, n_ips: int) -> None:
    macs = [(i % 4095, bytes([2, 0, 0, 0, i >> 8, i & 0xFF])) for i in range(n_macs)]
    ips = [(i % 7, bytes([10, 0, i >> 8, i & 0xFF]) if i % 2 else bytes(15) + bytes([i]))
           for i in range(n_ips)]  # fmt: skip
    frames = departures.encode(mac("02:00:00:00:00:99"), macs, ips)
    got_macs, got_ips = [], []
    for frame in frames:
        header = ethernet.parse(frame, 1518)
        assert departures.is_notice(header) and len(frame) - ethernet.OFFLOAD_HEADER_LEN <= 1514
        padded = frame + bytes(max(0, 60 - len(frame) + ethernet.OFFLOAD_HEADER_LEN))
        notice = departures.decode(padded, header)  # Ethernet's zero padding is accepted
        got_macs += notice.macs
        got_ips += notice.ips
    assert (got_macs, got_ips) == (macs, ips)
