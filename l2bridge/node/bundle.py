"""The join bundle: what a client needs to reach one exit, in one file.

``shadowmesh init exit --client NAME`` (or ``init join``) writes one; ``shadowmesh init
client --join FILE`` reads it and writes the client's files and config. It is a JSON
document (mode 0600: it holds the device's credential for that exit, and the device's
private key when the exit made the device's identity)::

    {"shadowmesh_join": 2, "name": "lan-a", "url": "wss://192.0.2.1:8443/ws",
     "exit_node_id": "<64 hex>", "mtu": 1500,
     "credential": {"exit_node_id": "<64 hex>", "handle": "<base64url>",
                    "secret": "<base64url>", "hide": "<base64url>"},
     "tls_ca": "<PEM>" | null, "certificate": "<armored device certificate>",
     "identity": "<armored private key>" | null}

``parse`` checks every field (types, the certificate and key encodings, the URL) and
raises BundleError naming the field; it never returns a half-valid bundle.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from l2bridge import codec
from l2bridge.errors import KeyFileError, LocalError, MalformedMessage
from l2bridge.identity.keyfiles import CERT_LABEL
from l2bridge.identity.keys import KIND_IDENTITY, DeviceCertificate, HybridSigningKey
from l2bridge.transport.errors import TokenError
from l2bridge.transport.token import Credential

BUNDLE_VERSION = 2  # 1 carried the network-wide access key, no longer accepted
MAX_BUNDLE_BYTES = 256 * 1024
_PEM_CERT = re.compile(
    r"(-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?)+"
)


class BundleError(LocalError):
    """A join bundle is unreadable or one of its fields is invalid (the message names it)."""


@dataclass(frozen=True, slots=True)
class JoinBundle:
    name: str
    url: str
    exit_node_id: bytes
    credential: Credential  # this device's, for this exit only
    mtu: int
    certificate: str  # armored DeviceCertificate
    tls_ca: str | None = None  # PEM: the CA that signed the exit's TLS certificate
    identity: str | None = None  # armored private key, when the exit made the identity

    def to_json(self) -> str:
        doc = {
            "shadowmesh_join": BUNDLE_VERSION,
            "name": self.name,
            "url": self.url,
            "exit_node_id": self.exit_node_id.hex(),
            "credential": self.credential.to_json(),
            "mtu": self.mtu,
            "tls_ca": self.tls_ca,
            "certificate": self.certificate,
            "identity": self.identity,
        }
        return json.dumps(doc, indent=2) + "\n"

    def device_certificate(self) -> DeviceCertificate:
        return DeviceCertificate.decode(codec.dearmor(CERT_LABEL, self.certificate))


def _field(doc: dict[str, object], key: str, kind: type) -> object:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"join bundle: {key}: missing or not a {kind.__name__}")
    return value


def parse(text: str) -> JoinBundle:
    """Validate a bundle's text; raises BundleError naming the first bad field."""
    if len(text) > MAX_BUNDLE_BYTES:
        raise BundleError("join bundle: larger than 256 KiB")
    try:
        doc = json.loads(text)
    except ValueError:
        raise BundleError("join bundle: not JSON (copy the whole file)") from None
    if not isinstance(doc, dict) or doc.get("shadowmesh_join") != BUNDLE_VERSION:
        raise BundleError(
            f"join bundle: not a version {BUNDLE_VERSION} ShadowMesh join bundle (bundles "
            "with a network-wide access key are no longer accepted: ask for a new one)"
        )
    name = str(_field(doc, "name", str))
    url = str(_field(doc, "url", str))
    if not re.fullmatch(r"wss?://[^\s/]+/\S*", url):
        raise BundleError(f"join bundle: url: expected ws:// or wss://HOST:PORT/PATH, got {url!r}")
    node_hex = str(_field(doc, "exit_node_id", str))
    if not re.fullmatch(r"[0-9a-f]{64}", node_hex):
        raise BundleError("join bundle: exit_node_id: expected 64 hex digits")
    try:
        credential = Credential.from_json(doc.get("credential"))
    except TokenError as exc:
        raise BundleError(f"join bundle: {exc}") from None
    if credential.exit_node_id.hex() != node_hex:
        raise BundleError("join bundle: credential: for another exit than exit_node_id")
    mtu = _field(doc, "mtu", int)
    assert isinstance(mtu, int)
    if not 576 <= mtu <= 65535:
        raise BundleError(f"join bundle: mtu: must be from 576 to 65535, got {mtu}")
    certificate = str(_field(doc, "certificate", str))
    tls_ca = doc.get("tls_ca")
    if tls_ca is not None and not (isinstance(tls_ca, str) and _PEM_CERT.fullmatch(tls_ca)):
        raise BundleError("join bundle: tls_ca: not PEM certificates")
    identity = doc.get("identity")
    if identity is not None and not isinstance(identity, str):
        raise BundleError("join bundle: identity: not an armored private key")
    bundle = JoinBundle(
        name, url, bytes.fromhex(node_hex), credential, mtu, certificate, tls_ca, identity
    )
    try:
        cert = bundle.device_certificate()
    except MalformedMessage:
        raise BundleError("join bundle: certificate: not a device certificate") from None
    if identity is not None:
        key = identity_key(identity)
        try:
            if key.public != cert.device:
                raise BundleError("join bundle: identity: does not match the certificate")
        finally:
            key.wipe()
    return bundle


def identity_key(text: str) -> HybridSigningKey:
    """The private key armored in a bundle's ``identity`` field."""
    try:
        kind, key = HybridSigningKey.decode_private(codec.dearmor("PRIVATE KEY", text))
    except (MalformedMessage, KeyFileError):
        raise BundleError("join bundle: identity: not an armored private key") from None
    if kind != KIND_IDENTITY:
        key.wipe()
        raise BundleError("join bundle: identity: not a device identity")
    return key
