"""Known-answer tests for ML-KEM-1024 / ML-DSA-87, run on every backend that loads here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2bridge.constants import Cipher
from l2bridge.crypto.pq import (
    CryptographyBackend,
    available_backends,
    cpu_has_aes,
    default_backend,
    default_cipher_preference,
    find_liboqs,
    get_backend,
)
from l2bridge.errors import BackendUnavailable

VECTORS = json.loads((Path(__file__).parent / "pq_vectors.json").read_text())
BACKENDS = available_backends()
IDS = [b.name for b in BACKENDS]


def test_default_backend_is_cryptography_and_always_available() -> None:
    assert isinstance(default_backend(), CryptographyBackend)
    assert "cryptography" in IDS


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("vector", VECTORS["ml_kem_1024"], ids=["kem0", "kem1"])
def test_mlkem_decapsulation_known_answers(backend, vector) -> None:
    seed = bytes.fromhex(vector["d"] + vector["z"])
    private = backend.kem_load_private(seed, bytes.fromhex(vector.get("sk", "")))
    assert private.decapsulate(bytes.fromhex(vector["ct"])) == bytes.fromhex(vector["ss"])
    # Implicit rejection: a bad ciphertext yields the specified pseudo-random secret.
    assert private.decapsulate(bytes.fromhex(vector["ct_n"])) == bytes.fromhex(vector["ss_n"])


@pytest.mark.parametrize("vector", VECTORS["ml_kem_1024"], ids=["kem0", "kem1"])
def test_mlkem_keygen_from_seed_matches_vector(vector) -> None:
    from cryptography.hazmat.primitives.asymmetric import mlkem

    seed = bytes.fromhex(vector["d"] + vector["z"])
    key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(seed)
    assert key.public_key().public_bytes_raw() == bytes.fromhex(vector["pk"])


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_mlkem_round_trip_and_bad_key(backend) -> None:
    public, private = backend.kem_generate()
    shared, ciphertext = backend.kem_encapsulate(public)
    assert private.decapsulate(ciphertext) == shared
    with pytest.raises(ValueError):
        backend.kem_encapsulate(public[:-1])


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("vector", VECTORS["ml_dsa_87"], ids=["dsa0", "dsa1"])
def test_mldsa_verifies_known_signatures(backend, vector) -> None:
    public = bytes.fromhex(vector["pk"])
    sig, msg, ctx = (bytes.fromhex(vector[k]) for k in ("sig", "msg", "ctx"))
    assert backend.sig_verify(public, sig, msg, ctx)
    assert not backend.sig_verify(public, sig, msg + b"x", ctx)
    assert not backend.sig_verify(public, sig, msg, ctx + b"x")
    bad = bytearray(sig)
    bad[100] ^= 1
    assert not backend.sig_verify(public, bytes(bad), msg, ctx)
    assert not backend.sig_verify(public[:-1], sig, msg, ctx)


@pytest.mark.parametrize("vector", VECTORS["ml_dsa_87"], ids=["dsa0", "dsa1"])
def test_mldsa_keygen_from_seed_matches_vector(vector) -> None:
    signer = CryptographyBackend().sig_load_signer(bytes.fromhex(vector["xi"]))
    assert signer.public_bytes == bytes.fromhex(vector["pk"])


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_mldsa_sign_verify_round_trip(backend) -> None:
    signer = backend.sig_generate()
    sig = signer.sign(b"message", b"ctx")
    assert backend.sig_verify(signer.public_bytes, sig, b"message", b"ctx")
    assert not backend.sig_verify(signer.public_bytes, sig, b"message", b"other")


@pytest.mark.skipif(find_liboqs() is None, reason="no liboqs shared library here")
def test_liboqs_backend_loads_where_its_library_is() -> None:
    # Never importorskip("oqs"): without its C library that import tries to build liboqs
    # and raises SystemExit.
    assert get_backend("liboqs").name in IDS


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(BackendUnavailable):
        get_backend("nope")


def test_cpu_flag_detection(tmp_path) -> None:
    with_aes = tmp_path / "a"
    with_aes.write_text("processor : 0\nflags\t\t: fpu sse2 aes avx\n")
    without = tmp_path / "b"
    without.write_text("flags\t\t: fpu sse2 aesx avx\n")
    assert cpu_has_aes(str(with_aes))
    assert not cpu_has_aes(str(without))
    assert not cpu_has_aes(str(tmp_path / "missing"))
    assert set(default_cipher_preference()) == {Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305}
