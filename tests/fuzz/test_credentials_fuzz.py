"""Credential files and join bundles from arbitrary JSON: a clear TokenError/BundleError
naming the problem, never another exception, never a half-valid object."""

import contextlib
import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.node import bundle as join_bundle
from l2bridge.transport.credentials import CredentialTable, CredentialWallet
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import Credential, MasterKey, b64_text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=6),
    max_leaves=20,
)  # fmt: skip

GOOD_ENTRY = {
    "handle": b64_text(os.urandom(16)), "device": "ab" * 32, "name": "lan-a",
    "issued": 1, "serial": None, "revoked": False,
}  # fmt: skip
GOOD_CREDENTIAL = Credential.derive(MasterKey.generate(), b"\x01" * 32, os.urandom(16)).to_json()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD_ENTRY)), json_values)
def test_a_table_entry_with_any_field_changed_loads_or_says_why(field, value):
    entry = dict(GOOD_ENTRY, **{field: value})
    text = json.dumps({"version": 1, "credentials": [entry]})
    try:
        table = CredentialTable.from_text(text)
    except TokenError as exc:
        assert str(exc)
        return
    (loaded,) = list(table)
    assert len(loaded.handle) == 16 and len(loaded.device) == 32 and loaded.name


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD_CREDENTIAL)), json_values)
def test_a_wallet_entry_with_any_field_changed_loads_or_says_why(field, value):
    doc = dict(GOOD_CREDENTIAL, **{field: value})
    try:
        wallet = CredentialWallet.from_text(json.dumps({"version": 1, "credentials": [doc]}))
    except TokenError as exc:
        assert str(exc)
        return
    assert len(wallet) == 1


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_is_a_table_or_a_clear_error(doc):
    for parse in (CredentialTable.from_text, CredentialWallet.from_text):
        with contextlib.suppress(TokenError):  # anything else fails the test
            parse(json.dumps(doc))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_a_bundles_credential_field_is_checked(value):
    doc = {"shadowmesh_join": 2, "name": "x", "url": "ws://h:1/ws", "exit_node_id": "01" * 32,
           "mtu": 1500, "certificate": "junk", "credential": value}  # fmt: skip
    try:
        join_bundle.parse(json.dumps(doc))
    except join_bundle.BundleError as exc:
        assert str(exc).startswith("join bundle: ")
    else:
        raise AssertionError("a bundle with a junk certificate was accepted")
