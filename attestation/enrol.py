"""Enrolment: bind an AK to a TPM whose EK certificate chains to a trusted maker CA.

Two sides. The node (TPM side) creates the AK and sends an ``EnrolmentRequest`` (EK public,
EK certificate, AK public); the verifier checks the certificate chain and that the
certificate's key is the EK, checks the AK is a restricted P-256 signing key, and sends a
``Challenge`` made with MakeCredential (in software, to the EK, bound to the AK's name).
Only the TPM holding both that EK and that AK can recover the secret with
ActivateCredential; a matching answer turns the request into an ``Enrolment``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
from tpm2_pytss.utils import make_credential

from attestation import constants as c
from attestation import tpms
from attestation.errors import EnrolmentError, EvidenceError, TpmError
from attestation.tpm import Tpm

_EK_CERTIFICATE_EKU = x509.ObjectIdentifier("2.23.133.8.1")  # tcg-kp-EKCertificate


@dataclass(frozen=True, slots=True)
class AkKey:
    """The AK as the TPM wrapped it: useless outside the TPM that created it."""

    private: bytes  # TPM2B_PRIVATE
    public: bytes  # TPM2B_PUBLIC

    @property
    def tpmt_public(self) -> bytes:
        return self.public[2:]

    def save(self, path: Path) -> None:
        doc = {"private": self.private.hex(), "public": self.public.hex()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)

    @classmethod
    def load(cls, path: Path) -> AkKey:
        try:
            doc = json.loads(path.read_text())
            return cls(bytes.fromhex(doc["private"]), bytes.fromhex(doc["public"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EnrolmentError(f"cannot read AK key file {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class EnrolmentRequest:
    ek_public: bytes  # TPM2B_PUBLIC
    ek_certificate: bytes  # DER
    ak_public: bytes  # TPMT_PUBLIC


@dataclass(frozen=True, slots=True)
class Challenge:
    credential_blob: bytes  # TPM2B_ID_OBJECT
    secret: bytes  # TPM2B_ENCRYPTED_SECRET


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What a verifier keeps about an enrolled node's TPM."""

    ak_public: bytes  # TPMT_PUBLIC
    ek_certificate_sha256: bytes

    def dump(self) -> str:
        doc = {
            "ak_public": self.ak_public.hex(),
            "ek_certificate_sha256": self.ek_certificate_sha256.hex(),
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str) -> Enrolment:
        try:
            doc = json.loads(text)
            out = cls(bytes.fromhex(doc["ak_public"]), bytes.fromhex(doc["ek_certificate_sha256"]))
            tpms.parse_public(out.ak_public)
        except (ValueError, KeyError, TypeError, EvidenceError) as exc:
            raise EnrolmentError(f"malformed enrolment record: {exc}") from None
        return out


# --- node (TPM) side ---


def create_ak(tpm: Tpm) -> AkKey:
    private, public = tpm.create_ak()
    return AkKey(private, public)


def request(tpm: Tpm, ak: AkKey) -> EnrolmentRequest:
    handle, ek_public, cert = tpm.endorsement_key()
    tpm.flush(handle)
    if cert is None:
        raise EnrolmentError("the TPM holds no EK certificate")
    return EnrolmentRequest(ek_public, cert, ak.tpmt_public)


def answer(tpm: Tpm, ak: AkKey, challenge: Challenge) -> bytes:
    """ActivateCredential with this TPM's EK and AK; EnrolmentError if it does not open."""
    handle = tpm.load_ak(ak.private, ak.public)
    try:
        ek, _, _ = tpm.endorsement_key()
        try:
            return tpm.activate_credential(handle, ek, challenge.credential_blob, challenge.secret)
        except TpmError as exc:
            raise EnrolmentError("credential activation failed: the AK is not in this TPM") from exc
        finally:
            tpm.flush(ek)
    finally:
        tpm.flush(handle)


# --- verifier side (no TPM) ---


def load_certificates(paths: list[Path]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for path in paths:
        try:
            out.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise EnrolmentError(f"cannot read CA certificate {path}: {exc}") from None
    return out


def check_ek_certificate(
    request: EnrolmentRequest,
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    now: datetime.datetime,
) -> None:
    """Raise EnrolmentError unless the EK certificate chains to ``anchors`` at ``now``
    and certifies exactly the EK the TPM reported."""
    if not anchors:
        raise EnrolmentError("no trusted EK CA configured")
    try:
        leaf = x509.load_der_x509_certificate(request.ek_certificate)
    except ValueError:
        raise EnrolmentError("EK certificate is not DER X.509") from None
    verifier = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(now)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            # EK certificates are not web certificates: an empty subject and a critical
            # TPM-specific subjectAltName are normal. The chain's signatures, validity
            # and CA constraints are still checked.
            ee_policy=ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise EnrolmentError(f"EK certificate does not chain to a trusted CA: {exc}") from None
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if _EK_CERTIFICATE_EKU not in eku:
            raise EnrolmentError("certificate is not an EK certificate")
    except x509.ExtensionNotFound:
        pass  # optional in the TCG EK credential profile
    try:
        ek, _ = TPM2B_PUBLIC.unmarshal(request.ek_public)
        ek_numbers = ek.publicArea.unique.rsa
        modulus = int.from_bytes(bytes(ek_numbers), "big")
    except Exception:
        raise EnrolmentError("EK public area is malformed") from None
    cert_key = leaf.public_key()
    if not isinstance(cert_key, rsa.RSAPublicKey) or cert_key.public_numbers().n != modulus:
        raise EnrolmentError("EK certificate does not certify this EK")


def make_challenge(request: EnrolmentRequest) -> tuple[Challenge, bytes]:
    """(challenge for the node, the secret its TPM must give back)."""
    try:
        ak = tpms.parse_public(request.ak_public)
    except EvidenceError as exc:
        raise EnrolmentError(f"unsuitable AK: {exc}") from None
    if not ak.is_restricted_signing_key:
        raise EnrolmentError("AK is not a restricted signing key that never leaves the TPM")
    ek, _ = TPM2B_PUBLIC.unmarshal(request.ek_public)
    credential = secrets.token_bytes(c.CREDENTIAL_SIZE)
    name = TPM2B_NAME(tpms.public_name(request.ak_public))
    blob, secret = make_credential(ek, credential, name)
    return Challenge(bytes(blob.marshal()), bytes(secret.marshal())), credential


def finish(request: EnrolmentRequest, expected: bytes, answered: bytes) -> Enrolment:
    if not hmac.compare_digest(expected, answered):
        raise EnrolmentError("credential activation answered the wrong secret")
    return Enrolment(request.ak_public, hashlib.sha256(request.ek_certificate).digest())


def enrol(
    tcti: str,
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    now: datetime.datetime,
) -> tuple[AkKey, Enrolment]:
    """Both sides in one process: what ``shadowmesh attest enroll`` runs on a node."""
    with Tpm(tcti) as tpm:
        ak = create_ak(tpm)
        req = request(tpm, ak)
        check_ek_certificate(req, anchors, intermediates, now)
        challenge, expected = make_challenge(req)
        return ak, finish(req, expected, answer(tpm, ak, challenge))
