"""The contract's TPMS_ATTEST parser on mutated quotes (eth_call only, bounded): a mutation
is refused with one of the quote reasons, and only the untouched quote is accepted."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from web3.exceptions import ContractLogicError

from contracts.client import revert_reason
from contracts.quote import ak_public, build_attest, pcr_digest, sign_attest
from contracts.voucher import vouch_for

pytestmark = pytest.mark.integration

REASONS = {
    "malformed quote",
    "PCR selection mismatch",
    "nonce mismatch",
    "bad quote signature",
    "PCR digest not approved",
}
KEY = ec.generate_private_key(ec.SECP256R1())
NODE_ID = os.urandom(32)


def test_mutated_quotes_are_refused(deployed, accounts, kit):
    w3 = deployed.w3
    block = w3.eth.block_number - 1
    block_hash = bytes(w3.eth.get_block(block)["hash"])
    digest = pcr_digest([b"\x07" * 32])
    deployed.approve_digest(digest)  # module state: harmless for the other tests' digests
    attest = build_attest(deployed.qualifying_data(block_hash, NODE_ID), digest)
    quote = sign_attest(KEY, attest)
    ak = ak_public(KEY.public_key())
    sender = accounts[5].address
    voucher = vouch_for(kit.ENROLLER, deployed, NODE_ID, ak, operator=sender)  # genuine

    def submit(blob: bytes) -> str:
        call = deployed.contract.functions.register(
            NODE_ID,
            "wss://f/ws",
            ak.x,
            ak.y,
            (blob, quote.r, quote.s, block),
            kit.RELEASE,
            voucher,
            bytes(8),
        )
        try:
            call.call({"from": sender, "value": 10 * 10**18})
        except ContractLogicError as exc:
            return revert_reason(exc)
        return "accepted"

    assert submit(attest) == "accepted"

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(0, len(attest) - 1), st.integers(1, 255)), min_size=1, max_size=3
        ),
        st.integers(-8, 8),
    )
    def mutated(flips, resize):
        blob = bytearray(attest)
        for index, mask in flips:
            blob[index] ^= mask
        blob = blob[:resize] if resize < 0 else blob + bytes(resize)
        assume(bytes(blob) != attest)  # two flips of one byte can cancel out
        assert submit(bytes(blob)) in REASONS

    mutated()
