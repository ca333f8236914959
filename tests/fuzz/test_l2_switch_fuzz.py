"""Any bytes a client sends through the exit's switch or a TAP: dropped and counted, or
switched; never an exception, never unbounded state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exitnode import constants, departures
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from hardware import ethernet
from hardware.tap import FakeTap

DROP_REASONS = {
    "short", "oversized", "bad_offload", "bad_vlan", "vlan_denied", "bad_source",
    "rate_limited", "same_port", "no_egress", "unknown_unicast_limited",
    "mac_spoof", "mac_limit", "mac_table_full", "unknown_tpid", "arp_malformed",
    "arp_mac_mismatch", "nd_malformed", "nd_mac_mismatch", "nd_router", "ip_spoof", "ip_limit",
    "forged_departure", "dhcp_server",
}  # fmt: skip

# Frames near the interesting shapes: an offload header, two MACs, maybe 802.1Q tags.
header = st.builds(
    ethernet.offload_header,
    flags=st.sampled_from([0, 1, 2, 3, 0x80]),
    gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81, 7]),
    hdr_len=st.integers(0, 0xFFFF),
    gso_size=st.integers(0, 0xFFFF),
    csum_start=st.integers(0, 0xFFFF),
    csum_offset=st.integers(0, 0xFFFF),
)
tpid = st.sampled_from([b"\x81\x00", b"\x88\xa8", b"\x08\x00", b"\x08\x06"])
shaped = st.builds(
    lambda h, macs, tags, rest: h + macs + b"".join(tags) + rest,
    header,
    st.binary(min_size=0, max_size=12),
    st.lists(
        st.builds(lambda t, tci: t + tci, tpid, st.binary(min_size=0, max_size=2)), max_size=3
    ),
    st.binary(max_size=1600),
)
GATEWAY = bytes.fromhex("020000000001")
# A client sending from the gateway's MAC (learned on the local port) to anyone.
spoofed = st.builds(
    lambda h, dst, rest: h + dst + GATEWAY + rest,
    header,
    st.sampled_from([b"\xff" * 6, bytes.fromhex("020000000002"), bytes.fromhex("01005e0000fb")]),
    st.binary(max_size=64),
)
frames = st.lists(st.one_of(st.binary(max_size=64), shaped, spoofed), max_size=30)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(frames, min_size=1, max_size=4), vlans=st.sets(st.integers(0, 20)))
def test_switch_never_raises_on_client_frames(batches: list[list[bytes]], vlans: set[int]) -> None:
    sw = Switch(SwitchConfig(max_macs=64, reserved_macs=0))
    sw.attach("client", PortPolicy(vlans=frozenset(vlans) or None, max_macs=16), 0.0)
    sw.attach("local", PortPolicy(vlans=None), 0.0)
    gw_frame = ethernet.NO_OFFLOAD + b"\xff" * 6 + GATEWAY + b"\x08\x06" + bytes(28)
    sw.forward("local", [gw_frame], 0.0)
    now = 0.0
    for batch in batches:
        out = sw.forward("client", batch, now)
        assert set(out) <= {"local"}
        for frame in out.get("local", []):
            if frame in batch:
                continue
            # Else a holding notice, naming only stations the client holds now.
            notice = departures.decode(frame, ethernet.parse(frame, 1518))
            assert notice.held and notice.macs
            assert all(sw.lookup(m, vlan, now) == "client" for vlan, m in notice.macs)
        now += 0.5
    assert set(sw.stats.drops) <= DROP_REASONS
    assert len(sw) <= 17  # 16 for the client, and the gateway
    assert sw.stats.frames_in == 1 + sum(len(b) for b in batches)
    assert sw.lookup(GATEWAY, 0, now) == "local"  # whatever the client sent


@settings(max_examples=150, deadline=None)
@given(batch=frames)
def test_plain_tap_writes_or_counts_every_frame(batch: list[bytes]) -> None:
    tap = FakeTap()
    try:
        written = tap.write_batch(batch)
        assert written + sum(tap.stats.drops.values()) == len(batch)
        assert len(tap.delivered()) == written
    finally:
        tap.close()


notice_head = (
    ethernet.NO_OFFLOAD
    + constants.DEPARTURE_GROUP
    + bytes.fromhex("02000000aaaa")
    + constants.DEPARTURE_ETHERTYPE.to_bytes(2, "big")
)


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(
        st.builds(
            lambda magic, rest: magic + rest,
            st.sampled_from([constants.DEPARTURE_MAGIC, constants.HOLDING_MAGIC, b"SMHELD"]),
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_notices_from_the_lan_are_obeyed_or_counted_never_raise(bodies: list[bytes]) -> None:
    sw = Switch(SwitchConfig(max_macs=64, reserved_macs=0))
    sw.attach("client", PortPolicy(max_macs=16), 0.0)
    sw.attach("local", PortPolicy(vlans=None, max_macs=32, enforce_max_macs=False), 0.0)
    client_mac = bytes.fromhex("02000000000c")
    sw.forward(
        "client", [ethernet.NO_OFFLOAD + GATEWAY + client_mac + b"\x08\x00" + bytes(46)], 0.0
    )
    out = sw.forward("local", [notice_head + body for body in bodies], 1.0)
    assert out == {}  # never flooded on to a client
    assert set(sw.stats.drops) <= {"bad_departure"}
    assert len(sw) <= 32 + 1  # the LAN's own limit, and the client's station
    assert sw.lookup(client_mac, 0, 1.0) in ("client", "local", None)


# UDP frames around the DHCP guard: IPv4 (with options and fragments) or IPv6 (with
# extension headers), tagged or not, to the DHCP ports or others, after a flow of frames
# with the same Ethernet header (the switch's fast path), from a client that may not answer
# DHCP. What a server would send must never leave the switch; everything else may.
ROGUE, HOST = bytes.fromhex("02000000000e"), bytes.fromhex("02000000000a")


@st.composite
def udp_frame(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A frame and whether it is a DHCP/DHCPv6 server's message (known by construction)."""
    dport = draw(st.sampled_from([67, 68, 546, 547, 53, 9]))
    first = draw(st.sampled_from([1, 2, 12, 13, 0]))  # BOOTP op / DHCPv6 msg-type
    body = bytes([first]) + draw(st.binary(max_size=40))
    udp = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big") + dport.to_bytes(2, "big")
    udp += (8 + len(body)).to_bytes(2, "big") + b"\x00\x00" + body
    later = draw(st.booleans()) and draw(st.booleans())  # a fragment that is not the first
    if draw(st.booleans()):
        options = draw(st.integers(0, 10))
        ip = bytes([0x45 + options, 0]) + (20 + 4 * options + len(udp)).to_bytes(2, "big")
        ip += b"\x00\x01" + (b"\x00\x05" if later else b"\x20\x00") + b"\x40\x11\x00\x00"
        ip += bytes(8) + bytes(4 * options)
        packet, ethertype = ip + (udp if not later else udp[4:]), b"\x08\x00"
        server = not later and (dport == 68 or (dport == 67 and first == 2))
    else:
        chain = draw(st.lists(st.sampled_from([0, 60]), max_size=3))
        headers, nexts = b"", [*chain, *([44] if later or draw(st.booleans()) else [])]
        for i, kind in enumerate(nexts):
            nxt = nexts[i + 1] if i + 1 < len(nexts) else 17
            if kind == 44:
                headers += bytes([nxt, 0]) + (b"\x00\x10" if later else b"\x00\x01") + bytes(4)
            else:
                headers += bytes([nxt, 0]) + bytes(6)
        ip = b"\x60" + bytes(3) + (len(headers) + len(udp)).to_bytes(2, "big")
        ip += bytes([nexts[0] if nexts else 17, 64]) + bytes(32)
        packet, ethertype = ip + headers + udp, b"\x86\xdd"
        server = not later and (dport == 546 or (dport == 547 and first == 13))
    tags = b"\x81\x00\x00\x0a" if draw(st.booleans()) else b""
    frame = ethernet.NO_OFFLOAD + HOST + ROGUE + tags + ethertype + packet
    return frame, server


@settings(max_examples=400, deadline=None)
@given(batches=st.lists(st.lists(udp_frame(), max_size=12), min_size=1, max_size=3))
def test_no_dhcp_server_message_from_an_untrusted_client_leaves_the_switch(
    batches: list[list[tuple[bytes, bool]]],
) -> None:
    sw = Switch(SwitchConfig(announce_holdings=False))
    sw.attach("local", PortPolicy(vlans=None), 0.0)
    sw.attach("client", PortPolicy(vlans=None), 0.0)
    # The host is on the LAN: unicast to it takes the fast path once the flow is known.
    sw.forward("local", [ethernet.NO_OFFLOAD + b"\xff" * 6 + HOST + b"\x08\x06" + bytes(28)], 0)
    flow = ethernet.NO_OFFLOAD + HOST + ROGUE + b"\x08\x00" + bytes.fromhex("4500001c") + bytes(24)
    sent = 0
    for n, batch in enumerate(batches):
        frames = [flow, *[f for f, _ in batch]]
        out = sw.forward("client", frames, 1.0 + n)
        servers = {f for f, server in batch if server}
        assert not servers & set(out.get("local", []))
        sent += len(servers)
    assert sw.stats.drops["dhcp_server"] >= sent


# IP source guard: the attacker sends IPv4 from its own address, a free one or the
# victim's, in flows the fast path carries, while the victim claims and the table ages
# addresses; a frame from an address the victim holds at that moment never leaves.
VICTIM_MAC, EVIL_MAC = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000e")
GW_MAC = bytes.fromhex("0200000000fe")
ADDRESSES = [bytes([10, 0, 0, n]) for n in (10, 14, 77, 78)]
SOURCE = slice(ethernet.OFFLOAD_HEADER_LEN + 26, ethernet.OFFLOAD_HEADER_LEN + 30)


def _arp(mac: bytes, ip: bytes) -> bytes:
    body = bytes.fromhex("0001080006040002") + mac + ip + bytes(6) + ip
    return ethernet.NO_OFFLOAD + b"\xff" * 6 + mac + b"\x08\x06" + body


def _ipv4(mac: bytes, ip: bytes) -> bytes:
    header = bytes.fromhex("4500001c0001400040110000") + ip + bytes([10, 0, 0, 99])
    return ethernet.NO_OFFLOAD + GW_MAC + mac + b"\x08\x00" + header + bytes(8)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["claim", "send", "age"]),
            st.sampled_from(ADDRESSES),
            st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=6),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_no_frame_from_an_address_the_victim_holds_leaves_from_the_attacker(
    steps: list[tuple[str, bytes, list[bytes]]],
) -> None:
    sw = Switch(SwitchConfig(announce_holdings=False, ageing_s=5.0))
    sw.attach("local", PortPolicy(vlans=None), 0.0)
    sw.attach("victim", PortPolicy(), 0.0)
    sw.attach("evil", PortPolicy(), 0.0)
    sw.forward("local", [_arp(GW_MAC, bytes([10, 0, 0, 1]))], 0.0)
    now = 0.0
    for kind, address, sources in steps:
        now += 0.5
        if kind == "claim":
            sw.forward("victim", [_arp(VICTIM_MAC, address)], now)
        elif kind == "age":
            now += 3.0
            sw.age(now)
            sw.forward("local", [_arp(GW_MAC, bytes([10, 0, 0, 1]))], now)
        else:
            frames = [_ipv4(EVIL_MAC, ip) for ip in sources]
            out = sw.forward("evil", frames, now)
            held = {ip for ip in ADDRESSES if sw.owner(ip, 0, now) == "victim"}
            for frame in out.get("local", []):
                assert (
                    frame[ethernet.OFFLOAD_HEADER_LEN + 26 : ethernet.OFFLOAD_HEADER_LEN + 30]
                    not in held
                )
