from __future__ import annotations

import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bridge.constants import Mode
from l2bridge.errors import AuthenticationFailed, KeyFileError, NotAuthorized
from l2bridge.identity.keyfiles import load_allow_list, save_allow_list
from l2bridge.identity.keys import (
    KIND_ADMIN,
    KIND_IDENTITY,
    AdminKey,
    AllowList,
    Authorizer,
    DeviceCertificate,
    HybridPublicKey,
    HybridSignature,
    HybridSigningKey,
    RevocationList,
    load_public,
    node_id,
    read_private_file,
    save_public,
)

NOW = 1_700_000_000


@pytest.fixture(scope="module")
def device() -> HybridSigningKey:
    return HybridSigningKey.generate()


@pytest.fixture(scope="module")
def admin() -> AdminKey:
    return AdminKey(HybridSigningKey.generate())


@pytest.fixture(scope="module")
def cert(device, admin) -> DeviceCertificate:
    return admin.issue(device.public, "laptop-1", "Acme", NOW - 10, NOW + 3600)


def test_node_id_is_sha256_of_canonical_public_keys(device) -> None:
    import hashlib

    enc = device.public.encode()
    assert enc == b"\x01" + device.public.ed25519 + device.public.mldsa
    assert node_id(device.public) == hashlib.sha256(enc).digest() == device.node_id
    assert HybridPublicKey.decode(enc) == device.public


@pytest.mark.parametrize("mode", list(Mode))
def test_sign_verify_each_mode(device, mode) -> None:
    sig = device.sign(b"label", b"msg", mode)
    assert bool(sig.ed25519) == mode.uses_classical
    assert bool(sig.mldsa) == mode.uses_pq
    device.public.verify(b"label", b"msg", sig, mode)
    with pytest.raises(AuthenticationFailed):
        device.public.verify(b"other label", b"msg", sig, mode)
    with pytest.raises(AuthenticationFailed):
        device.public.verify(b"label", b"msg!", sig, mode)


def test_a_forged_half_alone_fails_hybrid(device) -> None:
    sig = device.sign(b"l", b"m")
    other = HybridSigningKey.generate().sign(b"l", b"m")
    with pytest.raises(AuthenticationFailed, match="authentication failed") as e1:
        device.public.verify(b"l", b"m", HybridSignature(other.ed25519, sig.mldsa))
    assert e1.value.detail == "ed25519 signature"
    with pytest.raises(AuthenticationFailed) as e2:
        device.public.verify(b"l", b"m", HybridSignature(sig.ed25519, other.mldsa))
    assert e2.value.detail == "ml-dsa signature"
    # A single-algorithm signature never passes where both are required.
    with pytest.raises(AuthenticationFailed):
        device.public.verify(b"l", b"m", HybridSignature(sig.ed25519, b""))
    with pytest.raises(AuthenticationFailed):
        device.public.verify(b"l", b"m", device.sign(b"l", b"m", Mode.CLASSICAL))
    # ... nor does a hybrid one where a single algorithm is expected (no mix-ups).
    with pytest.raises(AuthenticationFailed):
        device.public.verify(b"l", b"m", sig, Mode.PQC_ONLY)


def test_private_key_file_is_0600_and_round_trips(tmp_path, device) -> None:
    path = tmp_path / "id.key"
    device.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = HybridSigningKey.load(path)
    assert loaded.public == device.public
    with pytest.raises(KeyFileError, match="exists"):
        device.save(path)
    device.save(path, force=True)
    with pytest.raises(KeyFileError, match="wrong key kind"):
        HybridSigningKey.load(path, kind=KIND_ADMIN)


def test_loose_permissions_and_garbage_are_refused(tmp_path, device) -> None:
    path = tmp_path / "id.key"
    device.save(path, kind=KIND_IDENTITY)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="permissions"):
        HybridSigningKey.load(path)
    bad = tmp_path / "bad.key"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    with pytest.raises(KeyFileError):
        HybridSigningKey.load(bad)
    with pytest.raises(KeyFileError):
        HybridSigningKey.load(tmp_path / "missing")


def test_a_symlink_in_the_keys_place_is_refused_even_to_a_good_key(tmp_path, device) -> None:
    real = tmp_path / "real.key"
    device.save(real)
    link = tmp_path / "id.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        HybridSigningKey.load(link)
    assert HybridSigningKey.load(real).public == device.public


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_key_owned_by_another_user_is_refused(tmp_path, device) -> None:
    path = tmp_path / "id.key"
    device.save(path)
    os.chown(path, 4242, 4242)
    with pytest.raises(KeyFileError, match="owned by uid 4242"):
        HybridSigningKey.load(path)
    os.chown(path, 0, 0)
    assert HybridSigningKey.load(path).public == device.public


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700 | 0o007])
def test_any_group_or_other_permission_on_a_key_is_refused(tmp_path, device, mode) -> None:
    path = tmp_path / "id.key"
    device.save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="permissions too open"):
        HybridSigningKey.load(path)


def test_a_fifo_or_directory_in_the_keys_place_is_refused_without_hanging(tmp_path) -> None:
    fifo = tmp_path / "id.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_private_file(fifo)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_private_file(tmp_path)


def test_allow_list_file_is_refused_when_others_may_write_it_or_it_is_a_link(tmp_path) -> None:
    path = tmp_path / "allowed.txt"
    old_umask = os.umask(0o002)  # a umask that would make files group-writable
    try:
        save_allow_list(AllowList(((b"\x01" * 32, "laptop"),)), path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert load_allow_list(path).entries == ((b"\x01" * 32, "laptop"),)
    os.chmod(path, 0o664)
    with pytest.raises(KeyFileError, match="writable by group or others"):
        load_allow_list(path)
    os.chmod(path, 0o644)
    link = tmp_path / "link.txt"
    link.symlink_to(path)
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_allow_list(link)


def test_wipe_zeroes_seeds() -> None:
    key = HybridSigningKey.generate()
    key.wipe()
    assert key.encode_private(KIND_IDENTITY)[1:] == bytes(64)


def test_public_file_round_trip(tmp_path, device) -> None:
    save_public(device.public, tmp_path / "id.pub")
    assert load_public(tmp_path / "id.pub") == device.public
    (tmp_path / "x.pub").write_text("junk")
    with pytest.raises(KeyFileError):
        load_public(tmp_path / "x.pub")


def test_certificate_codec_round_trip(cert) -> None:
    assert DeviceCertificate.decode(cert.encode()) == cert


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(min_size=1, max_size=40),
    org=st.text(min_size=1, max_size=40),
    times=st.tuples(st.integers(0, 2**40), st.integers(1, 2**30)),
)
def test_certificate_fields_round_trip(device, admin, name, org, times) -> None:
    issued, life = times
    cert = admin.issue(device.public, name, org, issued, issued + life)
    back = DeviceCertificate.decode(cert.encode())
    assert back == cert
    assert Authorizer([admin.public]).authorize(device.public, back, issued).name == name


def test_authorizer_accepts_valid_certificate(device, admin, cert) -> None:
    auth = Authorizer([admin.public]).authorize(device.public, cert, NOW)
    assert (auth.method, auth.name, auth.organisation) == ("certificate", "laptop-1", "Acme")
    assert auth.device_id == device.node_id


@pytest.mark.parametrize(
    ("when", "detail"),
    [(NOW + 3600, "certificate expired"), (NOW - 10 - 301, "certificate not yet valid")],
)
def test_authorizer_refuses_outside_validity(device, admin, cert, when, detail) -> None:
    with pytest.raises(NotAuthorized) as exc:
        Authorizer([admin.public]).authorize(device.public, cert, when)
    assert exc.value.detail == detail
    assert str(exc.value) == "not authorized"


def test_authorizer_refuses_wrong_admin_wrong_key_tampered_and_missing(device, admin, cert) -> None:
    other_admin = AdminKey(HybridSigningKey.generate())
    with pytest.raises(NotAuthorized, match="not authorized"):
        Authorizer([other_admin.public]).authorize(device.public, cert, NOW)
    stranger = HybridSigningKey.generate()
    with pytest.raises(NotAuthorized):
        Authorizer([admin.public]).authorize(stranger.public, cert, NOW)
    import dataclasses

    longer = dataclasses.replace(cert, expires=cert.expires + 10**6)
    with pytest.raises(NotAuthorized) as exc:
        Authorizer([admin.public]).authorize(device.public, longer, NOW)
    assert exc.value.detail == "certificate signature invalid"
    with pytest.raises(NotAuthorized):
        Authorizer([admin.public]).authorize(device.public, None, NOW)


def test_revocation(device, admin, cert) -> None:
    rl = admin.revoke(None, cert.serial, "laptop stolen", NOW)
    assert RevocationList.decode(rl.encode()) == rl
    assert rl.entries[0].reason == "laptop stolen"
    authorizer = Authorizer([admin.public], revocations=[rl])
    with pytest.raises(NotAuthorized) as exc:
        authorizer.authorize(device.public, cert, NOW)
    assert exc.value.detail == "certificate revoked"
    # An older list never replaces a newer one.
    empty = admin.sign_list([], 0)
    authorizer.update_revocations(empty)
    with pytest.raises(NotAuthorized):
        authorizer.authorize(device.public, cert, NOW)
    # A list not signed by the admin is refused.
    forged = RevocationList(rl.issuer, 99, (), HybridSigningKey.generate().sign(b"x", b"y"))
    with pytest.raises(AuthenticationFailed):
        authorizer.update_revocations(forged)


def test_allow_list(device) -> None:
    allow = AllowList().add(device.node_id, "lab box")
    assert AllowList.parse(allow.format()) == allow
    auth = Authorizer(allow_list=allow).authorize(device.public, None, NOW)
    assert (auth.method, auth.name) == ("allow-list", "lab box")
    with pytest.raises(NotAuthorized):
        Authorizer(allow_list=allow).authorize(HybridSigningKey.generate().public, None, NOW)
    with pytest.raises(ValueError, match="line 2"):
        AllowList.parse("# comment\nzz name\n")


def test_issue_refuses_impossible_times(device, admin) -> None:
    for issued, expires in ((-1, 10), (10, 10), (10, 2**64)):
        with pytest.raises(ValueError):
            admin.issue(device.public, "n", "o", issued, expires)
    with pytest.raises(ValueError):
        admin.issue(device.public, "", "o", 1, 2)
    with pytest.raises(ValueError):
        admin.issue(device.public, "n" * 256, "o", 1, 2)


def test_authorizer_verifies_a_certificate_signature_once_but_rechecks_the_rest(
    device, admin, cert, monkeypatch
) -> None:
    import dataclasses

    authorizer = Authorizer([admin.public])
    calls = []
    real_verify = type(admin.public).verify

    def counting_verify(self, *args, **kwargs):
        calls.append(args[0])
        return real_verify(self, *args, **kwargs)

    monkeypatch.setattr(type(admin.public), "verify", counting_verify)
    authorizer.authorize(device.public, cert, NOW)
    authorizer.authorize(device.public, cert, NOW + 1)
    assert len(calls) == 1  # the second admission (a rekey) spends no signature check
    # what can change is checked every time: expiry and revocation
    with pytest.raises(NotAuthorized, match="not authorized"):
        authorizer.authorize(device.public, cert, cert.expires)
    authorizer.update_revocations(admin.revoke(None, cert.serial, "stolen", NOW))
    with pytest.raises(NotAuthorized) as exc:
        authorizer.authorize(device.public, cert, NOW + 2)
    assert exc.value.detail == "certificate revoked"
    # a certificate that differs in any byte (here: a tampered expiry) is verified anew
    longer = dataclasses.replace(cert, expires=cert.expires + 10**6)
    with pytest.raises(NotAuthorized) as exc:
        Authorizer([admin.public]).authorize(device.public, longer, NOW)
    assert exc.value.detail == "certificate signature invalid"
