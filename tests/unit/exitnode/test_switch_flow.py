"""The switch's flow fast path: a batch gets exactly the verdicts frame-by-frame switching gives.

A frame with the same offload and Ethernet header as the frame just forwarded skips the
parser and the table (bench/l2-results.md: 8 us -> <1 us per plain frame). These tests
hold it to the full path: same output, same order, same counters, whatever the batch mixes
(MAC moves in the middle of a flow, oversized, tagged, offload-flagged, ARP, broadcast).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exitnode.switch import PortPolicy, Switch, SwitchConfig
from hardware import ethernet

MACS = [bytes.fromhex(f"0200000000{n:02x}") for n in range(1, 5)]
BCAST = b"\xff" * 6
IPV4 = b"\x08\x00"
ARP = b"\x08\x06"
VLAN_TAG = b"\x81\x00\x00\x05" + IPV4  # 802.1Q, VLAN 5, then IPv4
MAX_PLAIN = SwitchConfig().max_plain_frame


def plain(src: bytes, dst: bytes, size: int = 100, ethertype: bytes = IPV4) -> bytes:
    header = dst + src + ethertype
    return ethernet.NO_OFFLOAD + header + bytes(max(0, size - len(header)))


def fresh(cache: bool = True, ageing_s: float | None = None) -> Switch:
    sw = Switch(SwitchConfig(ageing_s=ageing_s) if ageing_s is not None else None)
    sw.flow_cache = cache
    for port in ("a", "b", "c"):
        sw.attach(port, PortPolicy(vlans=None, sticky_macs=False), now=0.0)
    return sw


def one_by_one(sw: Switch, port: str, frames: list[bytes], now: float) -> dict[str, list[bytes]]:
    """The reference: each frame in its own call, so the fast path never applies."""
    out: dict[str, list[bytes]] = {}
    for f in frames:
        for egress, got in sw.forward(port, [f], now).items():
            out.setdefault(egress, []).extend(got)  # type: ignore[arg-type]
    return out


def test_a_flow_batch_is_forwarded_whole_and_in_order() -> None:
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)  # MACS[1] lives on b
    batch = [plain(MACS[0], MACS[1], size=60 + i) for i in range(64)]
    out = sw.forward("a", batch, 0.1)
    assert out == {"b": batch}
    assert [len(f) for f in out["b"]] == [len(f) for f in batch]
    assert sw.stats.forwarded == 64


def test_oversized_frame_inside_a_flow_is_dropped() -> None:
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    big = plain(MACS[0], MACS[1], size=MAX_PLAIN + 1)
    batch = [plain(MACS[0], MACS[1]), big, plain(MACS[0], MACS[1])]
    out = sw.forward("a", batch, 0.1)
    assert out == {"b": [batch[0], batch[2]]}
    assert sw.stats.drops["oversized"] == 1


def test_a_mac_moving_mid_batch_ends_the_flow() -> None:
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    # The flow's destination now sends from port a itself: it moves to a, and what follows
    # for it is a frame to its own port (dropped), not forwarded to b as before.
    batch = [plain(MACS[0], MACS[1]), plain(MACS[1], MACS[2]), plain(MACS[0], MACS[1])]
    out = sw.forward("a", batch, 0.1)
    assert out.get("b") == [batch[0], batch[1]]  # the 2nd floods (MACS[2] unknown)
    assert sw.stats.drops["same_port"] == 1


def test_view_frames_from_a_record_take_the_fast_path_too() -> None:
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    one = plain(MACS[0], MACS[1])
    view = memoryview(one * 4)
    frames = [view[i * len(one) : (i + 1) * len(one)] for i in range(4)]
    out = sw.forward("a", frames, 0.1)
    assert [bytes(f) for f in out["b"]] == [one] * 4


def _frames() -> st.SearchStrategy[bytes]:
    mac = st.sampled_from(MACS)
    size = st.sampled_from([14, 60, 1500, MAX_PLAIN, MAX_PLAIN + 1])
    simple = st.builds(plain, mac, st.sampled_from([*MACS, BCAST]), size)
    arp = st.builds(lambda s, d: plain(s, d, 60, ARP), mac, st.sampled_from([MACS[0], BCAST]))
    tagged = st.builds(lambda s, d: ethernet.NO_OFFLOAD + d + s + VLAN_TAG + bytes(60), mac, mac)
    flagged = st.builds(  # needs-checksum flag set: never the fast path
        lambda s, d: bytes([ethernet.NEEDS_CSUM]) + plain(s, d, 80)[1:], mac, mac
    )
    short = st.just(ethernet.NO_OFFLOAD + MACS[0])
    return st.one_of(simple, simple, simple, arp, tagged, flagged, short)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.lists(_frames(), max_size=12)),
        max_size=8,
    )
)
def test_batches_match_frame_by_frame_switching(batches: list[tuple[str, list[bytes]]]) -> None:
    batched, single = fresh(), fresh(cache=False)
    for step, (port, frames) in enumerate(batches):
        now = 0.5 * step
        got = batched.forward(port, frames, now)
        want = one_by_one(single, port, frames, now)
        assert {k: v for k, v in got.items() if v} == want
    assert batched.stats.forwarded == single.stats.forwarded
    assert batched.stats.flooded == single.stats.flooded
    assert batched.stats.frames_in == single.stats.frames_in
    assert dict(batched.stats.drops) == dict(single.stats.drops)
    assert batched.stats.learned == single.stats.learned


def test_a_flow_is_taken_up_again_in_the_next_batch() -> None:
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    frame = plain(MACS[0], MACS[1])
    assert sw.forward("a", [frame], 0.1) == {"b": [frame]}
    learned = sw.stats.learned
    assert sw.forward("a", [frame], 0.2) == {"b": [frame]}
    assert sw.stats.forwarded == 2 and sw.stats.learned == learned
    assert sw.lookup(MACS[0], 0, 0.2) == "a"


def test_a_kept_flow_is_not_used_once_its_destination_aged_out() -> None:
    sw = fresh(ageing_s=10.0)
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    frame = plain(MACS[0], MACS[1])
    sw.forward("a", [frame], 1.0)
    # MACS[1] was last heard at 0.0: at 10.5 it is gone, so the frame floods (to b and c).
    assert sw.forward("a", [frame], 10.5) == {"b": [frame], "c": [frame]}
    assert sw.stats.flooded == 2  # the first frame from b flooded too


def test_a_kept_flow_is_not_used_once_its_destination_moved() -> None:
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    frame = plain(MACS[0], MACS[1])
    sw.forward("a", [frame], 0.1)
    sw.forward("c", [plain(MACS[1], MACS[2])], 0.2)  # MACS[1] moved to c
    assert sw.forward("a", [frame], 0.3) == {"c": [frame]}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.lists(_frames(), max_size=6),
                st.sampled_from([0.0, 0.1, 0.6, 1.2, 3.0]),
            ),
            st.sampled_from(["age", "detach-a", "detach-b", "detach-c"]),
        ),
        max_size=14,
    )
)
def test_kept_flows_match_switching_without_them(steps: list[object]) -> None:
    """Time passing beyond the ageing time, sweeps, ports leaving and coming back: a switch
    keeping flows between calls forwards, drops and learns exactly as one that does not."""
    kept, plain_sw = fresh(ageing_s=1.0), fresh(cache=False, ageing_s=1.0)
    now = 0.0
    for step in steps:
        for sw in (kept, plain_sw):
            if step == "age":
                sw.age(now)
            elif isinstance(step, str):
                port = step.split("-")[1]
                sw.detach(port)
                # It comes back without untagged frames: a kept flow must not skip that.
                sw.attach(port, PortPolicy(vlans=frozenset({5}), sticky_macs=False), now=now)
        if isinstance(step, tuple):
            port, frames, dt = step
            now += dt
            got = kept.forward(port, frames, now)
            want = plain_sw.forward(port, frames, now)
            assert got == want
    assert kept._table == plain_sw._table
    assert kept.stats == plain_sw.stats


def test_a_detached_port_keeps_no_flow() -> None:
    """Ports come and go (one per tunnel): what is kept for them must go with them."""
    sw = fresh()
    sw.forward("b", [plain(MACS[1], MACS[0])], 0.0)
    sw.forward("a", [plain(MACS[0], MACS[1])], 0.1)
    assert "a" in sw._flows
    sw.detach("a")
    assert "a" not in sw._flows
