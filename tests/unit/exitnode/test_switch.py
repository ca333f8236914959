"""The sans-I/O virtual switch: learning, ageing, flooding, VLANs, rate limits, drops."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from exitnode.errors import SwitchError
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from hardware import ethernet

MAC = {n: f"02:00:00:00:00:{n:02x}" for n in range(1, 10)}
BCAST = "ff:ff:ff:ff:ff:ff"
TRUNK = PortPolicy(vlans=None)


def frame(src: int, dst: int | str, vlan: int | None = None, tag: bytes = b"") -> bytes:
    d = dst if isinstance(dst, str) else MAC[dst]
    pkt = Ether(src=MAC[src], dst=d)
    if vlan is not None:
        pkt = pkt / Dot1Q(vlan=vlan)
    return ethernet.NO_OFFLOAD + bytes(pkt / IP(dst="10.0.0.9") / ICMP() / tag)


def switch(*ports: str, policy: PortPolicy = TRUNK, **cfg: float) -> Switch:
    # Switching alone: the holding notices a client port's first frame adds for the LAN
    # are tested in test_departures.py.
    cfg.setdefault("announce_holdings", False)
    sw = Switch(SwitchConfig(**cfg))  # type: ignore[arg-type]
    for p in ports:
        sw.attach(p, policy, now=0.0)
    return sw


def test_unknown_unicast_floods_then_learned_mac_is_forwarded() -> None:
    sw = switch("a", "b", "c")
    f1 = frame(1, 2)
    assert sw.forward("a", [f1], 0.0) == {"b": [f1], "c": [f1]}
    f2 = frame(2, 1)
    assert sw.forward("b", [f2], 0.1) == {"a": [f2]}  # 1 was learned on a
    f3 = frame(1, 2)
    assert sw.forward("a", [f3], 0.2) == {"b": [f3]}
    assert sw.stats.flooded == 1 and sw.stats.forwarded == 2 and sw.stats.learned == 2


def test_broadcast_and_multicast_flood_to_every_other_port() -> None:
    sw = switch("a", "b", "c")
    arp = ethernet.NO_OFFLOAD + bytes(
        Ether(src=MAC[1], dst=BCAST) / ARP(hwsrc=MAC[1], psrc="10.0.0.1", pdst="10.0.0.2")
    )
    mcast = frame(1, "01:00:5e:00:00:fb")
    out = sw.forward("a", [arp, mcast], 0.0)
    assert out == {"b": [arp, mcast], "c": [arp, mcast]}


def test_frame_to_its_own_port_is_filtered_and_counted() -> None:
    sw = switch("a", "b")
    sw.forward("a", [frame(1, 9), frame(2, 9)], 0.0)
    assert sw.forward("a", [frame(1, 2)], 0.1) == {}
    assert sw.stats.drops["same_port"] == 1


def test_mac_ageing_forgets_after_the_ageing_time() -> None:
    sw = switch("a", "b", "c", ageing_s=10.0)
    sw.forward("b", [frame(2, 1)], 0.0)
    assert sw.lookup(bytes.fromhex("020000000002"), 0, 5.0) == "b"
    assert sw.lookup(bytes.fromhex("020000000002"), 0, 10.5) is None  # lazily expired
    assert sw.age(5.0) == 0 and len(sw) == 1  # only the source (2) is learned
    assert sw.age(11.0) == 1 and len(sw) == 0
    f = frame(1, 2)
    assert sw.forward("a", [f], 11.0) == {"b": [f], "c": [f]}  # unknown again: flood


def test_station_move_is_relearned() -> None:
    sw = switch("a", "b", "c", policy=PortPolicy(vlans=None, sticky_macs=False))
    sw.forward("a", [frame(1, 9)], 0.0)
    sw.forward("b", [frame(1, 9)], 1.0)
    assert sw.lookup(bytes.fromhex("020000000001"), 0, 1.0) == "b"
    assert sw.stats.moved == 1


def test_vlan_allow_list_on_ingress_and_egress() -> None:
    sw = Switch()
    sw.attach("trunk", TRUNK, 0.0)
    sw.attach("v10", PortPolicy(vlans=frozenset({10})), 0.0)
    sw.attach("v20", PortPolicy(vlans=frozenset({0, 20})), 0.0)
    t10 = frame(1, BCAST, vlan=10)
    t20 = frame(1, BCAST, vlan=20)
    untagged = frame(1, BCAST)
    out = sw.forward("trunk", [t10, t20, untagged], 0.0)
    assert out == {"v10": [t10], "v20": [t20, untagged]}
    # A port may not send on a VLAN it is not allowed.
    assert sw.forward("v10", [frame(2, BCAST, vlan=20), frame(2, BCAST)], 0.0) == {}
    assert sw.stats.drops["vlan_denied"] == 2
    ok = frame(2, BCAST, vlan=10)
    assert sw.forward("v10", [ok], 0.0) == {"trunk": [ok]}


def test_learning_is_per_vlan() -> None:
    sw = switch("a", "b", "c")
    sw.forward("b", [frame(2, 9, vlan=5)], 0.0)
    f = frame(1, 2, vlan=6)  # same MAC on another VLAN is unknown
    assert set(sw.forward("a", [f], 0.0)) == {"b", "c"}


def test_broadcast_rate_limit_is_a_token_bucket() -> None:
    sw = Switch()
    sw.attach("a", PortPolicy(vlans=None, broadcast_rate=10.0, broadcast_burst=5.0), 0.0)
    sw.attach("b", TRUNK, 0.0)
    burst = [frame(1, BCAST, tag=bytes([i])) for i in range(8)]
    assert len(sw.forward("a", burst, 0.0)["b"]) == 5
    assert sw.stats.drops["rate_limited"] == 3
    assert len(sw.forward("a", burst, 0.2)["b"]) == 2  # 0.2 s * 10/s refilled
    unicast = [frame(1, 2) for _ in range(20)]  # unknown unicast has a bucket of its own
    assert len(sw.forward("a", unicast, 0.2)["b"]) == 20


def test_unknown_unicast_floods_are_rate_limited_per_port_by_their_own_bucket() -> None:
    sw = Switch()
    sw.attach("a", PortPolicy(vlans=None, flood_rate=10.0, flood_burst=5.0), 0.0)
    sw.attach("b", TRUNK, 0.0)
    sw.attach("c", TRUNK, 0.0)
    sw.forward("c", [frame(3, BCAST)], 0.0)  # 3 is known (on c)
    # Random destinations: each one unknown, each a flood to b and c.
    spray = [frame(1, f"02:aa:00:00:00:{i:02x}") for i in range(8)]
    out = sw.forward("a", spray, 0.0)
    assert out == {"b": spray[:5], "c": spray[:5]}
    assert sw.stats.drops["unknown_unicast_limited"] == 3 and sw.stats.flooded == 6
    # Known unicast and broadcast are not charged to the flood bucket.
    known = [frame(1, 3, tag=bytes([i])) for i in range(10)]
    assert sw.forward("a", known, 0.0) == {"c": known}
    assert len(sw.forward("a", [frame(1, BCAST)], 0.0)["b"]) == 1
    assert len(sw.forward("a", spray, 0.3)["b"]) == 3  # 0.3 s * 10/s refilled
    # Another port's bucket is its own.
    own = [frame(2, "02:aa:00:00:00:00")]
    assert sw.forward("b", own, 0.3) == {"a": own, "c": own}
    assert sw.stats.drops["unknown_unicast_limited"] == 8
    with pytest.raises(SwitchError):
        PortPolicy(flood_rate=0.0)
    with pytest.raises(SwitchError):
        PortPolicy(broadcast_rate=float("nan"))


def test_malformed_frames_and_group_sources_are_dropped_and_counted() -> None:
    sw = switch("a", "b")
    bad = [
        b"\x00" * 12,
        ethernet.NO_OFFLOAD + b"\x01" * 10,
        ethernet.NO_OFFLOAD + bytes(Ether(src=MAC[1], dst=MAC[2], type=0x8100)),
        ethernet.NO_OFFLOAD + bytes(Ether(src=MAC[1], dst=MAC[2]) / (b"x" * 1600)),
        ethernet.NO_OFFLOAD + bytes(Ether(src=BCAST, dst=MAC[2]) / ARP()),
        ethernet.offload_header(gso_type=42) + bytes(Ether(src=MAC[1], dst=MAC[2]) / ARP()),
    ]
    assert sw.forward("a", bad, 0.0) == {}
    assert sw.stats.drops == {
        "short": 2,
        "bad_vlan": 1,
        "oversized": 1,
        "bad_source": 1,
        "bad_offload": 1,
    }
    assert len(sw) == 0


def test_jumbo_mtu_allows_9000_byte_frames() -> None:
    sw = switch("a", "b", mtu=9000)
    big = ethernet.NO_OFFLOAD + bytes(Ether(src=MAC[1], dst=MAC[2]) / (b"x" * 8986))
    assert sw.forward("a", [big], 0.0) == {"b": [big]}


def test_table_and_port_limits_stop_learning_but_not_forwarding() -> None:
    sw = Switch(SwitchConfig(max_macs=3, reserved_macs=0))
    sw.attach("a", PortPolicy(vlans=None, max_macs=2, enforce_max_macs=False), 0.0)
    sw.attach("b", TRUNK, 0.0)
    for n in range(1, 6):
        assert "b" in sw.forward("a", [frame(n, 9)], 0.0)
    assert len(sw) == 2 and sw.stats.not_learned == 3
    sw.forward("b", [frame(6, 9), frame(7, 9)], 0.0)
    assert len(sw) == 3  # the whole table is capped too


def test_detach_forgets_the_ports_macs() -> None:
    sw = switch("a", "b", "c")
    sw.forward("b", [frame(2, 9)], 0.0)
    sw.detach("b")
    assert sw.lookup(bytes.fromhex("020000000002"), 0, 0.0) is None
    assert sw.forward("a", [frame(1, 2)], 0.0).keys() == {"c"}


def test_port_misuse_is_a_local_error() -> None:
    sw = switch("a")
    with pytest.raises(SwitchError):
        sw.attach("a", TRUNK, 0.0)
    with pytest.raises(SwitchError):
        sw.forward("zz", [], 0.0)
    with pytest.raises(SwitchError):
        sw.detach("zz")
    with pytest.raises(SwitchError):
        PortPolicy(vlans=frozenset({4095}))


def test_lonely_flood_is_counted() -> None:
    sw = switch("a")
    assert sw.forward("a", [frame(1, BCAST)], 0.0) == {}
    assert sw.stats.drops["no_egress"] == 1


GW = 8  # the exit LAN's gateway, learned on the local (protected) port


def test_client_cannot_take_over_the_gateways_mac() -> None:
    sw = switch("local", "a", "b")
    gw = bytes.fromhex("020000000008")
    sw.forward("local", [frame(GW, BCAST)], 0.0)  # the gateway's ARP
    assert sw.lookup(gw, 0, 0.0) == "local"
    spoof = frame(GW, BCAST)
    assert sw.forward("a", [spoof, frame(GW, 2)], 1.0) == {}
    assert sw.stats.drops["mac_spoof"] == 2 and sw.stats.moved == 0
    assert sw.lookup(gw, 0, 1.0) == "local"
    # Frames for the gateway still go to the LAN only, never to the spoofer.
    to_gw = frame(2, GW)
    assert sw.forward("b", [to_gw], 1.5) == {"local": [to_gw]}
    # The spoofer did not refresh the entry either: it ages from the gateway's last frame.
    assert sw.age(300.5) == 1 and sw.lookup(gw, 0, 300.5) is None


def test_the_lan_takes_back_a_mac_a_client_claimed_first() -> None:
    sw = switch("local", "a", "b")
    sw.forward("a", [frame(GW, 9)], 0.0)  # before the gateway ever spoke
    reply = frame(GW, 1)
    sw.forward("local", [reply], 0.5)
    assert sw.lookup(bytes.fromhex("020000000008"), 0, 0.5) == "local"
    assert sw.forward("a", [frame(GW, 2)], 0.6) == {}
    assert sw.stats.drops["mac_spoof"] == 1
    # Clients filling the whole table do not keep the LAN's stations from being learned.
    lax = PortPolicy(vlans=None, enforce_max_macs=False)
    full = switch("local", "a", policy=lax, max_macs=2, reserved_macs=0)
    full.forward("a", [frame(1, 9), frame(2, 9), frame(3, 9)], 0.0)
    assert len(full) == 2 and full.stats.not_learned == 1
    full.forward("local", [frame(GW, BCAST)], 0.0)
    assert full.lookup(bytes.fromhex("020000000008"), 0, 0.0) == "local"
    assert full.forward("a", [frame(GW, 9)], 0.1) == {}
    # The protected set is configurable: with none, the old learning-bridge behaviour.
    roaming = PortPolicy(vlans=None, sticky_macs=False)
    open_sw = switch("local", "a", policy=roaming, protected_ports=frozenset())  # type: ignore[arg-type]
    open_sw.forward("local", [frame(GW, BCAST)], 0.0)
    open_sw.forward("a", [frame(GW, BCAST)], 1.0)
    assert open_sw.lookup(bytes.fromhex("020000000008"), 0, 1.0) == "a"


def test_sticky_client_ports_keep_their_macs_until_aged_out_then_a_move_works() -> None:
    sticky = PortPolicy(vlans=None, sticky_macs=True)
    sw = switch("a", "b", "c", policy=sticky, ageing_s=10.0)
    mac1 = bytes.fromhex("020000000001")
    sw.forward("a", [frame(1, 9)], 0.0)
    assert sw.forward("b", [frame(1, 9)], 5.0) == {}  # not a move: a spoof
    assert sw.stats.drops["mac_spoof"] == 1 and sw.lookup(mac1, 0, 5.0) == "a"
    to_1 = frame(3, 1)
    assert sw.forward("c", [to_1], 5.0) == {"a": [to_1]}
    # The station really moved to b: after ageing (swept or not) b may learn it.
    moved = frame(1, 9)
    assert set(sw.forward("b", [moved], 10.5)) == {"a", "c"}
    assert sw.lookup(mac1, 0, 10.5) == "b"
    assert sw.forward("c", [to_1], 11.0) == {"b": [to_1]}
    assert sw.stats.aged == 1 and sw.stats.drops["mac_spoof"] == 1
    # The counts of MACs per port followed: a holds none, b holds 1.
    sw.detach("b")
    assert sw.lookup(mac1, 0, 11.0) is None


def test_enforced_mac_limit_drops_new_sources_and_keeps_known_ones() -> None:
    sw = Switch()
    sw.attach("a", PortPolicy(vlans=None, max_macs=2, enforce_max_macs=True), 0.0)
    sw.attach("b", PortPolicy(vlans=None, sticky_macs=False), 0.0)
    out = sw.forward("a", [frame(1, 9), frame(2, 9), frame(3, 9), frame(1, 9)], 0.0)
    assert len(out["b"]) == 3  # 1, 2, then 1 again; 3 refused
    assert sw.stats.drops["mac_limit"] == 1 and len(sw) == 2
    # A station moving onto the full port is refused too, and stays where it was.
    sw.forward("b", [frame(4, 9)], 0.0)
    assert sw.forward("a", [frame(4, 9)], 1.0) == {}
    assert sw.stats.drops["mac_limit"] == 2
    assert sw.lookup(bytes.fromhex("020000000004"), 0, 1.0) == "b"
