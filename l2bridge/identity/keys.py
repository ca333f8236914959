"""Identities: hybrid signing keys, node ids, device certificates, revocation and allow-lists.

- ``HybridSigningKey``: an Ed25519 key and an ML-DSA-87 key (seed form), kept in
  one file with 0600 permissions.  Signatures carry both halves (per ``Mode``:
  hybrid needs both, pqc_only only ML-DSA, classical only Ed25519).
- ``HybridPublicKey`` and ``node_id(public)`` = SHA-256 of its canonical encoding
  (version byte, Ed25519 key, ML-DSA key; fixed sizes, so it is unambiguous).
- ``AdminKey`` issues ``DeviceCertificate`` s and signs ``RevocationList`` s.
- ``Authorizer`` decides whether a device may use an exit: allow-listed, or a
  certificate from a known admin key that verifies, is current and is not revoked.

Every message is signed under a label (``label || 0x00 || message``; ML-DSA also
gets a context string) so a signature made for one purpose cannot be replayed
as another.  Decoders raise ``MalformedMessage``; checks raise
``AuthenticationFailed`` / ``NotAuthorized`` with fixed messages.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from l2bridge import codec
from l2bridge.codec import Reader
from l2bridge.constants import (
    CERT_SERIAL_SIZE,
    CERT_VERSION,
    ED25519_PUBLIC_SIZE,
    ED25519_SEED_SIZE,
    ED25519_SIGNATURE_SIZE,
    MAX_LIST_ENTRIES,
    MAX_NAME_SIZE,
    MAX_REASON_SIZE,
    MAX_VERIFIED_CERTIFICATES,
    MLDSA_PUBLIC_SIZE,
    MLDSA_SEED_SIZE,
    MLDSA_SIGNATURE_SIZE,
    NODE_ID_SIZE,
    Mode,
)
from l2bridge.crypto.pq import Signer, default_backend
from l2bridge.crypto.secret import wipe
from l2bridge.errors import (
    AuthenticationFailed,
    CertificateRevoked,
    KeyFileError,
    MalformedMessage,
    NotAuthorized,
)

_PUBLIC_VERSION = 1
_MLDSA_CONTEXT = b"shadowmesh"
CERT_LABEL = b"device certificate"
REVOCATION_LABEL = b"revocation list"
KIND_IDENTITY = 1
KIND_ADMIN = 2
# A certificate issued slightly "in the future" by a skewed admin clock still counts.
CERT_ISSUE_SKEW_SECONDS = 300.0


def _labelled(label: bytes, message: bytes) -> bytes:
    return label + b"\x00" + message


@functools.lru_cache(maxsize=256)
def _ed25519_public(raw: bytes) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class HybridSignature:
    """Both halves of a hybrid signature; a half is ``b""`` when the mode omits it."""

    ed25519: bytes
    mldsa: bytes

    def encode(self) -> bytes:
        return codec.var16(self.ed25519) + codec.var16(self.mldsa)

    @classmethod
    def read(cls, r: Reader) -> HybridSignature:
        ed = r.var16(ED25519_SIGNATURE_SIZE)
        ml = r.var16(MLDSA_SIGNATURE_SIZE)
        if len(ed) not in (0, ED25519_SIGNATURE_SIZE) or len(ml) not in (0, MLDSA_SIGNATURE_SIZE):
            raise MalformedMessage("bad signature size")
        return cls(ed, ml)


@dataclass(frozen=True, slots=True)
class HybridPublicKey:
    ed25519: bytes
    mldsa: bytes

    def __post_init__(self) -> None:
        if len(self.ed25519) != ED25519_PUBLIC_SIZE or len(self.mldsa) != MLDSA_PUBLIC_SIZE:
            raise MalformedMessage("bad public key size")

    def encode(self) -> bytes:
        """Canonical encoding (the input of ``node_id``)."""
        return bytes((_PUBLIC_VERSION,)) + self.ed25519 + self.mldsa

    @classmethod
    def read(cls, r: Reader) -> HybridPublicKey:
        if r.u8() != _PUBLIC_VERSION:
            raise MalformedMessage("unknown public key version")
        return cls(r.take(ED25519_PUBLIC_SIZE), r.take(MLDSA_PUBLIC_SIZE))

    @classmethod
    def decode(cls, data: bytes) -> HybridPublicKey:
        r = Reader(data)
        key = cls.read(r)
        r.end()
        return key

    @property
    def node_id(self) -> bytes:
        return node_id(self)

    def verify(
        self, label: bytes, message: bytes, signature: HybridSignature, mode: Mode = Mode.HYBRID
    ) -> None:
        """Check every half ``mode`` requires; raise ``AuthenticationFailed`` otherwise.

        A half the mode does not use must be absent, so a classical signature
        can never be passed off where a hybrid one is required.
        """
        signed = _labelled(label, message)
        if mode.uses_classical:
            try:
                _ed25519_public(self.ed25519).verify(signature.ed25519, signed)
            except (InvalidSignature, ValueError):
                raise AuthenticationFailed("ed25519 signature") from None
        elif signature.ed25519:
            raise AuthenticationFailed("unexpected ed25519 half")
        if mode.uses_pq:
            if not default_backend().sig_verify(
                self.mldsa, signature.mldsa, signed, _MLDSA_CONTEXT
            ):
                raise AuthenticationFailed("ml-dsa signature")
        elif signature.mldsa:
            raise AuthenticationFailed("unexpected ml-dsa half")


def node_id(public: HybridPublicKey) -> bytes:
    """SHA-256 over the canonical encoding of all the public keys (the registry's nodeId)."""
    return hashlib.sha256(public.encode()).digest()


class HybridSigningKey:
    """Ed25519 + ML-DSA-87 private keys.  Seeds live in bytearrays; ``wipe()`` zeroes them."""

    __slots__ = ("_ed", "_ed_seed", "_ml", "_ml_seed", "public")

    def __init__(self, ed25519_seed: bytes | bytearray, mldsa_seed: bytes | bytearray) -> None:
        if len(ed25519_seed) != ED25519_SEED_SIZE or len(mldsa_seed) != MLDSA_SEED_SIZE:
            raise KeyFileError("bad private key size")
        self._ed_seed = bytearray(ed25519_seed)
        self._ml_seed = bytearray(mldsa_seed)
        self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(self._ed_seed))
        self._ml: Signer = default_backend().sig_load_signer(bytes(self._ml_seed))
        self.public = HybridPublicKey(
            self._ed.public_key().public_bytes_raw(), self._ml.public_bytes
        )

    @classmethod
    def generate(cls) -> HybridSigningKey:
        return cls(secrets.token_bytes(ED25519_SEED_SIZE), secrets.token_bytes(MLDSA_SEED_SIZE))

    @property
    def node_id(self) -> bytes:
        return node_id(self.public)

    def sign(self, label: bytes, message: bytes, mode: Mode = Mode.HYBRID) -> HybridSignature:
        signed = _labelled(label, message)
        ed = self._ed.sign(signed) if mode.uses_classical else b""
        ml = self._ml.sign(signed, _MLDSA_CONTEXT) if mode.uses_pq else b""
        return HybridSignature(ed, ml)

    def wipe(self) -> None:
        """Zero our copies of the seeds (the library's own copies go with the objects)."""
        wipe(self._ed_seed)
        wipe(self._ml_seed)

    def encode_private(self, kind: int) -> bytes:
        return bytes((kind,)) + bytes(self._ed_seed) + bytes(self._ml_seed)

    @classmethod
    def decode_private(cls, data: bytes) -> tuple[int, HybridSigningKey]:
        r = Reader(data)
        kind = r.u8()
        key = cls(r.take(ED25519_SEED_SIZE), r.take(MLDSA_SEED_SIZE))
        r.end()
        if kind not in (KIND_IDENTITY, KIND_ADMIN):
            raise KeyFileError("unknown key kind")
        return kind, key

    def save(
        self, path: str | os.PathLike[str], kind: int = KIND_IDENTITY, force: bool = False
    ) -> None:
        """Write the private key with mode 0600 (created that way, never chmod-ed after)."""
        write_private_file(path, codec.armor("PRIVATE KEY", self.encode_private(kind)), force)

    @classmethod
    def load(cls, path: str | os.PathLike[str], kind: int = KIND_IDENTITY) -> HybridSigningKey:
        """Read a private key file; refuse one readable by group or others."""
        text = read_private_file(path)
        try:
            got, key = cls.decode_private(codec.dearmor("PRIVATE KEY", text))
        except MalformedMessage as exc:
            raise KeyFileError(f"{path}: not a private key file ({exc.detail})") from None
        if got != kind:
            raise KeyFileError(f"{path}: wrong key kind")
        return key


def _replace_file(target: Path, text: str, mode: int, flags: int, encoding: str) -> None:
    """Write ``text`` to a temporary file beside ``target`` with exactly ``mode`` (whatever
    the umask), then rename it over ``target`` (readers see the old or the new file)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | flags, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private_file(path: str | os.PathLike[str], text: str, force: bool = False) -> None:
    target = Path(path)
    if target.exists() and not force:
        raise KeyFileError(f"{target}: exists (use --force to replace)")
    _replace_file(target, text, 0o600, os.O_EXCL, "ascii")


MAX_KEY_FILE_SIZE = 1 << 20  # far above any key, list or allow-list file


def _unsafe_directory(st: os.stat_result) -> str | None:
    """Why another user could put a file of theirs in place of an entry of this directory
    (None: nobody but this user and root can)."""
    if st.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {st.st_uid}, not by this user or root"
    # A sticky directory (/tmp) lets others add entries but not rename or remove ours.
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return "writable by group or others"
    return None


def check_directories(path: str | os.PathLike[str]) -> None:
    """Refuse (``KeyFileError``) a path through a directory that another user could change,
    as OpenSSH's StrictModes does: every directory from the root down, along the path as
    written and along the path with its symbolic links resolved, must be owned by this user
    or root and not writable by group or others (unless sticky, as /tmp is). Then nobody
    else can swap the file, or a directory or link on the way to it, between any check
    and the read."""
    written = Path(os.path.abspath(path))
    seen: set[Path] = set()
    for walk in (written, Path(os.path.realpath(written))):
        for directory in reversed(walk.parents):
            if directory in seen:
                continue
            seen.add(directory)
            try:
                st = os.stat(directory)
            except OSError as exc:
                raise KeyFileError(f"{path}: {directory}: {exc.strerror}") from None
            reason = _unsafe_directory(st)
            if reason is not None:
                raise KeyFileError(
                    f"{path}: directory {directory} is {reason}, so another user could "
                    "swap the file (fix its owner or mode)"
                )


def read_checked_file(
    path: str | os.PathLike[str], *, private: bool, group_read: bool = False
) -> bytes:
    """Read a file an attacker must not be able to swap or change, checking what was opened.

    The file is opened once, with ``O_NOFOLLOW`` (a symbolic link as the last component is
    refused, so a link planted in the key's place cannot point us at another file) and
    ``O_NONBLOCK`` (a FIFO cannot hang us), and the checks run on that open file
    (``fstat``), not on the path, so nothing can be switched between check and read. It
    must be a regular file owned by this user or root and no larger than
    ``MAX_KEY_FILE_SIZE``; a ``private`` file (keys, master keys, credentials) must have no
    permission for group or others (0600), any other (an allow-list) no write permission for them.
    ``group_read`` lets a private file be readable by its group (Debian's ``ssl-cert``
    convention for TLS keys). Every directory on the way must be safe too
    (``check_directories``).
    Raises ``KeyFileError`` naming the file and the reason.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(f"{path}: is a symbolic link (refused)") from None
        raise KeyFileError(f"{path}: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise KeyFileError(f"{path}: owned by uid {st.st_uid}, not by this user or root")
        allowed = stat.S_IRGRP if group_read else 0
        if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~allowed:
            must = "0640 or 0600" if group_read else "0600"
            raise KeyFileError(f"{path}: permissions too open (must be {must})")
        if not private and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KeyFileError(f"{path}: writable by group or others")
        if st.st_size > MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_SIZE} bytes")
        check_directories(path)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > MAX_KEY_FILE_SIZE:
                raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_SIZE} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)


def read_private_file(path: str | os.PathLike[str]) -> str:
    """A private key, master key or credential file's text (``read_checked_file``: 0600)."""
    try:
        return read_checked_file(path, private=True).decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not ASCII text") from None


def write_public_file(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically with a 0644 file: never group- or other-writable,
    whatever the umask (``read_checked_file`` refuses such a file)."""
    _replace_file(Path(path), text, 0o644, os.O_TRUNC, "utf-8")


def save_public(public: HybridPublicKey, path: str | os.PathLike[str]) -> None:
    write_public_file(path, codec.armor("PUBLIC KEY", public.encode()))


def load_public(path: str | os.PathLike[str]) -> HybridPublicKey:
    """A public key file (an admin key, a pinned exit): whoever could replace it could admit
    anyone or pose as the exit, so it is read as a key is (``read_checked_file``), only
    readable by all."""
    text = read_checked_file(path, private=False)
    try:
        return HybridPublicKey.decode(codec.dearmor("PUBLIC KEY", text.decode("ascii")))
    except (UnicodeDecodeError, MalformedMessage):
        raise KeyFileError(f"{path}: not a public key file") from None


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    serial: bytes
    device: HybridPublicKey
    name: str
    organisation: str
    issued: int  # unix seconds
    expires: int
    issuer: bytes  # node_id of the admin public key
    signature: HybridSignature

    def signed_part(self) -> bytes:
        return b"".join(
            [
                b"SMCERT",
                codec.u8(CERT_VERSION),
                self.serial,
                self.device.encode(),
                codec.text(self.name),
                codec.text(self.organisation),
                codec.u64(self.issued),
                codec.u64(self.expires),
                self.issuer,
            ]
        )

    def encode(self) -> bytes:
        return self.signed_part() + self.signature.encode()

    @classmethod
    def read(cls, r: Reader) -> DeviceCertificate:
        if r.take(6) != b"SMCERT" or r.u8() != CERT_VERSION:
            raise MalformedMessage("not a certificate")
        return cls(
            serial=r.take(CERT_SERIAL_SIZE),
            device=HybridPublicKey.read(r),
            name=r.text(MAX_NAME_SIZE),
            organisation=r.text(MAX_NAME_SIZE),
            issued=r.u64(),
            expires=r.u64(),
            issuer=r.take(NODE_ID_SIZE),
            signature=HybridSignature.read(r),
        )

    @classmethod
    def decode(cls, data: bytes) -> DeviceCertificate:
        r = Reader(data)
        cert = cls.read(r)
        r.end()
        return cert


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: bytes
    revoked_at: int
    reason: str


@dataclass(frozen=True, slots=True)
class RevocationList:
    """Revoked certificate serials, signed by the admin key; ``sequence`` only grows."""

    issuer: bytes
    sequence: int
    entries: tuple[Revocation, ...]
    signature: HybridSignature

    def signed_part(self) -> bytes:
        parts = [b"SMCRL", self.issuer, codec.u64(self.sequence), codec.u32(len(self.entries))]
        for e in self.entries:
            parts += [e.serial, codec.u64(e.revoked_at), codec.text(e.reason)]
        return b"".join(parts)

    def encode(self) -> bytes:
        return self.signed_part() + self.signature.encode()

    @classmethod
    def decode(cls, data: bytes) -> RevocationList:
        r = Reader(data)
        if r.take(5) != b"SMCRL":
            raise MalformedMessage("not a revocation list")
        issuer, sequence, count = r.take(NODE_ID_SIZE), r.u64(), r.u32()
        if count > MAX_LIST_ENTRIES:
            raise MalformedMessage("too many entries")
        entries = tuple(
            Revocation(r.take(CERT_SERIAL_SIZE), r.u64(), r.text(MAX_REASON_SIZE))
            for _ in range(count)
        )
        signature = HybridSignature.read(r)
        r.end()
        return cls(issuer, sequence, entries, signature)

    def revoked(self) -> frozenset[bytes]:
        return frozenset(e.serial for e in self.entries)


class AdminKey:
    """An organisation's admin key: issues certificates and signs revocation lists."""

    __slots__ = ("key",)

    def __init__(self, key: HybridSigningKey) -> None:
        self.key = key

    @property
    def public(self) -> HybridPublicKey:
        return self.key.public

    def issue(
        self, device: HybridPublicKey, name: str, organisation: str, issued: int, expires: int
    ) -> DeviceCertificate:
        if not 0 <= issued < expires < 2**64:
            raise ValueError("need 0 <= issued < expires < 2**64 (unix seconds)")
        for value in (name, organisation):
            if not value or len(value.encode("utf-8")) > MAX_NAME_SIZE:
                raise ValueError(f"name/organisation must be 1..{MAX_NAME_SIZE} bytes")
        unsigned = DeviceCertificate(
            secrets.token_bytes(CERT_SERIAL_SIZE), device, name, organisation, issued, expires,
            self.key.node_id, HybridSignature(b"", b""),
        )  # fmt: skip
        signature = self.key.sign(CERT_LABEL, unsigned.signed_part())
        return dataclasses.replace(unsigned, signature=signature)

    def revoke(
        self, current: RevocationList | None, serial: bytes, reason: str, now: int
    ) -> RevocationList:
        """A new list with ``serial`` added and the sequence number bumped."""
        if len(serial) != CERT_SERIAL_SIZE:
            raise ValueError("bad certificate serial")
        if len(reason.encode("utf-8")) > MAX_REASON_SIZE:
            raise ValueError(f"reason longer than {MAX_REASON_SIZE} bytes")
        entries = current.entries if current else ()
        if serial not in {e.serial for e in entries}:
            entries = (*entries, Revocation(serial, now, reason))
        return self.sign_list(entries, (current.sequence + 1) if current else 1)

    def sign_list(self, entries: Iterable[Revocation], sequence: int) -> RevocationList:
        unsigned = RevocationList(
            self.key.node_id, sequence, tuple(entries), HybridSignature(b"", b"")
        )
        signature = self.key.sign(REVOCATION_LABEL, unsigned.signed_part())
        return RevocationList(unsigned.issuer, sequence, unsigned.entries, signature)


@dataclass(frozen=True, slots=True)
class AllowList:
    """Device node ids an exit accepts without a certificate (``hex-id name`` per line)."""

    entries: tuple[tuple[bytes, str], ...] = ()

    def ids(self) -> frozenset[bytes]:
        return frozenset(i for i, _ in self.entries)

    def add(self, device_id: bytes, name: str) -> AllowList:
        if device_id in self.ids():
            return self
        return AllowList((*self.entries, (device_id, name)))

    def format(self) -> str:
        return "".join(f"{i.hex()} {n}\n" for i, n in self.entries)

    @classmethod
    def parse(cls, text: str) -> AllowList:
        entries: list[tuple[bytes, str]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            hex_id, _, name = line.partition(" ")
            try:
                device_id = bytes.fromhex(hex_id)
            except ValueError:
                raise ValueError(f"allow-list line {number}: not a hex node id") from None
            if len(device_id) != NODE_ID_SIZE:
                raise ValueError(f"allow-list line {number}: node id must be 32 bytes")
            entries.append((device_id, name.strip()))
        return cls(tuple(entries))


@dataclass(frozen=True, slots=True)
class Authorization:
    device_id: bytes
    name: str
    organisation: str
    method: str  # "allow-list" or "certificate"
    expires: int | None


class Authorizer:
    """The exit's admission decision: allow-list, or a valid, current, unrevoked certificate."""

    def __init__(
        self,
        admin_keys: Sequence[HybridPublicKey] = (),
        revocations: Sequence[RevocationList] = (),
        allow_list: AllowList | None = None,
    ) -> None:
        self._admins = {node_id(k): k for k in admin_keys}
        self._allow = allow_list or AllowList()
        self._lists: dict[bytes, RevocationList] = {}
        self._revoked: frozenset[bytes] = frozenset()
        # Certificates whose admin signature already verified (SHA-256 of the whole
        # encoding). A certificate is immutable, so a session's re-authorisation at every
        # rekey checks expiry, revocation and the allow-list without spending another
        # ML-DSA verification; bounded, and cleared rather than grown.
        self._verified: set[bytes] = set()
        for rl in revocations:
            self.update_revocations(rl)

    def update_revocations(self, rl: RevocationList) -> None:
        """Install a newer list; raises ``AuthenticationFailed`` if it is not the admin's."""
        admin = self._admins.get(rl.issuer)
        if admin is None:
            raise AuthenticationFailed("revocation list from an unknown admin")
        admin.verify(REVOCATION_LABEL, rl.signed_part(), rl.signature)
        old = self._lists.get(rl.issuer)
        if old is None or rl.sequence > old.sequence:
            self._lists[rl.issuer] = rl
            self._revoked = frozenset().union(*(r.revoked() for r in self._lists.values()))

    def revoked_serials(self) -> frozenset[bytes]:
        """Every certificate serial on the installed revocation lists (the gate refuses
        credentials issued against them before any handshake work)."""
        return self._revoked

    def update_allow_list(self, allow: AllowList) -> None:
        """Replace the allow-list (a reloaded file); later decisions use only the new one."""
        self._allow = allow

    def authorize(
        self, device: HybridPublicKey, certificate: DeviceCertificate | None, now: float
    ) -> Authorization:
        """Return who the device is, or raise ``NotAuthorized`` (reason in ``detail``)."""
        device_id = node_id(device)
        for allowed_id, name in self._allow.entries:
            if allowed_id == device_id:
                return Authorization(device_id, name, "", "allow-list", None)
        if certificate is None:
            raise NotAuthorized("no certificate and not on the allow-list")
        if certificate.device != device:
            raise NotAuthorized("certificate is for another key")
        admin = self._admins.get(certificate.issuer)
        if admin is None:
            raise NotAuthorized("certificate from an unknown admin")
        digest = hashlib.sha256(certificate.encode()).digest()
        if digest not in self._verified:
            try:
                admin.verify(CERT_LABEL, certificate.signed_part(), certificate.signature)
            except AuthenticationFailed:
                raise NotAuthorized("certificate signature invalid") from None
            if len(self._verified) >= MAX_VERIFIED_CERTIFICATES:
                self._verified.clear()
            self._verified.add(digest)
        if now + CERT_ISSUE_SKEW_SECONDS < certificate.issued:
            raise NotAuthorized("certificate not yet valid")
        if now >= certificate.expires:
            raise NotAuthorized("certificate expired")
        rl = self._lists.get(certificate.issuer)
        if rl is not None and certificate.serial in rl.revoked():
            raise CertificateRevoked("certificate revoked")
        return Authorization(
            device_id,
            certificate.name,
            certificate.organisation,
            "certificate",
            certificate.expires,
        )
