"""Files for certificates, revocation lists and allow-lists, and an Authorizer built from them.

Private and public key files live in identity.py (``HybridSigningKey.save/load``,
``save_public``/``load_public``).  Every loader raises ``KeyFileError`` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from l2bridge import codec
from l2bridge.errors import AuthenticationFailed, KeyFileError, MalformedMessage
from l2bridge.identity.keys import (
    AllowList,
    Authorizer,
    DeviceCertificate,
    RevocationList,
    load_public,
    read_checked_file,
    write_public_file,
)

CERT_LABEL = "DEVICE CERTIFICATE"
CRL_LABEL = "REVOCATION LIST"
PathLike = str | os.PathLike[str]


def _read(path: PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: {_why(exc)}") from None


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or "not a text file"


def save_certificate(cert: DeviceCertificate, path: PathLike) -> None:
    write_public_file(path, codec.armor(CERT_LABEL, cert.encode()))


def load_certificate(path: PathLike) -> DeviceCertificate:
    try:
        return DeviceCertificate.decode(codec.dearmor(CERT_LABEL, _read(path)))
    except MalformedMessage as exc:
        raise KeyFileError(f"{path}: not a certificate ({exc.detail})") from None


def save_revocations(rl: RevocationList, path: PathLike) -> None:
    write_public_file(path, codec.armor(CRL_LABEL, rl.encode()))


def load_revocations(path: PathLike) -> RevocationList:
    """Read as a key is (``read_checked_file``): whoever could put an older list, validly
    signed, in its place would admit the devices revoked since."""
    try:
        text = read_checked_file(path, private=False).decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a text file") from None
    try:
        return RevocationList.decode(codec.dearmor(CRL_LABEL, text))
    except MalformedMessage as exc:
        raise KeyFileError(f"{path}: not a revocation list ({exc.detail})") from None


def save_allow_list(allow: AllowList, path: PathLike) -> None:
    header = "# shadowmesh allow-list: <device node id (hex)> <name>\n"
    write_public_file(path, header + allow.format())


def load_allow_list(path: PathLike) -> AllowList:
    """The allow-list admits devices without a certificate, so whoever may write it may
    admit anyone: read like a key file (no symlink, owned by this user or root) and refused
    when group or others may write it."""
    try:
        return AllowList.parse(read_checked_file(path, private=False).decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise KeyFileError(f"{path}: {exc}") from None


def load_authorizer(
    admin_public_files: Sequence[PathLike] = (),
    revocation_files: Sequence[PathLike] = (),
    allow_list_file: PathLike | None = None,
) -> Authorizer:
    """The exit's Authorizer from its files; a list not signed by a listed admin is an error."""
    admins = [load_public(p) for p in admin_public_files]
    allow = load_allow_list(allow_list_file) if allow_list_file is not None else None
    authorizer = Authorizer(admins, allow_list=allow)
    for path in revocation_files:
        try:
            authorizer.update_revocations(load_revocations(path))
        except AuthenticationFailed as exc:
            raise KeyFileError(f"{path}: {exc.detail}") from None
    return authorizer
