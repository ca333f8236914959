import pytest

from l2bridge.transport.constants import TOKEN_TEXT_LENGTH
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import AccessKey, TokenVerifier, decode_token, mint_token

NODE = bytes(range(32))
OTHER = bytes(32)
T0 = 1_800_000_000.0  # start of a 60 s window


def test_token_is_43_base64url_chars_and_single_use():
    key = AccessKey.generate()
    verifier = TokenVerifier(key, NODE)
    token = mint_token(key, NODE, T0)
    assert len(token) == TOKEN_TEXT_LENGTH
    assert decode_token(token) is not None
    assert verifier.check(token, T0 + 1)
    assert not verifier.check(token, T0 + 2)
    assert verifier.rejected["replay"] == 1


def test_window_slack_one_either_side():
    key = AccessKey.generate()
    verifier = TokenVerifier(key, NODE, window_s=60)
    assert verifier.check(mint_token(key, NODE, T0 - 60), T0)
    assert verifier.check(mint_token(key, NODE, T0 + 60), T0)
    assert not verifier.check(mint_token(key, NODE, T0 - 120), T0)
    assert not verifier.check(mint_token(key, NODE, T0 + 120), T0)
    assert verifier.rejected["mac"] == 2


def test_bound_to_node_and_key():
    key = AccessKey.generate()
    verifier = TokenVerifier(key, NODE)
    assert not verifier.check(mint_token(key, OTHER, T0), T0)
    assert not verifier.check(mint_token(AccessKey.generate(), NODE, T0), T0)


def test_replay_cache_pruned_and_bounded():
    key = AccessKey.generate()
    verifier = TokenVerifier(key, NODE, window_s=60, cache_per_window=3)
    for _ in range(3):
        assert verifier.check(mint_token(key, NODE, T0), T0)
    # The window's cache is full: refuse instead of growing.
    assert not verifier.check(mint_token(key, NODE, T0), T0)
    assert verifier.rejected["full"] == 1
    # Three windows later the old window is gone from memory.
    assert verifier.check(mint_token(key, NODE, T0 + 180), T0 + 180)
    assert verifier.cached_nonces() == 1


def test_replay_still_caught_in_next_window():
    key = AccessKey.generate()
    verifier = TokenVerifier(key, NODE, window_s=60)
    token = mint_token(key, NODE, T0 + 59)
    assert verifier.check(token, T0 + 59)
    assert not verifier.check(token, T0 + 61)


@pytest.mark.parametrize(
    "text",
    ["", "x" * 43, "a" * 42, "a" * 44, "é" * 43, "A" * 42 + "B", "abc,def", "=" * 43],
)
def test_malformed_tokens_rejected(text):
    verifier = TokenVerifier(AccessKey.generate(), NODE)
    assert not verifier.check(text, T0)


def test_non_canonical_spelling_rejected():
    key = AccessKey.generate()
    token = mint_token(key, NODE, T0)
    # The last character carries 2 unused bits; flipping them keeps the
    # decoded bytes but must not make a second valid spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = token[:-1] + alphabet[last ^ 1]
    assert decode_token(twin) is None


def test_access_key_text_round_trip_and_errors():
    key = AccessKey.generate()
    assert AccessKey.from_text(key.to_text() + "\n") == key
    assert key.to_text() not in repr(key)
    with pytest.raises(TokenError):
        AccessKey.from_text("short")
    with pytest.raises(TokenError):
        AccessKey.from_text("!!!!")
    with pytest.raises(TokenError):
        TokenVerifier(key, NODE, window_s=0)
    with pytest.raises(TokenError):
        mint_token(key, NODE, T0, nonce=b"123")
