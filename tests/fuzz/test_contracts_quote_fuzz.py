"""Quote decoders on arbitrary bytes: a clean QuoteFormatError or a value, nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import QuoteFormatError
from contracts.quote import ak_public, signature_rs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_signature_rs_total(data):
    try:
        r, s = signature_rs(data)
    except QuoteFormatError:
        return
    assert len(r) == 32 and len(s) == 32


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120), st.binary(min_size=65, max_size=65).map(lambda b: b"\x04" + b[1:])
    )
)
def test_ak_public_total(data):
    try:
        ak = ak_public(data)
    except QuoteFormatError:
        return
    assert len(ak.x) == 32 and len(ak.y) == 32
