"""Two exits bridging one LAN: a client's traffic moving from one exit's port to the other's
(a circuit rebuilt through another tail, a failover) works at once, and a spoofing client
still cannot take a station that is live on the LAN.

Exits A and B are two ``Switch``es whose LAN ports share one segment: whatever one sends to
its LAN port arrives on the other's.
"""

from __future__ import annotations

import pytest
from scapy.layers.l2 import ARP, Dot1Q, Ether

from exitnode import constants, departures
from exitnode.switch import PortPolicy, Switch, SwitchConfig
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


def is_holding(frame: bytes) -> bool:
    header = ethernet.parse(frame, 1518)
    return departures.is_notice(header) and departures.decode(frame, header).held


def data(out: dict[str, list]) -> dict[str, list]:
    """``out`` without the holding notices an exit adds for its LAN (and the other exit's
    answer to them, which must be nothing)."""
    kept = {}
    for port, frames in out.items():
        if port == "other":
            kept[port] = frames
            continue
        plain = [f for f in frames if not is_holding(f)]
        if plain:
            kept[port] = plain
    if kept.get("other") == {} and LAN not in kept:
        del kept["other"]
    return kept


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

    def send_switched(
        self, exit_: Switch, port: str, frames: list[bytes], now: float
    ) -> dict[str, list]:
        """As ``send``, but the segment is a learning switch: of what ``exit_`` puts on the
        LAN, the other exit gets only group-addressed frames (unicast goes to the gateway
        or the printer, which are on the LAN, not behind the other exit)."""
        out = exit_.forward(port, frames, now)
        other = self.b if exit_ is self.a else self.a
        dst = slice(ethernet.OFFLOAD_HEADER_LEN, ethernet.OFFLOAD_HEADER_LEN + 6)
        flooded = [f for f in out.get(LAN, []) if ethernet.is_group(f[dst])]
        if flooded:
            out = {**out, "other": other.forward(LAN, flooded, now)}  # type: ignore[dict-item]
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
    assert len(data(out)[LAN]) == 2
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
    assert data(lan.send(lan.a, "evil-a", forged, 1.5)) == {}
    assert lan.a.stats.drops[departures.DROP_FORGED] == 1
    # ...and one sent straight to B from a client port is not obeyed either.
    forged_at_b = departures.encode(mac("02:00:00:00:00:0e"), [(0, mac(PRINTER))], [])
    assert data(lan.b.forward("evil-b", forged_at_b, 1.6)) == {}
    assert lan.b.stats.drops[departures.DROP_FORGED] == 1
    # A's departure names only what evil-a held: the forged notice's source MAC.
    lan.detach(lan.a, "evil-a", 2.0)
    assert lan.b.stats.departed == 1
    assert lan.b.lookup(mac(CLIENT), 0, 2.0) is None
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


def unicast_arp(src: str, ip: str) -> bytes:
    """An ARP reply to the gateway: unicast, so it never floods to the other exit."""
    return ethernet.NO_OFFLOAD + bytes(
        Ether(src=src, dst=GW_MAC) / ARP(op=2, hwsrc=src, psrc=ip, hwdst=GW_MAC, pdst="10.0.0.1")
    )


def test_a_client_of_another_exit_cannot_take_what_a_client_here_holds() -> None:
    """The victim at A talks only unicast to the gateway, so none of its frames reach B;
    A's holding notice still tells B, and B refuses a client claiming the victim's MAC or
    address (without it, B's client would take both and lock the victim out at A)."""
    lan = Lan()
    lan.a.attach("victim", PortPolicy(), 1.0, device="victim")
    frames = [raw(GW_MAC, CLIENT), unicast_arp(CLIENT, "10.0.0.50")]
    out = lan.send_switched(lan.a, "victim", frames, 1.0)
    assert out["other"] == {}  # the notice is obeyed at B, never flooded to its clients
    assert lan.b.lookup(mac(CLIENT), 0, 1.0) == LAN
    assert lan.b.owner(bytes([10, 0, 0, 50]), 0, 1.0) == LAN
    lan.b.attach("evil", PortPolicy(), 2.0, device="evil")
    assert lan.send_switched(lan.b, "evil", [raw(GW_MAC, CLIENT)], 2.0) == {}
    assert lan.b.stats.drops["mac_spoof"] == 1
    assert (
        data(lan.send_switched(lan.b, "evil", [arp("02:00:00:00:00:ee", "10.0.0.50")], 2.1)) == {}
    )
    assert lan.b.stats.drops["ip_spoof"] == 1
    # The victim is untouched at A: its frames still go out, the gateway's replies still
    # come back to it.
    assert lan.a.lookup(mac(CLIENT), 0, 2.2) == "victim"
    reply = raw(CLIENT, GW_MAC)
    assert lan.a.forward(LAN, [reply], 2.2) == {"victim": [reply]}


def test_without_holding_notices_that_client_takes_the_station_and_locks_the_victim_out() -> None:
    """What the holding notice stops: the same steps with exits that send none."""
    lan = Lan()
    for sw in (lan.a, lan.b):
        sw.config = SwitchConfig(announce_holdings=False)
    lan.a.attach("victim", PortPolicy(), 1.0, device="victim")
    lan.send_switched(lan.a, "victim", [raw(GW_MAC, CLIENT)], 1.0)
    lan.b.attach("evil", PortPolicy(), 2.0, device="evil")
    stolen = raw(GW_MAC, CLIENT)
    assert lan.send_switched(lan.b, "evil", [stolen], 2.0) == {LAN: [stolen]}
    # On the LAN the station now answers behind B; when its frames reach A's LAN port
    # (the LAN switch floods them to A), A moves it to its LAN and refuses the victim.
    lan.a.forward(LAN, [raw(BCAST, CLIENT)], 2.1)
    assert lan.a.forward("victim", [raw(GW_MAC, CLIENT)], 2.2) == {}
    assert lan.a.stats.drops["mac_spoof"] == 1


def test_a_station_named_only_by_notices_is_kept_while_they_come_then_for_the_ttl() -> None:
    lan = Lan()
    lan.a.attach("victim", PortPolicy(), 1.0, device="victim")
    lan.send_switched(lan.a, "victim", [raw(GW_MAC, CLIENT), unicast_arp(CLIENT, "10.0.0.50")], 1.0)
    ttl, ageing = constants.HOLDING_TTL_S, constants.MAC_AGEING_S
    # A keeps announcing while its client is there, long past B's ageing time.
    now = 1.0
    while now < 1.0 + 2 * ageing:
        now += constants.HOLDING_REFRESH_S
        # The victim's traffic goes on (its ARP too, which keeps its address bound at A).
        lan.a.forward("victim", [raw(GW_MAC, CLIENT), unicast_arp(CLIENT, "10.0.0.50")], now)
        refresh = lan.a.holdings(now)
        assert set(refresh) == {LAN}
        assert lan.b.forward(LAN, refresh[LAN], now) == {}
    assert lan.b.lookup(mac(CLIENT), 0, now) == LAN
    assert lan.b.owner(bytes([10, 0, 0, 50]), 0, now) == LAN
    # A crashes: no departure, no refresh. B refuses a client with that station for the
    # TTL after the last notice, not the whole ageing time...
    crashed = now
    lan.b.attach("moved", PortPolicy(), crashed + 1, device="moved")
    assert data(lan.b.forward("moved", [raw(GW_MAC, CLIENT)], crashed + ttl - 1)) == {}
    assert lan.b.stats.drops["mac_spoof"] == 1
    # ...and then the station and its address may be learned at B.
    out = lan.b.forward("moved", [raw(GW_MAC, CLIENT), arp(CLIENT, "10.0.0.50")], crashed + ttl + 1)
    assert len(data(out)[LAN]) == 2
    assert lan.b.lookup(mac(CLIENT), 0, crashed + ttl + 1) == "moved"
    assert lan.b.owner(bytes([10, 0, 0, 50]), 0, crashed + ttl + 1) == "moved"
    assert lan.b.stats.drops["ip_spoof"] == 0


def test_holdings_name_the_live_stations_and_addresses_of_client_ports_only() -> None:
    lan = Lan()
    assert lan.a.holdings(1.0) == {}  # no client port: nothing to say
    lan.a.attach("c1", PortPolicy(), 1.0, device="d1")
    lan.a.attach("c2", PortPolicy(vlans=frozenset({7})), 1.0, device="d2")
    lan.a.forward("c1", [raw(GW_MAC, CLIENT), unicast_arp(CLIENT, "10.0.0.50")], 1.0)
    tagged = ethernet.NO_OFFLOAD + bytes(
        Ether(src="02:00:00:00:00:0e", dst=GW_MAC) / Dot1Q(vlan=7) / (b"x" * 46)
    )
    lan.a.forward("c2", [tagged], 100.0)
    notices = [departures.decode(f, ethernet.parse(f, 1518)) for f in lan.a.holdings(101.0)[LAN]]
    assert all(n.held for n in notices)
    macs = {k for n in notices for k in n.macs}
    ips = {k for n in notices for k in n.ips}
    assert macs == {(0, mac(CLIENT)), (7, mac("02:00:00:00:00:0e"))}  # not the gateway's
    assert ips == {(0, bytes([10, 0, 0, 50]))}
    # Past the ageing time without traffic, c1's station is no longer named.
    later = 1.0 + constants.MAC_AGEING_S + 1
    notices = [departures.decode(f, ethernet.parse(f, 1518)) for f in lan.a.holdings(later)[LAN]]
    assert {k for n in notices for k in n.macs} == {(7, mac("02:00:00:00:00:0e"))}
    assert not any(n.ips for n in notices)


def test_a_holding_notice_never_shortens_what_the_lans_own_traffic_keeps() -> None:
    """The printer sent a frame at B's LAN port at 0.0: a notice naming it lets it live no
    shorter than the ageing time after that frame."""
    lan = Lan()
    notice = departures.encode(mac("02:00:00:00:00:99"), [(0, mac(PRINTER))], [], held=True)
    assert lan.b.forward(LAN, notice, 1.0) == {}
    assert lan.b.lookup(mac(PRINTER), 0, constants.MAC_AGEING_S - 1) == LAN


def test_a_holding_notice_from_a_client_port_is_dropped_as_forged() -> None:
    lan = Lan()
    lan.b.attach("evil", PortPolicy(), 1.0, device="evil")
    forged = departures.encode(mac("02:00:00:00:00:0e"), [(0, mac(CLIENT))], [], held=True)
    assert data(lan.b.forward("evil", forged, 1.0)) == {}
    assert lan.b.stats.drops[departures.DROP_FORGED] == 1
    assert lan.b.lookup(mac(CLIENT), 0, 1.0) is None


def test_two_exits_clients_claiming_one_station_at_once_both_lose_it_for_the_ttl() -> None:
    lan = Lan()
    lan.a.attach("ca", PortPolicy(), 1.0, device="da")
    lan.b.attach("cb", PortPolicy(), 1.0, device="db")
    # Both learn it before either exit hears the other's notice.
    out_a = lan.a.forward("ca", [raw(GW_MAC, CLIENT)], 1.0)
    out_b = lan.b.forward("cb", [raw(GW_MAC, CLIENT)], 1.0)
    assert data(lan.b.forward(LAN, [f for f in out_a[LAN] if is_holding(f)], 1.01)) == {}
    assert data(lan.a.forward(LAN, [f for f in out_b[LAN] if is_holding(f)], 1.01)) == {}
    for sw, port in ((lan.a, "ca"), (lan.b, "cb")):
        assert sw.lookup(mac(CLIENT), 0, 1.02) == LAN  # neither client keeps it
        assert data(sw.forward(port, [raw(GW_MAC, CLIENT)], 1.02)) == {}
        assert sw.stats.drops["mac_spoof"] == 1
    later = 1.01 + constants.HOLDING_TTL_S + 0.1
    assert len(data(lan.a.forward("ca", [raw(GW_MAC, CLIENT)], later))[LAN]) == 1


def test_a_lan_host_tells_notices_from_other_frames() -> None:
    for held in (False, True):
        notice = departures.encode(mac("02:00:00:00:00:99"), [(0, mac(CLIENT))], [], held=held)
        assert departures.is_notice_frame(notice[0][ethernet.OFFLOAD_HEADER_LEN :])
    assert not departures.is_notice_frame(raw(BCAST, CLIENT)[ethernet.OFFLOAD_HEADER_LEN :])
    assert not departures.is_notice_frame(b"\x03SM")
