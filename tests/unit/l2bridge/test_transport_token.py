"""Token v2 and per-device credentials: the gate's check, attacked from every side."""

import base64
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.transport.admission import Admission, AdmissionLedger, TokenVerifier
from l2bridge.transport.constants import TOKEN_TEXT_LENGTH
from l2bridge.transport.credentials import CredentialTable, CredentialWallet
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import (
    Credential,
    MasterKey,
    decode_token,
    mint_token,
    seal_handle,
    window_of,
    window_tag,
)

NODE = bytes(range(32))
OTHER = bytes(32)
DEVICE = b"\x11" * 32
DEVICE2 = b"\x22" * 32
SERIAL = b"\x5e" * 16
T0 = 1_800_000_000.0  # start of a 60 s window


def exit_with(*devices: bytes, node: bytes = NODE, **kw):
    master = MasterKey.generate()
    table = CredentialTable()
    creds = [table.issue(master, node, d, f"dev{i}", T0)[1] for i, d in enumerate(devices)]
    return master, table, TokenVerifier(master, node, table, **kw), creds


def test_round_trip_names_the_device_and_is_single_use():
    _, _, verifier, (cred,) = exit_with(DEVICE)
    token = mint_token(cred, T0)
    assert len(token) == TOKEN_TEXT_LENGTH
    admission = verifier.check(token, T0 + 1, "10.0.0.1")
    assert admission == Admission(token, DEVICE, cred.handle, "dev0")
    assert verifier.check(token, T0 + 2, "10.0.0.1") is None
    assert verifier.rejected["replay"] == 1


def test_unknown_handle_refused():
    master, _, verifier, _ = exit_with(DEVICE)
    # A credential derived from the right master key but never recorded in the table.
    stray = Credential.derive(master, NODE, os.urandom(16))
    assert verifier.check(mint_token(stray, T0), T0) is None
    assert verifier.rejected["unknown"] == 1


def test_revoked_handle_refused_other_device_still_admitted():
    _, table, verifier, (cred, cred2) = exit_with(DEVICE, DEVICE2)
    assert table.revoke(name="dev0")
    assert verifier.check(mint_token(cred, T0), T0) is None
    assert verifier.rejected["revoked"] == 1
    assert verifier.check(mint_token(cred2, T0), T0) is not None


def test_revoked_certificate_cancels_credential_through_the_live_list():
    master, table = MasterKey.generate(), CredentialTable()
    _, cred = table.issue(master, NODE, DEVICE, "lan-a", T0, serial=SERIAL)
    revoked: set[bytes] = set()
    verifier = TokenVerifier(master, NODE, table, revoked_serials=lambda: frozenset(revoked))
    assert verifier.check(mint_token(cred, T0), T0) is not None
    revoked.add(SERIAL)  # the admin's list now names the certificate
    assert verifier.check(mint_token(cred, T0), T0) is None
    assert verifier.rejected["revoked"] == 1
    # Persisting it: the management API marks the entry too.
    assert table.revoke_serials(frozenset({SERIAL})) == ["lan-a"]
    assert next(iter(table)).revoked


def test_wrong_exit_never_verifies_even_with_one_admin():
    # One admin set up both exits; each has its own master key and node id.
    master_a, table_a = MasterKey.generate(), CredentialTable()
    master_b, table_b = MasterKey.generate(), CredentialTable()
    node_a, node_b = NODE, OTHER
    _, cred_a = table_a.issue(master_a, node_a, DEVICE, "lan-a", T0)
    # Exit B even has an entry with the same handle for the same device.
    table_b.issue(master_b, node_b, DEVICE, "lan-a", T0, handle=cred_a.handle)
    verifier_b = TokenVerifier(master_b, node_b, table_b)
    assert verifier_b.check(mint_token(cred_a, T0), T0) is None
    # Exit A's operator holds master_a: whatever it derives for B's node id fails at B.
    forged = Credential.derive(master_a, node_b, cred_a.handle)
    assert verifier_b.check(mint_token(forged, T0), T0) is None
    assert verifier_b.rejected["unknown"] + verifier_b.rejected["mac"] == 2
    # The same master key at another node id derives other secrets.
    assert Credential.derive(master_a, node_b, cred_a.handle).secret != cred_a.secret


def test_window_slack_one_either_side():
    _, _, verifier, (cred,) = exit_with(DEVICE, window_s=60)
    assert verifier.check(mint_token(cred, T0 - 60), T0) is not None
    assert verifier.check(mint_token(cred, T0 + 60), T0) is not None
    assert verifier.check(mint_token(cred, T0 - 120), T0) is None
    assert verifier.check(mint_token(cred, T0 + 120), T0) is None
    # Outside the slack the token's tag names no credential the exit knows for a live window.
    assert verifier.rejected["unknown"] == 2


def test_replay_still_caught_in_next_window_and_cache_bounded():
    _, _, verifier, (cred,) = exit_with(DEVICE, cache_per_window=3, per_device=100)
    token = mint_token(cred, T0 + 59)
    assert verifier.check(token, T0 + 59) is not None
    assert verifier.check(token, T0 + 61) is None
    for _ in range(2):
        assert verifier.check(mint_token(cred, T0 + 59), T0 + 59) is not None
    assert verifier.check(mint_token(cred, T0 + 59), T0 + 59) is None
    assert verifier.rejected["full"] == 1
    assert verifier.check(mint_token(cred, T0 + 240), T0 + 240) is not None
    assert isinstance(verifier.ledger, AdmissionLedger)
    assert verifier.ledger.cached_nonces() == 1


def test_refused_tokens_never_fill_the_nonce_cache():
    master, _, verifier, (cred,) = exit_with(DEVICE)
    stray = Credential.derive(master, NODE, os.urandom(16))
    bad_mac = Credential(NODE, cred.handle, os.urandom(32), cred.hide)
    for _ in range(50):
        assert verifier.check(mint_token(stray, T0), T0) is None
        assert verifier.check(mint_token(bad_mac, T0), T0) is None
    assert isinstance(verifier.ledger, AdmissionLedger)
    assert verifier.ledger.cached_nonces() == 0


def test_tokens_of_one_device_are_unlinkable():
    _, _, _, (cred,) = exit_with(DEVICE)
    raw = [base64.urlsafe_b64decode(mint_token(cred, T0)) for _ in range(200)]
    # Same window, same device: bytes at equal positions agree no more than chance
    # (1/256 per byte; 48 bytes x 199 pairs -> about 37 expected; allow 3x).
    same = sum(a == b for x, y in itertools.pairwise(raw) for a, b in zip(x, y, strict=True))
    assert same < 3 * 48 * 199 / 256
    # The handle never appears in clear, nor does any 4-byte piece of it.
    for data in raw:
        for i in range(0, 13):
            assert cred.handle[i : i + 4] not in data


def test_a_fellow_client_who_opens_tags_cannot_name_or_follow_a_device():
    # Another holder of a credential for this exit knows the exit's hide key, so it can
    # open the tag in a token it sees on the path; the tag is not the handle, and it
    # changes every window, so it cannot tell whose token it is or link it across windows.
    _, _, _, (victim, fellow) = exit_with(DEVICE, DEVICE2)
    assert fellow.hide == victim.hide

    def opened(token: str) -> bytes:
        parts = decode_token(token)
        assert parts is not None
        return seal_handle(fellow.hide, parts.nonce, parts.sealed)

    same_window = {opened(mint_token(victim, T0 + s)) for s in (0, 10, 50)}
    later = {opened(mint_token(victim, T0 + 60 * k)) for k in range(1, 6)}
    assert len(same_window) == 1  # within one window a fellow client can link
    (tag,) = same_window
    assert tag not in later and len(later) == 5  # not across windows
    assert victim.handle != tag and victim.handle not in later
    assert window_tag(victim.secret, window_of(T0, 60)) == tag  # only the secret maps it


def test_quota_per_device_refuses_the_flooder_not_another_device():
    _, _, verifier, (flooder, other) = exit_with(DEVICE, DEVICE2, per_device=5)
    admitted = [verifier.check(mint_token(flooder, T0), T0, "10.0.0.1") for _ in range(8)]
    assert sum(a is not None for a in admitted) == 5
    assert verifier.rejected["device quota"] == 3
    assert verifier.check(mint_token(other, T0), T0, "10.0.0.1") is not None
    # The bucket refills at per_device a minute: one more after 12 s.
    assert verifier.check(mint_token(flooder, T0 + 12), T0 + 12, "10.0.0.1") is not None
    assert verifier.check(mint_token(flooder, T0 + 12), T0 + 12, "10.0.0.1") is None


def test_quota_per_source_over_all_its_devices():
    _, _, verifier, (a, b) = exit_with(DEVICE, DEVICE2, per_device=100, per_source=3)
    results = [verifier.check(mint_token(c, T0), T0, "198.51.100.7") for c in (a, b, a, b)]
    assert [r is not None for r in results] == [True, True, True, False]
    assert verifier.rejected["source quota"] == 1
    assert verifier.check(mint_token(a, T0), T0, "203.0.113.9") is not None


def test_forged_tokens_do_not_drain_a_victims_quota():
    # A fellow client knows the hide key and so the victim's handle; without the secret
    # it can only forge MACs, which are refused before any quota is charged.
    _, _, verifier, (victim,) = exit_with(DEVICE, per_device=2)
    forged = Credential(NODE, victim.handle, os.urandom(32), victim.hide)
    for _ in range(20):
        assert verifier.check(mint_token(forged, T0), T0, "10.9.9.9") is None
    assert verifier.check(mint_token(victim, T0), T0) is not None


def test_token_minted_for_another_node_with_same_key_refused():
    _, _, verifier, (cred,) = exit_with(DEVICE)
    moved = Credential(OTHER, cred.handle, cred.secret, cred.hide)
    assert verifier.check(mint_token(moved, T0), T0) is None


def test_one_canonical_spelling():
    _, _, _, (cred,) = exit_with(DEVICE)
    token = mint_token(cred, T0)
    assert decode_token(token) is not None
    assert decode_token(token + "=") is None
    assert decode_token(token[:-1]) is None
    assert decode_token(token[:-1] + "+") is None  # standard base64, not base64url


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=100)
    | st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
)
def test_malformed_input_is_refused_never_raises(text):
    _, _, verifier, _ = exit_with(DEVICE)
    assert verifier.check(text, T0, "x") is None
    assert sum(verifier.rejected.values()) == 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 47), st.integers(1, 255))
def test_any_flipped_bit_is_refused(position, flip):
    _, _, verifier, (cred,) = exit_with(DEVICE)
    raw = bytearray(base64.urlsafe_b64decode(mint_token(cred, T0)))
    raw[position] ^= flip
    assert verifier.check(base64.urlsafe_b64encode(bytes(raw)).decode(), T0) is None


def test_table_and_wallet_round_trip_and_hold_no_secret():
    master, table = MasterKey.generate(), CredentialTable()
    _, cred = table.issue(master, NODE, DEVICE, "lan-a", T0, serial=SERIAL)
    text = table.to_text()
    assert cred.secret.hex() not in text
    assert base64.urlsafe_b64encode(cred.secret).decode()[:20] not in text
    again = CredentialTable.from_text(text)
    assert list(again) == list(table)
    wallet = CredentialWallet([cred])
    assert CredentialWallet.from_text(wallet.to_text()).for_exit(NODE) == cred
    assert "secret" not in repr(cred) or cred.secret.hex() not in repr(cred)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"version": 2, "credentials": []}',
        '{"version": 1, "credentials": [1]}',
        '{"version": 1, "credentials": [{"handle": "AAAA", "device": "00", "name": "x", '
        '"issued": 1}]}',
    ],
)
def test_bad_table_text_is_a_clear_error(text):
    with pytest.raises(TokenError):
        CredentialTable.from_text(text)


def test_master_key_text_round_trip_and_checks():
    key = MasterKey.generate()
    assert MasterKey.from_text(key.to_text() + "\n") == key
    assert key.secret.hex() not in repr(key)
    with pytest.raises(TokenError):
        MasterKey.from_text("c2hvcnQ")
    with pytest.raises(TokenError):
        MasterKey.from_text("not base64!!")


def test_a_known_devices_refusal_is_reported_once_a_minute_and_only_for_its_own_tokens():
    reports: list[tuple[str, str]] = []
    master, table = MasterKey.generate(), CredentialTable()
    _, cred = table.issue(master, NODE, DEVICE, "lan-a", T0)
    verifier = TokenVerifier(
        master, NODE, table, per_device=1, on_device_refused=lambda *r: reports.append(r)
    )
    assert verifier.check(mint_token(cred, T0), T0) is not None
    for _ in range(5):  # over its quota, five times within a minute: one report
        assert verifier.check(mint_token(cred, T0), T0) is None
    assert reports == [("lan-a", "over endpoints.handshakes_per_device")]
    table.revoke(name="lan-a")
    # Forged tokens for its handle (a fellow client) are refused and never reported.
    forged = Credential(NODE, cred.handle, os.urandom(32), cred.hide)
    assert verifier.check(mint_token(forged, T0 + 61), T0 + 61) is None
    assert len(reports) == 1
    assert verifier.check(mint_token(cred, T0 + 61), T0 + 61) is None
    assert reports[-1] == ("lan-a", "credential revoked")
    assert verifier.rejected["revoked"] == 1 and verifier.rejected["unknown"] == 1


def test_credentials_issued_or_reloaded_later_are_found_by_their_tags():
    master, table, verifier, (first,) = exit_with(DEVICE)
    assert verifier.check(mint_token(first, T0), T0) is not None  # the tag index is built
    _, later = table.issue(master, NODE, DEVICE2, "later", T0)  # issued into the live table
    assert verifier.check(mint_token(later, T0), T0) is not None
    # A reloaded table (a new object, as the exit's file watch installs) replaces the index.
    reloaded = CredentialTable.from_text(table.to_text())
    _, third = reloaded.issue(master, NODE, b"\x33" * 32, "third", T0)
    verifier.table = reloaded
    assert verifier.check(mint_token(third, T0), T0) is not None
    reloaded.revoke(name="dev0")
    assert verifier.check(mint_token(first, T0), T0) is None
    assert verifier.rejected["revoked"] == 1
