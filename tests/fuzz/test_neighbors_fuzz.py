"""ARP/ND inspection never fails on client bytes other than by refusing (exitnode.neighbors)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exitnode import neighbors
from hardware import ethernet

SRC = bytes.fromhex("02000000000e")
ICMPV6_ND = st.builds(
    lambda kind, rest: bytes([kind]) + rest,
    st.sampled_from([133, 134, 135, 136, 137, 128]),
    st.binary(max_size=80),
)
IPV6 = st.builds(
    lambda nxt, src, body: b"\x60" + bytes(5) + bytes([nxt, 255]) + src + bytes(16) + body,
    st.sampled_from([58, 0, 43, 44, 60, 6, 17]),
    st.binary(min_size=16, max_size=16),
    st.one_of(ICMPV6_ND, st.binary(max_size=120)),
)


@settings(max_examples=400, deadline=None)
@given(ethertype=st.sampled_from([0x0806, 0x86DD]), payload=st.one_of(IPV6, st.binary(max_size=80)))
def test_claims_only_claim_or_refuse(ethertype: int, payload: bytes) -> None:
    frame = ethernet.NO_OFFLOAD + b"\xff" * 6 + SRC + ethertype.to_bytes(2, "big") + payload
    header = ethernet.parse(frame, 1518)
    try:
        claim = neighbors.claims(frame, header)
    except neighbors.Refused as refused:
        assert refused.reason.startswith(("arp_", "nd_"))
        return
    assert all(len(a) == (4 if ethertype == 0x0806 else 16) for a in claim.addresses)
