"""The liboqs backend: safe to ask for where liboqs is missing, strict about sizes, and
interoperable with the cryptography backend wherever the C library loads.

The interop, bad-key and handshake tests run on every backend that loads here (the
known-answer tests are in test_pq.py); on a machine without liboqs they are skipped and the
unavailable path is what is tested.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from l2bridge.constants import MLDSA_PUBLIC_SIZE, MLKEM_PUBLIC_SIZE, Mode
from l2bridge.crypto import pq
from l2bridge.crypto.pq import OqsBackend, available_backends, get_backend, mlkem_public_key_ok
from l2bridge.errors import BackendUnavailable
from l2bridge.identity.keys import AdminKey, Authorizer, HybridSigningKey
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.session import PeerAuthenticated

BACKENDS = available_backends()
IDS = [b.name for b in BACKENDS]
PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS]
PAIR_IDS = [f"{a.name}-{b.name}" for a, b in PAIRS]
NOW = 1_700_000_000.0

# What liboqs-python does on import where the C library is missing: a countdown, an attempt
# to download and build liboqs, then SystemExit.
FAKE_OQS = """
import os
open(os.environ["FAKE_OQS_MARKER"], "w").close()
raise SystemExit("Could not load liboqs shared library")
"""


@pytest.fixture
def fake_oqs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable ``oqs`` that behaves like liboqs-python without its C library."""
    package = tmp_path / "site" / "oqs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_OQS)
    marker = tmp_path / "oqs-was-imported"
    monkeypatch.setenv("FAKE_OQS_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path / "no-liboqs-here"))
    monkeypatch.setattr(pq.ctypes.util, "find_library", lambda name: None)
    return marker


def test_missing_liboqs_is_unavailable_and_oqs_is_never_imported(fake_oqs: Path) -> None:
    with pytest.raises(BackendUnavailable, match="liboqs shared library not found"):
        get_backend("liboqs")
    assert not fake_oqs.exists() and "oqs" not in sys.modules
    assert [b.name for b in available_backends()] == ["cryptography"]


def test_an_oqs_import_that_exits_is_unavailable_not_an_exit(
    fake_oqs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pq, "find_liboqs", lambda: "/opt/liboqs/lib/liboqs.so")
    with pytest.raises(BackendUnavailable, match="SystemExit"):
        OqsBackend()
    assert fake_oqs.exists()  # it was imported, and its SystemExit was contained


def test_the_library_probe_looks_in_oqs_install_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pq.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "liboqs.so").write_bytes(b"not an ELF file")
    assert pq.find_liboqs() is None  # present but not loadable: not found


class RecordingOqs:
    """Stands in for the oqs module: records any call that would reach C."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"oqs.{name} reached with a bad size")


def test_every_size_is_checked_before_liboqs_is_called() -> None:
    fake = RecordingOqs()
    backend = object.__new__(OqsBackend)
    backend._oqs = fake
    good_pk = get_backend("cryptography").kem_generate()[0]
    for public in (good_pk[:100], good_pk[:-1], good_pk + b"\x00", b""):
        with pytest.raises(ValueError):
            backend.kem_encapsulate(public)
    with pytest.raises(ValueError):
        backend.kem_load_private(bytes(64), bytes(100))
    kem = pq._OqsKem(fake)
    with pytest.raises(ValueError):
        kem.decapsulate(bytes(100))
    mldsa_pk = bytes(MLDSA_PUBLIC_SIZE)
    assert not backend.sig_verify(mldsa_pk[:-1], bytes(4627), b"m", b"")
    assert not backend.sig_verify(mldsa_pk, bytes(4626), b"m", b"")
    assert not backend.sig_verify(mldsa_pk, bytes(4627), b"m", bytes(256))
    signer = pq._OqsSigner(fake, mldsa_pk)
    with pytest.raises(ValueError):
        signer.sign(b"m", bytes(256))
    assert fake.calls == []


def coefficient_too_big(public: bytes) -> bytes:
    bad = bytearray(public)
    bad[0], bad[1] = 0xFF, bad[1] | 0x0F  # first coefficient = 4095 >= q
    return bytes(bad)


def test_mlkem_encapsulation_key_check() -> None:
    public = get_backend("cryptography").kem_generate()[0]
    assert mlkem_public_key_ok(public)
    assert not mlkem_public_key_ok(coefficient_too_big(public))
    assert not mlkem_public_key_ok(public[:-1])
    assert len(public) == MLKEM_PUBLIC_SIZE


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_bad_mlkem_keys_are_refused(backend: pq.Backend) -> None:
    public, private = backend.kem_generate()
    for bad in (public[:100], public[:-1], public + b"\x00", coefficient_too_big(public)):
        with pytest.raises(ValueError):
            backend.kem_encapsulate(bad)
    with pytest.raises(ValueError):
        private.decapsulate(os.urandom(100))


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=PAIR_IDS)
def test_mlkem_interoperates(a: pq.Backend, b: pq.Backend) -> None:
    public, private = a.kem_generate()
    shared, ciphertext = b.kem_encapsulate(public)
    assert private.decapsulate(ciphertext) == shared


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=PAIR_IDS)
def test_mldsa_interoperates(a: pq.Backend, b: pq.Backend) -> None:
    signer = a.sig_generate()
    sig = signer.sign(b"message", b"shadowmesh")
    assert b.sig_verify(signer.public_bytes, sig, b"message", b"shadowmesh")
    assert not b.sig_verify(signer.public_bytes, sig, b"message", b"other")
    assert not b.sig_verify(signer.public_bytes, sig[:-1], b"message", b"shadowmesh")


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=PAIR_IDS)
def test_a_whole_handshake_and_rekey_through_each_backend(a: pq.Backend, b: pq.Backend) -> None:
    client, exit_key = HybridSigningKey.generate(), HybridSigningKey.generate()
    admin = AdminKey(HybridSigningKey.generate())
    cert = admin.issue(client.public, "dev", "org", int(NOW) - 60, int(NOW) + 3600)
    hs = ClientHandshake(client, certificate=cert, mode=Mode.HYBRID, backend=a)
    srv = ServerHandshake(exit_key, Authorizer([admin.public]), modes=[Mode.HYBRID], backend=b)
    exit_session, reply = srv.receive(hs.hello(), NOW)
    client_session, finish = hs.receive(reply, NOW)
    assert isinstance(exit_session.receive(finish, NOW).events[0], PeerAuthenticated)
    frames = [os.urandom(200)]
    got = exit_session.receive(client_session.seal(frames, NOW), NOW)
    assert [bytes(f) for f in got.frames] == frames
    # A rekey runs ML-KEM through the same backends again.
    init = client_session.start_rekey(int(NOW // 3600), NOW)
    (answer,) = exit_session.receive(init, NOW).replies
    client_session.receive(answer, NOW)
    assert client_session.epoch == exit_session.epoch == 1
    got = client_session.receive(exit_session.seal(frames, NOW), NOW)
    assert [bytes(f) for f in got.frames] == frames


def test_pq_backend_setting_selects_or_refuses(tmp_path: Path, fake_oqs: Path) -> None:
    from exitnode.errors import ExitConfigError
    from exitnode.server import ExitNode
    from l2bridge.client.node import ClientNode
    from l2bridge.node.config import ConfigError, load_config
    from lab import provision

    lab = provision.provision(tmp_path / "lab", exit_host="127.0.0.1", port=1)
    exit_cfg = load_config(lab.exit_config, env={})
    client_cfg = load_config(lab.client_configs["client"], env={})
    assert ExitNode(exit_cfg).backend.name == "cryptography"
    exit_cfg = _with_backend(exit_cfg, "liboqs")
    with pytest.raises(ExitConfigError, match=r"security\.pq_backend: liboqs shared library"):
        ExitNode(exit_cfg)
    with pytest.raises(ConfigError, match=r"security\.pq_backend: liboqs shared library"):
        ClientNode(_with_backend(client_cfg, "liboqs"), status=False)
    assert not fake_oqs.exists()


def _with_backend(cfg: Any, name: str) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, pq_backend=name))
