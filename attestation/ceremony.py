"""The enrolment ceremony: an enroller, not the exit, establishes that an AK lives in a
genuine TPM and belongs to the exit identity that asks for a voucher.

Four messages, each a file in the offline mode (``shadowmesh enrol``):

1. exit -> enroller, ``Request``: the EK public area and certificate, the AK public area,
   the exit's hybrid identity public key and nodeId, and the terms it asks to be vouched
   for (operator account, chain id, registry address);
2. enroller -> exit, ``Challenge``: after the enroller checked the terms, the EK
   certificate chain against the maker roots it trusts, the certificate's key against the
   EK, the AK's attributes and nodeId = H(identity key), a MakeCredential to the EK for the
   AK's name around a fresh secret (the enroller keeps it in its ``Pending`` state);
3. exit -> enroller, ``Answer``: the secret, recovered with ActivateCredential (only the
   TPM holding both that EK and that AK can), and the exit's hybrid identity signature over
   ``binding_message`` (terms, nodeId, AK and this challenge), so the TPM holder and the
   identity holder are the same party, now;
4. the enroller checks both and only then holds a ``CeremonyRecord``, from which the
   contracts layer signs the EIP-712 voucher.

Every refusal is a ``CeremonyRefused`` naming its step (``STEP_*``). The hybrid identity
key belongs to the tunnel package, which sits above this one, so its checks come in
through ``IdentityVerifier`` (``exitnode.enrolment.HybridIdentity``) and the exit's
signing through a callable.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from attestation import enrol, tpms
from attestation.enrol import AkKey, Challenge, EnrolmentRequest
from attestation.errors import CeremonyRefused, EnrolmentError, EvidenceError, TpmError
from attestation.tpm import Tpm

BINDING_DOMAIN = b"shadowmesh/enrol/v1"
ADDRESS_SIZE = 20
NODE_ID_SIZE = 32
MAX_MESSAGE_BYTES = 64 * 1024  # any ceremony file; an ML-DSA-87 key and signature fit easily

STEP_REQUEST = "request"
STEP_TERMS = "terms"
STEP_EK_CERTIFICATE = "ek-certificate"
STEP_AK = "ak"
STEP_IDENTITY = "identity"
STEP_ACTIVATION = "activation"
STEP_IDENTITY_SIGNATURE = "identity-signature"


class IdentityVerifier(Protocol):
    """The exit identity scheme, seen from here."""

    def node_id(self, public: bytes) -> bytes:
        """The nodeId of an encoded identity public key; ValueError if it is not one."""
        ...

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` by ``public`` over ``message`` is valid (every half)."""
        ...


@dataclass(frozen=True, slots=True)
class Terms:
    """What the voucher will say besides the node: who registers it, where."""

    operator: bytes  # 20-byte account address
    chain_id: int
    registry: bytes  # 20-byte contract address

    def __post_init__(self) -> None:
        if len(self.operator) != ADDRESS_SIZE or len(self.registry) != ADDRESS_SIZE:
            raise ValueError("operator and registry are 20-byte addresses")
        if not 0 < self.chain_id < 2**256:
            raise ValueError("chain id out of range")

    def encode(self) -> bytes:
        return self.operator + self.chain_id.to_bytes(32, "big") + self.registry


@dataclass(frozen=True, slots=True)
class Request:
    ek_public: bytes  # TPM2B_PUBLIC
    ek_certificate: bytes  # DER; empty when the TPM holds none
    ak_public: bytes  # TPMT_PUBLIC
    identity_public: bytes
    node_id: bytes
    terms: Terms

    def digest(self) -> bytes:
        return hashlib.sha256(self.dump().encode()).digest()

    def dump(self) -> str:
        return _dump(
            {
                "ek_public": self.ek_public,
                "ek_certificate": self.ek_certificate,
                "ak_public": self.ak_public,
                "identity_public": self.identity_public,
                "node_id": self.node_id,
                "operator": self.terms.operator,
                "chain_id": self.terms.chain_id,
                "registry": self.terms.registry,
            }
        )

    @classmethod
    def parse(cls, text: str | bytes) -> Request:
        doc = _load(text, "request")
        try:
            terms = Terms(_b(doc, "operator"), _int(doc, "chain_id"), _b(doc, "registry"))
            out = cls(
                _b(doc, "ek_public"),
                _b(doc, "ek_certificate"),
                _b(doc, "ak_public"),
                _b(doc, "identity_public"),
                _b(doc, "node_id"),
                terms,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CeremonyRefused(STEP_REQUEST, f"malformed request: {exc}") from None
        if len(out.node_id) != NODE_ID_SIZE:
            raise CeremonyRefused(STEP_REQUEST, "node id must be 32 bytes")
        return out


def challenge_dump(challenge: Challenge, request: Request) -> str:
    return _dump(
        {
            "request_sha256": request.digest(),
            "credential_blob": challenge.credential_blob,
            "secret": challenge.secret,
        }
    )


def challenge_parse(text: str | bytes, request: Request) -> Challenge:
    """The enroller's challenge; refused unless it answers exactly ``request``."""
    doc = _load(text, "challenge")
    try:
        if not hmac.compare_digest(_b(doc, "request_sha256"), request.digest()):
            raise CeremonyRefused(STEP_REQUEST, "the challenge is for another request")
        return Challenge(_b(doc, "credential_blob"), _b(doc, "secret"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CeremonyRefused(STEP_REQUEST, f"malformed challenge: {exc}") from None


@dataclass(frozen=True, slots=True)
class Answer:
    credential: bytes
    identity_signature: bytes

    def dump(self) -> str:
        return _dump({"credential": self.credential, "identity_signature": self.identity_signature})

    @classmethod
    def parse(cls, text: str | bytes) -> Answer:
        doc = _load(text, "answer")
        try:
            return cls(_b(doc, "credential"), _b(doc, "identity_signature"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CeremonyRefused(STEP_REQUEST, f"malformed answer: {exc}") from None


@dataclass(frozen=True, slots=True)
class Pending:
    """The enroller's side between challenge and answer. Holds the secret: keep it private
    (mode 0600) and use it once."""

    request: Request
    challenge: Challenge
    expected: bytes

    def dump(self) -> str:
        return json.dumps(
            {
                "request": self.request.dump(),
                "challenge": challenge_dump(self.challenge, self.request),
                "expected": self.expected.hex(),
            },
            sort_keys=True,
        )

    @classmethod
    def parse(cls, text: str | bytes) -> Pending:
        doc = _load(text, "pending ceremony")
        try:
            request = Request.parse(doc["request"])
            challenge = challenge_parse(doc["challenge"], request)
            return cls(request, challenge, bytes.fromhex(doc["expected"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CeremonyRefused(STEP_REQUEST, f"malformed pending ceremony: {exc}") from None


@dataclass(frozen=True, slots=True)
class CeremonyRecord:
    """What the enroller established: vouch for exactly this."""

    ak_public: bytes  # TPMT_PUBLIC
    ek_certificate_sha256: bytes
    node_id: bytes
    identity_sha256: bytes
    terms: Terms

    @property
    def enrolment(self) -> enrol.Enrolment:
        """The record a verifier keeps to trust this AK (``attestation.enrol.Enrolment``)."""
        return enrol.Enrolment(self.ak_public, self.ek_certificate_sha256)


def binding_message(request: Request, challenge: Challenge) -> bytes:
    """What the exit's identity key signs: the terms, the node, the AK and this challenge."""
    ak = hashlib.sha256(request.ak_public).digest()
    fresh = hashlib.sha256(
        struct.pack(">H", len(challenge.credential_blob))
        + challenge.credential_blob
        + challenge.secret
    ).digest()
    return BINDING_DOMAIN + request.terms.encode() + request.node_id + ak + fresh


# --- exit side (its TPM and its identity key) ---


def make_request(
    tpm: Tpm, ak: AkKey, identity_public: bytes, node_id: bytes, terms: Terms
) -> Request:
    """The exit's request; an absent EK certificate is sent empty (the enroller refuses)."""
    handle, ek_public, cert = tpm.endorsement_key()
    tpm.flush(handle)
    return Request(ek_public, cert or b"", ak.tpmt_public, identity_public, node_id, terms)


def answer(
    tpm: Tpm,
    ak: AkKey,
    request: Request,
    challenge: Challenge,
    sign: Callable[[bytes], bytes],
) -> Answer:
    """ActivateCredential on this TPM, then the identity signature over the binding.
    Raises CeremonyRefused (step activation) if the challenge does not open here."""
    try:
        credential = enrol.answer(tpm, ak, challenge)
    except (EnrolmentError, TpmError) as exc:
        raise CeremonyRefused(STEP_ACTIVATION, str(exc)) from None
    return Answer(credential, sign(binding_message(request, challenge)))


# --- enroller side (no TPM) ---


def start(
    request: Request,
    *,
    terms: Terms,
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    now: datetime.datetime,
    identity: IdentityVerifier,
) -> Pending:
    """Check everything the request claims that can be checked without the TPM, then
    challenge it. Raises CeremonyRefused naming the step that failed."""
    if request.terms != terms:
        raise CeremonyRefused(STEP_TERMS, _terms_difference(request.terms, terms))
    if not request.ek_certificate:
        raise CeremonyRefused(STEP_EK_CERTIFICATE, "the TPM presented no EK certificate")
    try:
        enrol.check_ek_certificate(_legacy(request), anchors, intermediates, now)
        _check_ek_key_usage(request.ek_certificate)
    except EnrolmentError as exc:
        raise CeremonyRefused(STEP_EK_CERTIFICATE, str(exc)) from None
    try:
        if not tpms.parse_public(request.ak_public).is_restricted_signing_key:
            raise CeremonyRefused(STEP_AK, "the AK is not a restricted, fixed-TPM signing key")
    except EvidenceError as exc:
        raise CeremonyRefused(STEP_AK, f"unreadable AK: {exc}") from None
    try:
        claimed = identity.node_id(request.identity_public)
    except ValueError as exc:
        raise CeremonyRefused(STEP_IDENTITY, f"unreadable identity key: {exc}") from None
    if not hmac.compare_digest(claimed, request.node_id):
        raise CeremonyRefused(STEP_IDENTITY, "the node id is not the hash of the identity key")
    try:
        challenge, expected = enrol.make_challenge(_legacy(request))
    except EnrolmentError as exc:
        raise CeremonyRefused(STEP_AK, str(exc)) from None
    return Pending(request, challenge, expected)


def finish(pending: Pending, reply: Answer, *, identity: IdentityVerifier) -> CeremonyRecord:
    """Check the exit's answer. Raises CeremonyRefused (activation, identity-signature)."""
    if not hmac.compare_digest(pending.expected, reply.credential):
        raise CeremonyRefused(
            STEP_ACTIVATION, "the answer is not the secret: the AK is not in that TPM"
        )
    message = binding_message(pending.request, pending.challenge)
    if not identity.verify(pending.request.identity_public, message, reply.identity_signature):
        raise CeremonyRefused(
            STEP_IDENTITY_SIGNATURE, "the identity signature over the terms does not verify"
        )
    request = pending.request
    return CeremonyRecord(
        ak_public=request.ak_public,
        ek_certificate_sha256=hashlib.sha256(request.ek_certificate).digest(),
        node_id=request.node_id,
        identity_sha256=hashlib.sha256(request.identity_public).digest(),
        terms=request.terms,
    )


def _legacy(request: Request) -> EnrolmentRequest:
    return EnrolmentRequest(request.ek_public, request.ek_certificate, request.ak_public)


def _check_ek_key_usage(der: bytes) -> None:
    """An RSA EK decrypts credentials: a certificate that limits its key to anything else,
    or makes it a CA, does not certify an EK."""
    cert = x509.load_der_x509_certificate(der)
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_encipherment:
            raise EnrolmentError("EK certificate key usage lacks keyEncipherment")
    except x509.ExtensionNotFound:
        pass  # the TCG profile makes it recommended, not mandatory
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise EnrolmentError("EK certificate is a CA certificate")
    except x509.ExtensionNotFound:
        pass


def _terms_difference(asked: Terms, offered: Terms) -> str:
    if asked.operator != offered.operator:
        return (
            f"the exit asks for operator 0x{asked.operator.hex()}, not 0x{offered.operator.hex()}"
        )
    if asked.chain_id != offered.chain_id:
        return f"the exit asks for chain {asked.chain_id}, not {offered.chain_id}"
    return f"the exit asks for registry 0x{asked.registry.hex()}, not 0x{offered.registry.hex()}"


def _dump(doc: dict[str, Any]) -> str:
    out = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in doc.items()}
    return json.dumps(out, indent=2, sort_keys=True) + "\n"


def _load(text: str | bytes, what: str) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE_BYTES:
        raise CeremonyRefused(STEP_REQUEST, f"{what} is too large")
    try:
        doc = json.loads(text)
    except ValueError:
        raise CeremonyRefused(STEP_REQUEST, f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise CeremonyRefused(STEP_REQUEST, f"{what} is not a JSON object")
    return doc


def _b(doc: dict[str, Any], key: str) -> bytes:
    value = doc[key]
    if not isinstance(value, str):
        raise TypeError(f"{key}: expected hex")
    return bytes.fromhex(value)


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key}: expected an integer")
    return value
