"""``shadowmesh enrol``: the enrolment ceremony between an exit and an enroller, as files.

The exit's operator and the enroller exchange four files (``attestation.ceremony`` has the
protocol; this module wires in the exit's hybrid identity key and the voucher):

    exit      enrol request   --tcti T --ak ak.json --identity exit.identity
                              --operator ADDR --chain-id N --registry ADDR --out request.json
    enroller  enrol challenge --request request.json --ca maker-root.pem [--intermediate ...]
                              --operator ADDR --chain-id N --registry ADDR
                              --out challenge.json --pending pending.json
    exit      enrol answer    --tcti T --ak ak.json --identity exit.identity
                              --request request.json --challenge challenge.json --out answer.json
    enroller  enrol vouch     --pending pending.json --answer answer.json --out voucher.json
                              [--record-out enrolment.json]   (key: --keystore or env)

Online (``exitnode.enrol_online``), the same messages over one TCP connection:

    exit      enrol serve     --tcti T --ak ak.json --identity exit.identity TERMS
                              --listen HOST:PORT --enroller ADDR --out voucher.json
    enroller  enrol online    --connect HOST:PORT --ca ... TERMS --out voucher.json

The enroller passes the terms (operator, chain, registry) it agreed with the operator; a
request that asks for anything else is refused at step "terms". ``vouch`` signs the EIP-712
voucher only after activation and the identity signature checked out, then deletes the
pending file (its secret answers one challenge only). Each refusal names its step and
exits 1. Transport of the files is the parties' business: the files carry nothing secret
except ``pending.json``, which never leaves the enroller (mode 0600).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from web3 import Web3

from attestation import ceremony, enrol, tpms
from attestation.errors import AttestationError, CeremonyRefused
from attestation.tpm import Tpm
from contracts.client import load_account
from contracts.errors import RegistryError
from contracts.quote import ak_public
from contracts.voucher import Voucher
from l2bridge.codec import Reader
from l2bridge.errors import AuthenticationFailed, KeyFileError, MalformedMessage
from l2bridge.identity.keys import HybridPublicKey, HybridSignature, HybridSigningKey

ENROL_LABEL = b"shadowmesh enrolment"


class HybridIdentity:
    """``ceremony.IdentityVerifier`` for ShadowMesh identities: nodeId = SHA-256 of the
    canonical public key encoding; both the Ed25519 and the ML-DSA-87 half must verify."""

    def node_id(self, public: bytes) -> bytes:
        try:
            return HybridPublicKey.decode(public).node_id
        except MalformedMessage as exc:
            raise ValueError(str(exc)) from None

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        try:
            key = HybridPublicKey.decode(public)
            reader = Reader(signature)
            parsed = HybridSignature.read(reader)
            reader.end()
            key.verify(ENROL_LABEL, message, parsed)
        except (MalformedMessage, AuthenticationFailed):
            return False
        return True


def identity_signer(key: HybridSigningKey) -> Callable[[bytes], bytes]:
    """The exit's side: sign a binding message with its identity key."""
    return lambda message: key.sign(ENROL_LABEL, message).encode()


def voucher_for(account: Any, record: ceremony.CeremonyRecord) -> Voucher:
    """The EIP-712 voucher for what the ceremony established (and nothing else)."""
    ak = ak_public(tpms.parse_public(record.ak_public).public_key())
    terms = record.terms
    return Voucher.make(
        account,
        Web3.to_checksum_address(terms.registry),
        terms.chain_id,
        record.node_id,
        ak,
        operator=Web3.to_checksum_address(terms.operator),
    )


# --- command line ---


def _terms(ns: argparse.Namespace) -> ceremony.Terms:
    return ceremony.Terms(
        bytes.fromhex(ns.operator[2:]), ns.chain_id, bytes.fromhex(ns.registry[2:])
    )


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(ceremony.MAX_MESSAGE_BYTES + 1)
    except OSError as exc:
        raise EnrolFailed(f"cannot read {path}: {exc.strerror or exc}") from None


def _write(path: Path, text: str, *, private: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as exc:
        raise EnrolFailed(f"cannot write {path}: {exc.strerror or exc}") from None


class EnrolFailed(Exception):
    """A local problem (a file, a key) that stops a ceremony command."""


def _ak(tpm: Tpm, path: Path, *, create: bool) -> enrol.AkKey:
    if path.exists():
        return enrol.AkKey.load(path)
    if not create:
        raise EnrolFailed(f"no AK at {path}")
    ak = enrol.create_ak(tpm)
    ak.save(path)
    return ak


def _identity(path: Path) -> HybridSigningKey:
    try:
        return HybridSigningKey.load(path)
    except (OSError, ValueError, KeyFileError) as exc:
        raise EnrolFailed(f"cannot load identity key {path}: {exc}") from None


def cmd_request(ns: argparse.Namespace) -> int:
    key = _identity(ns.identity)
    with Tpm(ns.tcti) as tpm:
        ak = _ak(tpm, ns.ak, create=True)
        request = ceremony.make_request(tpm, ak, key.public.encode(), key.node_id, _terms(ns))
    _write(ns.out, request.dump())
    _print(
        {
            "request": str(ns.out),
            "node_id": key.node_id.hex(),
            "ek_certificate": bool(request.ek_certificate),
        }
    )
    return 0


def cmd_challenge(ns: argparse.Namespace) -> int:
    request = ceremony.Request.parse(_read(ns.request))
    pending = ceremony.start(
        request,
        terms=_terms(ns),
        anchors=enrol.load_certificates(ns.ca),
        intermediates=enrol.load_certificates(ns.intermediate),
        now=datetime.datetime.now(datetime.UTC),
        identity=HybridIdentity(),
    )
    _write(ns.pending, pending.dump(), private=True)
    _write(ns.out, ceremony.challenge_dump(pending.challenge, request))
    _print({"challenge": str(ns.out), "node_id": request.node_id.hex(), "checked": [
        ceremony.STEP_TERMS, ceremony.STEP_EK_CERTIFICATE, ceremony.STEP_AK, ceremony.STEP_IDENTITY,
    ]})  # fmt: skip
    return 0


def cmd_answer(ns: argparse.Namespace) -> int:
    key = _identity(ns.identity)
    request = ceremony.Request.parse(_read(ns.request))
    if request.node_id != key.node_id:
        raise EnrolFailed("the request is for another identity than --identity")
    challenge = ceremony.challenge_parse(_read(ns.challenge), request)
    with Tpm(ns.tcti) as tpm:
        ak = _ak(tpm, ns.ak, create=False)
        reply = ceremony.answer(tpm, ak, request, challenge, identity_signer(key))
    _write(ns.out, reply.dump())
    _print({"answer": str(ns.out)})
    return 0


def cmd_vouch(ns: argparse.Namespace) -> int:
    pending = ceremony.Pending.parse(_read(ns.pending))
    reply = ceremony.Answer.parse(_read(ns.answer))
    record = ceremony.finish(pending, reply, identity=HybridIdentity())
    voucher = voucher_for(load_account(ns.keystore), record)  # only now is anything signed
    _write(ns.out, voucher.dump())
    if ns.record_out is not None:
        _write(ns.record_out, record.enrolment.dump())
    ns.pending.unlink(missing_ok=True)
    _print({"voucher": str(ns.out), "node_id": record.node_id.hex(), "operator": voucher.operator,
            "registry": voucher.contract, "chain_id": voucher.chain_id,
            "enroller": voucher.enroller})  # fmt: skip
    return 0


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def cmd_serve(ns: argparse.Namespace) -> int:
    from exitnode import enrol_online  # noqa: PLC0415 - it builds on this module

    key = _identity(ns.identity)
    with Tpm(ns.tcti) as tpm:
        ak = _ak(tpm, ns.ak, create=True)
    side = enrol_online.ExitSide(ns.tcti, ak, key, _terms(ns), ns.enroller)
    try:
        with socket.create_server(ns.listen) as listener:
            print(json.dumps({"listening": f"{ns.listen[0]}:{listener.getsockname()[1]}"}),
                  flush=True)  # fmt: skip
            voucher = enrol_online.serve_once(listener, side, timeout=ns.timeout)
    except OSError as exc:
        raise EnrolFailed(f"cannot listen on {ns.listen}: {exc.strerror or exc}") from None
    except enrol_online.WireError as exc:
        raise EnrolFailed(str(exc)) from None
    _write(ns.out, voucher.dump())
    _print({"voucher": str(ns.out), "enroller": voucher.enroller, "node_id": key.node_id.hex()})
    return 0


def cmd_online(ns: argparse.Namespace) -> int:
    from exitnode import enrol_online  # noqa: PLC0415 - it builds on this module

    try:
        voucher, record = enrol_online.run_enroller(
            ns.connect,
            account=load_account(ns.keystore),
            terms=_terms(ns),
            anchors=enrol.load_certificates(ns.ca),
            intermediates=enrol.load_certificates(ns.intermediate),
            now=lambda: datetime.datetime.now(datetime.UTC),
        )
    except enrol_online.WireError as exc:
        raise EnrolFailed(str(exc)) from None
    _write(ns.out, voucher.dump())
    if ns.record_out is not None:
        _write(ns.record_out, record.enrolment.dump())
    _print({"voucher": str(ns.out), "node_id": record.node_id.hex(), "operator": voucher.operator})
    return 0


def _print(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, sort_keys=True))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(ns: argparse.Namespace) -> int:
        try:
            return func(ns)
        except CeremonyRefused as exc:
            print(f"enrol: refused at step {exc.step}: {exc.detail}", file=sys.stderr)
        except (EnrolFailed, AttestationError, RegistryError) as exc:
            print(f"enrol: {exc}", file=sys.stderr)
        return 1

    return run


def _address(text: str) -> str:
    if not Web3.is_address(text):
        raise argparse.ArgumentTypeError("expected an Ethereum address (0x + 40 hex digits)")
    return str(Web3.to_checksum_address(text))


def _chain_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a chain id") from None
    if not 0 < value < 2**256:
        raise argparse.ArgumentTypeError("chain id out of range")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    terms = argparse.ArgumentParser(add_help=False)
    terms.add_argument("--operator", type=_address, required=True, help="account that registers")
    terms.add_argument("--chain-id", type=_chain_id, required=True)
    terms.add_argument("--registry", type=_address, required=True, help="registry address")
    exit_side = argparse.ArgumentParser(add_help=False)
    exit_side.add_argument("--tcti", required=True, help="the exit's TPM")
    exit_side.add_argument("--ak", type=Path, required=True, help="AK key file (created if absent)")
    exit_side.add_argument("--identity", type=Path, required=True, help="exit identity key")
    sub = parser.add_subparsers(dest="action", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str, *parents: Any) -> Any:
        p = sub.add_parser(name, help=text, description=text, parents=list(parents))
        p.set_defaults(func=_guarded(func))
        return p

    p = add("request", cmd_request, "exit: write the enrolment request", exit_side, terms)
    p.add_argument("--out", type=Path, required=True)
    p = add("challenge", cmd_challenge, "enroller: check a request and challenge its TPM", terms)
    p.add_argument("--request", type=Path, required=True)
    p.add_argument("--ca", type=Path, action="append", required=True,
                   help="trusted TPM maker root certificate (PEM); repeat")  # fmt: skip
    p.add_argument("--intermediate", type=Path, action="append", default=[],
                   help="intermediate CA certificate (PEM); repeat")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="challenge for the exit")
    p.add_argument("--pending", type=Path, required=True, help="enroller's private state")
    p = add("answer", cmd_answer, "exit: activate the credential and sign the terms", exit_side)
    p.add_argument("--request", type=Path, required=True)
    p.add_argument("--challenge", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = add("vouch", cmd_vouch, "enroller: check the answer, then sign the EIP-712 voucher")
    p.add_argument("--pending", type=Path, required=True)
    p.add_argument("--answer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="voucher file for the operator")
    p.add_argument("--record-out", type=Path, help="enrolment record (the AK clients trust)")
    p.add_argument("--keystore", type=Path, help="enroller keystore (else the key in env)")
    p = add("serve", cmd_serve, "exit: serve one online ceremony", exit_side, terms)
    p.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT (0: any port)")
    p.add_argument("--enroller", type=_address, required=True,
                   help="the appointed enroller whose signed challenge to answer")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="where to write the voucher")
    p.add_argument("--timeout", type=float, default=300.0, help="wait this long for it (s)")
    p = add("online", cmd_online, "enroller: run the ceremony with a serving exit", terms)
    p.add_argument("--connect", type=_hostport, required=True, help="the exit's HOST:PORT")
    p.add_argument("--ca", type=Path, action="append", required=True,
                   help="trusted TPM maker root certificate (PEM); repeat")  # fmt: skip
    p.add_argument("--intermediate", type=Path, action="append", default=[],
                   help="intermediate CA certificate (PEM); repeat")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="voucher file")
    p.add_argument("--record-out", type=Path, help="enrolment record (the AK clients trust)")
    p.add_argument("--keystore", type=Path, help="enroller keystore (else the key in env)")
