"""Key files behind directories another user could change, and the exit's TLS key.

``read_checked_file`` refuses a key whose path goes through a directory another user could
write (they could rename the key away and put theirs in its place), as OpenSSH's StrictModes
does; a sticky directory such as /tmp is safe (others cannot rename what is ours). The TLS
key is read the same way (group-readable allowed, links followed for certbot's layout) and
OpenSSL is handed the bytes that were checked.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from l2bridge.commands.initfiles import write_private_tls
from l2bridge.constants import CERT_SERIAL_SIZE
from l2bridge.errors import KeyFileError
from l2bridge.identity.keyfiles import load_revocations, save_revocations
from l2bridge.identity.keys import (
    AdminKey,
    HybridSigningKey,
    RevocationList,
    check_directories,
    load_public,
    read_private_file,
    save_public,
)
from l2bridge.transport.tls import TlsError, server_context

NOW = 1_700_000_000


@pytest.fixture
def home(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    return d


def test_a_key_behind_a_directory_others_may_write_is_refused(home: Path) -> None:
    key = HybridSigningKey.generate()
    shared = home / "shared"
    shared.mkdir()
    key.save(shared / "id.key")
    assert HybridSigningKey.load(shared / "id.key").public == key.public
    for mode in (0o775, 0o757):
        os.chmod(shared, mode)
        with pytest.raises(KeyFileError, match=r"directory .*shared is writable by group or"):
            HybridSigningKey.load(shared / "id.key")
    # A directory higher up counts as much as the key's own.
    os.chmod(shared, 0o755)
    os.chmod(home, 0o777)
    with pytest.raises(KeyFileError, match=r"directory .*etc is writable"):
        read_private_file(shared / "id.key")
    # Sticky, as /tmp: others may add entries but not move ours, so it is safe.
    os.chmod(home, 0o1777)
    assert HybridSigningKey.load(shared / "id.key").public == key.public


def test_a_relative_path_is_checked_from_the_root(home: Path, monkeypatch) -> None:
    (home / "k").write_text("x")
    monkeypatch.chdir(home)
    check_directories("k")
    os.chmod(home, 0o777)
    with pytest.raises(KeyFileError, match="writable by group or others"):
        check_directories("k")


def test_a_link_on_the_way_is_checked_where_it_points_too(home: Path) -> None:
    """A directory link from a safe place into an unsafe one: the resolved path counts."""
    unsafe = home / "drop"
    unsafe.mkdir()
    (unsafe / "keys").mkdir()
    (home / "keys").symlink_to(unsafe / "keys")
    check_directories(home / "keys" / "id.key")
    os.chmod(unsafe, 0o777)
    with pytest.raises(KeyFileError, match=r"directory .*drop is writable"):
        check_directories(home / "keys" / "id.key")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_a_directory_owned_by_another_user_is_refused(home: Path) -> None:
    theirs = home / "theirs"
    theirs.mkdir()
    os.chown(theirs, 4242, 4242)
    with pytest.raises(KeyFileError, match="owned by uid 4242"):
        check_directories(theirs / "id.key")


def test_public_keys_and_revocation_lists_are_read_as_keys_are(home: Path) -> None:
    """Whoever could replace an admin's public key could admit anyone; whoever could put an
    older revocation list back would admit the devices revoked since."""
    admin = AdminKey(HybridSigningKey.generate())
    save_public(admin.public, home / "admin.pub")
    save_revocations(admin.revoke(None, bytes(CERT_SERIAL_SIZE), "lost", NOW), home / "revoked.crl")
    assert load_public(home / "admin.pub") == admin.public
    assert isinstance(load_revocations(home / "revoked.crl"), RevocationList)
    for name, load in (("admin.pub", load_public), ("revoked.crl", load_revocations)):
        os.chmod(home / name, 0o666)
        with pytest.raises(KeyFileError, match="writable by group or others"):
            load(home / name)
        os.chmod(home / name, 0o644)
        (home / f"link-{name}").symlink_to(home / name)
        with pytest.raises(KeyFileError, match="symbolic link"):
            load(home / f"link-{name}")
    os.chmod(home, 0o777)
    with pytest.raises(KeyFileError, match="writable by group or others"):
        load_public(home / "admin.pub")


@pytest.fixture
def pki(home: Path) -> tuple[Path, Path]:
    _ca, cert, key = write_private_tls(home, "exit.example")
    return cert, key


def test_the_tls_key_is_read_checked_and_served_from_those_bytes(pki: tuple[Path, Path]) -> None:
    cert, key = pki
    assert isinstance(server_context(cert, key), ssl.SSLContext)
    os.chmod(key, 0o640)  # Debian's ssl-cert group convention
    server_context(cert, key)
    for mode in (0o644, 0o660, 0o604):
        os.chmod(key, mode)
        with pytest.raises(TlsError, match="permissions too open"):
            server_context(cert, key)


def test_the_tls_key_may_be_a_link_as_certbot_makes_them(home: Path, pki) -> None:
    cert, key = pki
    archive = home / "archive"
    archive.mkdir(mode=0o700)
    os.rename(key, archive / "privkey1.pem")
    key.symlink_to(Path("archive") / "privkey1.pem")
    server_context(cert, key)
    os.chmod(archive, 0o777)  # the target's directory is checked, not only the link's
    with pytest.raises(TlsError, match=r"directory .*archive is writable"):
        server_context(cert, key)


def test_a_bad_tls_key_names_the_file_not_its_contents(home: Path, pki) -> None:
    cert, _key = pki
    secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAAS"
    fd = os.open(home / "garbage.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n".encode())
    os.close(fd)
    with pytest.raises(TlsError) as info:
        server_context(cert, home / "garbage.pem")
    assert "garbage.pem" in str(info.value) and secret not in str(info.value)
    with pytest.raises(TlsError, match="No such file"):
        server_context(cert, home / "missing.pem")


def test_public_files_are_written_so_that_they_load_whatever_the_umask(home: Path) -> None:
    admin = AdminKey(HybridSigningKey.generate())
    old = os.umask(0o002)  # a desktop user's umask: files group-writable by default
    try:
        save_public(admin.public, home / "admin.pub")
        save_revocations(admin.revoke(None, bytes(CERT_SERIAL_SIZE), "lost", NOW), home / "r.crl")
    finally:
        os.umask(old)
    for name in ("admin.pub", "r.crl"):
        assert (home / name).stat().st_mode & 0o777 == 0o644
    assert load_public(home / "admin.pub") == admin.public
    load_revocations(home / "r.crl")
