"""``shadowmesh registry ...``: the exit-node registry from the command line.

Every command prints one JSON object. The RPC URL and the registry address come from
``--rpc`` / ``--registry`` or $SHADOWMESH_RPC_URL / $SHADOWMESH_REGISTRY; the operator key
from ``--keystore`` (password in $SHADOWMESH_KEYSTORE_PASSWORD) or $SHADOWMESH_REGISTRY_KEY.

On-chain attestation in three steps: ``registry challenge --node-id ID`` prints a block and
the registry-domain qualifying data (bound to this chain, this registry, the block hash and
the node); the TPM quotes that over PCRs 0-9; ``registry attest`` (or ``register``) submits
the TPMS_ATTEST and signature files with ``--nonce-block`` and the ``--release`` the node
runs, which the owner approved with its runtime-policy hash (``registry release``).

Registration also needs an EIP-712 enrolment voucher (``contracts.voucher``). The owner
appoints enrollers (``registry enroller add ADDRESS``); an enroller signs a voucher only at
the end of the enrolment ceremony it runs with the exit (``shadowmesh enrol``: EK
certificate chain, credential activation, the exit's identity signature over the terms),
never on an exit's word about itself; the operator passes the file to ``register
--voucher`` (or the exit reads it from ``chain.enrolment_voucher``). A voucher for another
operator is refused on chain, so a copied registration cannot take the node over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from web3 import Web3

from attestation import tpms
from attestation.enrol import Enrolment
from attestation.errors import AttestationError
from contracts.client import RegistryClient, connect, load_account
from contracts.constants import (
    DEFAULT_ATTESTATION_INTERVAL_S,
    DEFAULT_FRESHNESS_BLOCKS,
    DEFAULT_MINIMUM_STAKE_WEI,
    DEFAULT_PAGE,
    DEFAULT_UNBONDING_DELAY_S,
    MAX_RELEASE,
    NODE_ID_BYTES,
    SOFTWARE_RELEASE,
    WEI_PER_ETHER,
)
from contracts.errors import RegistryError, VoucherError
from contracts.quote import AkPublic, ContractQuote, ak_public
from contracts.region import check_region
from contracts.voucher import Voucher

RPC_ENV = "SHADOWMESH_RPC_URL"
REGISTRY_ENV = "SHADOWMESH_REGISTRY"
DEFAULT_RPC = "http://127.0.0.1:8545"


def _hex32(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected 32 bytes of hex") from None
    if len(value) != NODE_ID_BYTES:
        raise argparse.ArgumentTypeError("expected 32 bytes of hex")
    return value


def _region(text: str) -> str:
    try:
        return check_region(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> str:
    if not Web3.is_address(text):
        raise argparse.ArgumentTypeError("expected an Ethereum address (0x + 40 hex digits)")
    return str(Web3.to_checksum_address(text))


def _release(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a release number") from None
    if not 0 < value <= MAX_RELEASE:
        raise argparse.ArgumentTypeError(f"release must be 1..{MAX_RELEASE}")
    return value


def _ether(text: str) -> int:
    try:
        wei = Decimal(text) * WEI_PER_ETHER
    except (InvalidOperation, ValueError):
        raise argparse.ArgumentTypeError("expected an amount of ether") from None
    if wei <= 0 or wei != wei.to_integral_value():
        raise argparse.ArgumentTypeError("expected a positive amount of ether")
    return int(wei)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _print(obj: Any) -> None:
    print(json.dumps(_jsonable(obj), sort_keys=True))


def _client(ns: argparse.Namespace, *, signer: bool) -> RegistryClient:
    w3 = connect(ns.rpc)
    account = load_account(ns.keystore) if signer else None
    if not ns.registry:
        raise RegistryError(f"no registry address: give --registry or set {REGISTRY_ENV}")
    return RegistryClient(w3, ns.registry, account)


def _quote(ns: argparse.Namespace) -> ContractQuote:
    try:
        return ContractQuote.from_parts(ns.attest.read_bytes(), ns.signature.read_bytes())
    except OSError as exc:
        raise RegistryError(f"cannot read quote: {exc}") from None


def _tx(result: Any) -> dict[str, Any]:
    out = asdict(result)
    out["events"] = [{"name": e.name, "args": e.args} for e in result.events]
    return dict(out)


def cmd_deploy(ns: argparse.Namespace) -> int:
    client = RegistryClient.deploy(
        connect(ns.rpc),
        load_account(ns.keystore),
        minimum_stake_wei=ns.minimum_stake,
        attestation_interval_s=ns.interval,
        unbonding_delay_s=ns.unbonding,
        freshness_blocks=ns.freshness,
    )
    _print(asdict(client.config()))
    return 0


def cmd_approve(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    for digest in ns.digest:
        _print(_tx(client.revoke_digest(digest) if ns.revoke else client.approve_digest(digest)))
    return 0


def cmd_release(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    if ns.revoke:
        result = client.revoke_release(ns.release)
    else:
        if ns.runtime_policy is None:
            raise RegistryError("approving a release needs --runtime-policy FILE")
        try:
            digest = hashlib.sha256(ns.runtime_policy.read_bytes()).digest()
        except OSError as exc:
            raise RegistryError(f"cannot read runtime policy: {exc.strerror or exc}") from None
        result = client.approve_release(ns.release, digest)
    _print(
        {**_tx(result), "release": ns.release, "runtime_policy": client.runtime_policy(ns.release)}
    )
    return 0


def cmd_owner(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    if ns.accept:
        result = client.accept_ownership()
    elif ns.new_owner is not None:
        result = client.transfer_ownership(ns.new_owner)
    else:
        raise RegistryError("give --transfer-to ADDRESS (current owner) or --accept (new owner)")
    cfg = client.config()
    _print({**_tx(result), "owner": cfg.owner, "pending_owner": cfg.pending_owner})
    return 0


def cmd_challenge(ns: argparse.Namespace) -> int:
    _print(asdict(_client(ns, signer=False).challenge(ns.node_id)))
    return 0


def cmd_register(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    try:
        ak = ak_public(ns.ak_pub.read_bytes())
    except OSError as exc:
        raise RegistryError(f"cannot read AK public key: {exc}") from None
    voucher = read_voucher(ns.voucher)
    if client.account is None:  # not reached: signer=True loads the key or raises
        raise RegistryError("no operator key")
    operator = client.account.address
    voucher.check_for(client.address, client.chain_id(), ns.node_id, ak, operator=operator)
    result = client.register(
        ns.node_id,
        ns.endpoint,
        ak,
        _quote(ns),
        ns.nonce_block,
        stake_wei=ns.stake,
        voucher=voucher.signature,
        release=ns.release,
        region=ns.region,
    )
    _print(_tx(result))
    return 0


def read_voucher(path: Path) -> Voucher:
    """A voucher file (``enrol vouch --out``). Raises VoucherError."""
    try:
        return Voucher.parse(path.read_bytes())
    except OSError as exc:
        raise VoucherError(f"cannot read voucher {path}: {exc.strerror or exc}") from None


def enrolment_ak(text: str) -> AkPublic:
    """The AK of an enrolment record (``attestation.enrol.Enrolment``), as the contract
    stores it. Raises RegistryError for a record that is not one."""
    try:
        public = tpms.parse_public(Enrolment.parse(text).ak_public)
    except AttestationError as exc:
        raise RegistryError(f"not an enrolment record: {exc}") from None
    if not public.is_restricted_signing_key:
        raise RegistryError("the enrolled AK is not a restricted signing key")
    return ak_public(public.public_key())


def cmd_enroller(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    result = client.set_enroller(ns.address, ns.change == "add")
    _print({**_tx(result), "enroller": ns.address, "appointed": client.is_enroller(ns.address)})
    return 0


def cmd_attest(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    _print(_tx(client.attest(ns.node_id, _quote(ns), ns.nonce_block, release=ns.release)))
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=False)
    ids = list(client.healthy_nodes(ns.min_reputation, ns.page))
    _print({"healthy": ids, "count": len(ids), "registered": client.node_count()})
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    info = asdict(_client(ns, signer=False).node(ns.node_id))
    _print(info)
    return 0


def cmd_stale(ns: argparse.Namespace) -> int:
    _print(_tx(_client(ns, signer=True).mark_stale(ns.node_id)))
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    if ns.missed_window:
        result = client.report_missed_window(ns.node_id)
    else:
        if ns.attest is None or ns.signature is None or ns.nonce_block is None:
            raise RegistryError(
                "an out-of-policy report needs --attest, --signature, --nonce-block"
            )
        result = client.report_out_of_policy(ns.node_id, _quote(ns), ns.nonce_block)
    _print(_tx(result))
    return 0


def cmd_withdraw(ns: argparse.Namespace) -> int:
    client = _client(ns, signer=True)
    result = client.request_withdrawal(ns.node_id) if ns.request else client.withdraw(ns.node_id)
    _print(_tx(result))
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(ns: argparse.Namespace) -> int:
        try:
            return func(ns)
        except RegistryError as exc:
            print(f"registry: {exc}", file=sys.stderr)
            return 1

    return run


def register(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rpc", default=os.environ.get(RPC_ENV, DEFAULT_RPC), help="RPC URL")
    common.add_argument("--registry", default=os.environ.get(REGISTRY_ENV), help="address")
    common.add_argument("--keystore", type=Path, help="operator keystore (JSON) file")
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--node-id", type=_hex32, required=True, help="32-byte hex node id")
    quote = argparse.ArgumentParser(add_help=False)
    quote.add_argument("--attest", type=Path, help="TPMS_ATTEST file (raw bytes)")
    quote.add_argument("--signature", type=Path, help="TPMT_SIGNATURE or DER signature file")

    sub = parser.add_subparsers(dest="action", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str, *parents: Any) -> Any:
        p = sub.add_parser(name, help=text, description=text, parents=[common, *parents])
        p.set_defaults(func=_guarded(func))
        return p

    p = add("deploy", cmd_deploy, "deploy a registry owned by the operator key")
    p.add_argument("--minimum-stake", type=_ether, default=DEFAULT_MINIMUM_STAKE_WEI)
    p.add_argument("--interval", type=int, default=DEFAULT_ATTESTATION_INTERVAL_S)
    p.add_argument("--unbonding", type=int, default=DEFAULT_UNBONDING_DELAY_S)
    p.add_argument("--freshness", type=int, default=DEFAULT_FRESHNESS_BLOCKS)
    p = add("approve", cmd_approve, "approve (or --revoke) boot PCR digests (owner only)")
    p.add_argument("digest", type=_hex32, nargs="+")
    p.add_argument("--revoke", action="store_true")
    p = add("release", cmd_release, "approve a release with its runtime policy, or --revoke it")
    p.add_argument("release", type=_release)
    p.add_argument("--runtime-policy", type=Path, help="the release's runtime policy (JSON)")
    p.add_argument("--revoke", action="store_true")
    p = add("owner", cmd_owner, "hand the registry over: --transfer-to, then --accept")
    p.add_argument("--transfer-to", dest="new_owner", type=_address)
    p.add_argument("--accept", action="store_true")
    release = argparse.ArgumentParser(add_help=False)
    release.add_argument("--release", type=_release, default=SOFTWARE_RELEASE,
                         help="the approved release the node runs")  # fmt: skip
    add("challenge", cmd_challenge, "the block and qualifying data to quote", node)
    p = add(
        "register", cmd_register, "register an exit node with stake and a quote", node, quote,
        release,
    )  # fmt: skip
    p.add_argument("--endpoint", required=True)
    p.add_argument("--region", type=_region, help="where the node runs: ISO 3166 (DE, US-CA)")
    p.add_argument("--ak-pub", type=Path, required=True, help="AK public key (PEM or DER)")
    p.add_argument("--nonce-block", type=int, required=True)
    p.add_argument("--stake", type=_ether, default=DEFAULT_MINIMUM_STAKE_WEI, help="ether")
    p.add_argument("--voucher", type=Path, required=True, help="enrolment voucher file")
    p = add("enroller", cmd_enroller, "appoint (add) or remove an enroller (owner only)")
    p.add_argument("change", choices=("add", "remove"))
    p.add_argument("address", type=_address)
    p = add("attest", cmd_attest, "submit the periodic attestation", node, quote, release)
    p.add_argument("--nonce-block", type=int, required=True)
    p = add("list", cmd_list, "healthy exit nodes")
    p.add_argument("--min-reputation", type=int, default=0)
    p.add_argument("--page", type=int, default=DEFAULT_PAGE)
    add("show", cmd_show, "one node's record", node)
    add("stale", cmd_stale, "mark a node stale once its window has passed", node)
    p = add("report", cmd_report, "report misbehaviour with a proof", node, quote)
    p.add_argument("--missed-window", action="store_true")
    p.add_argument("--nonce-block", type=int, help="the block the out-of-policy quote answered")
    p = add("withdraw", cmd_withdraw, "--request unbonding, then withdraw the stake", node)
    p.add_argument("--request", action="store_true")
