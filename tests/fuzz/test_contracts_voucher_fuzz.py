"""Voucher decoders on arbitrary input: a clean VoucherError or a voucher whose signature
recovers to the enroller it names, nothing else."""

from __future__ import annotations

import json

from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import VoucherError
from contracts.quote import AkPublic
from contracts.voucher import Voucher, recover_voucher

ENROLLER = Account.from_key("0x" + "33" * 32)
GOOD = json.loads(
    Voucher.make(
        ENROLLER,
        "0x" + "44" * 20,
        1,
        b"\x05" * 32,
        AkPublic(b"\x06" * 32, b"\x07" * 32),
        operator="0x" + "55" * 20,
    ).dump()
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parse_total_on_raw_input(data):
    try:
        Voucher.parse(data)
    except VoucherError:
        return
    raise AssertionError("random input parsed as a signed voucher")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(GOOD)), JSON_VALUES)
def test_parse_total_on_one_changed_field(key, value):
    doc = {**GOOD, key: value}
    try:
        voucher = Voucher.parse(json.dumps(doc))
    except VoucherError:
        return
    assert voucher.enroller == ENROLLER.address  # only an equivalent spelling survives


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_recover_total(signature):
    try:
        signer = recover_voucher(
            signature,
            GOOD["registry"],
            1,
            b"\x05" * 32,
            AkPublic(b"\x06" * 32, b"\x07" * 32),
            operator=GOOD["operator"],
        )
    except VoucherError:
        return
    assert signer.startswith("0x") and len(signer) == 42
