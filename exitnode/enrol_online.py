"""The enrolment ceremony online: the same four messages over one TCP connection.

The exit listens (``shadowmesh enrol serve``) for one ceremony; the enroller connects
(``shadowmesh enrol online``). Each message is one line of JSON (at most
``ceremony.MAX_MESSAGE_BYTES``), in this order:

    exit -> enroller   request
    enroller -> exit   challenge, signed by the enroller's Ethereum key
    exit -> enroller   answer (the activated secret, the identity signature)
    enroller -> exit   the EIP-712 voucher, or a refusal naming the step

Both ends are authenticated by what the ceremony already carries, so the channel needs no
key of its own and a relay in the middle gains nothing: the exit's hybrid identity key signs
the terms, the node, the AK and this very challenge (a changed request or challenge breaks
that signature), and the exit answers only a challenge signed by the enroller it was told to
expect (``--enroller``: an account the registry owner appointed), so nobody else learns its
activated secret or gets its signature over a challenge of their making. Nothing secret
crosses the wire: the credential only proves what the enroller already knows.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from web3 import Web3

from attestation import ceremony, enrol, tpms
from attestation.errors import CeremonyRefused
from attestation.tpm import Tpm
from contracts.quote import AkPublic, ak_public
from contracts.voucher import Voucher
from exitnode.enrolment import HybridIdentity, identity_signer, voucher_for
from l2bridge.identity.keys import HybridSigningKey

CHALLENGE_DOMAIN = b"shadowmesh/enrol/challenge/v1"
IO_TIMEOUT_S = 60.0  # per message; the TPM work between messages takes well under a second


class WireError(Exception):
    """The other end sent nothing usable, too much, or went away."""


def challenge_statement(request: ceremony.Request, challenge: enrol.Challenge) -> bytes:
    """What the enroller signs (EIP-191) so the exit knows who challenges it."""
    fresh = hashlib.sha256(challenge.credential_blob + b"\x00" + challenge.secret).digest()
    return hashlib.sha256(CHALLENGE_DOMAIN + request.digest() + fresh).digest()


class _Line:
    """One JSON object per line, bounded, with a timeout on every read."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(IO_TIMEOUT_S)
        self._sock = sock
        self._in = sock.makefile("rb")

    def send(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, sort_keys=True).encode() + b"\n"
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise WireError(f"send failed: {exc.strerror or exc}") from None

    def receive(self) -> dict[str, Any]:
        try:
            line = self._in.readline(ceremony.MAX_MESSAGE_BYTES + 1)
        except OSError as exc:
            raise WireError(f"receive failed: {exc.strerror or exc}") from None
        if not line.endswith(b"\n"):
            raise WireError("message too large or connection closed")
        try:
            doc = json.loads(line)
        except ValueError:
            raise WireError("message is not JSON") from None
        if not isinstance(doc, dict):
            raise WireError("message is not a JSON object")
        if "refused" in doc:
            raise WireError(f"the other end refused: {str(doc['refused'])[:300]}")
        return doc

    def close(self) -> None:
        self._in.close()
        self._sock.close()


@dataclass(frozen=True, slots=True)
class ExitSide:
    tcti: str
    ak: enrol.AkKey
    identity: HybridSigningKey
    terms: ceremony.Terms
    enroller: str  # checksummed address whose signature the challenge must carry


def serve_once(listener: socket.socket, side: ExitSide, *, timeout: float) -> Voucher:
    """Accept one enroller and run the ceremony; the voucher it signed, checked against our
    own terms. Raises CeremonyRefused, WireError."""
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        raise WireError("no enroller connected in time") from None
    wire = _Line(conn)
    try:
        with Tpm(side.tcti) as tpm:
            request = ceremony.make_request(
                tpm, side.ak, side.identity.public.encode(), side.identity.node_id, side.terms
            )
        wire.send({"request": request.dump()})
        doc = wire.receive()
        challenge = ceremony.challenge_parse(str(doc.get("challenge", "")), request)
        _check_enroller(request, challenge, doc.get("signature"), side.enroller)
        with Tpm(side.tcti) as tpm:
            reply = ceremony.answer(
                tpm, side.ak, request, challenge, identity_signer(side.identity)
            )
        wire.send({"answer": reply.dump()})
        doc = wire.receive()
        voucher = Voucher.parse(str(doc.get("voucher", "")))
        ak = _ak_point(request.ak_public)
        registry, operator = _hex_address(side.terms.registry), _hex_address(side.terms.operator)
        voucher.check_for(registry, side.terms.chain_id, request.node_id, ak, operator=operator)
        if voucher.enroller != side.enroller:
            raise CeremonyRefused(ceremony.STEP_REQUEST, "the voucher is not the enroller's")
        return voucher
    finally:
        wire.close()


def run_enroller(
    address: tuple[str, int],
    *,
    account: LocalAccount,
    terms: ceremony.Terms,
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    now: Callable[[], datetime.datetime],
) -> tuple[Voucher, ceremony.CeremonyRecord]:
    """Connect to an exit serving a ceremony and run the enroller's side; the voucher (also
    sent to the exit) and the record. Raises CeremonyRefused (sent on to the exit), WireError."""
    try:
        sock = socket.create_connection(address, timeout=IO_TIMEOUT_S)
    except OSError as exc:
        raise WireError(f"cannot reach the exit: {exc.strerror or exc}") from None
    wire = _Line(sock)
    identity = HybridIdentity()
    try:
        try:
            request = ceremony.Request.parse(str(wire.receive().get("request", "")))
            pending = ceremony.start(
                request, terms=terms, anchors=anchors, intermediates=intermediates,
                now=now(), identity=identity,
            )  # fmt: skip
            statement = challenge_statement(request, pending.challenge)
            signature = account.sign_message(encode_defunct(primitive=statement)).signature
            wire.send({"challenge": ceremony.challenge_dump(pending.challenge, request),
                       "signature": bytes(signature).hex()})  # fmt: skip
            reply = ceremony.Answer.parse(str(wire.receive().get("answer", "")))
            record = ceremony.finish(pending, reply, identity=identity)
        except CeremonyRefused as exc:
            wire.send({"refused": f"step {exc.step}"})  # the step, never our detail
            raise
        voucher = voucher_for(account, record)
        wire.send({"voucher": voucher.dump()})
        return voucher, record
    finally:
        wire.close()


def _check_enroller(
    request: ceremony.Request, challenge: enrol.Challenge, signature: object, expected: str
) -> None:
    if not isinstance(signature, str):
        raise CeremonyRefused(ceremony.STEP_REQUEST, "the challenge is not signed")
    try:
        signer = Account.recover_message(
            encode_defunct(primitive=challenge_statement(request, challenge)),
            signature=bytes.fromhex(signature),
        )
    except Exception:  # eth-keys raises assorted errors on malformed signatures
        raise CeremonyRefused(ceremony.STEP_REQUEST, "unreadable challenge signature") from None
    if signer != expected:
        raise CeremonyRefused(
            ceremony.STEP_REQUEST, f"the challenge is signed by {signer}, not the enroller"
        )


def _ak_point(tpmt_public: bytes) -> AkPublic:
    return ak_public(tpms.parse_public(tpmt_public).public_key())


def _hex_address(raw: bytes) -> str:
    return str(Web3.to_checksum_address("0x" + raw.hex()))
