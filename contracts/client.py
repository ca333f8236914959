"""Typed web3 client for ExitNodeRegistry.

Every call returns a frozen dataclass; every revert raises ``RegistryReverted`` carrying the
contract's reason string; transport failures raise ``ChainError``. Transactions are signed
locally with the operator's key (``load_account``), so any RPC URL works, including a public
node that holds no accounts.

What the contract enforces, in short (details in ExitNodeRegistry.sol):

* quotes select exactly PCRs 0-9 of the SHA-256 bank (``PCR_SELECT_BITMAP``), the boot
  state; anything else reverts "PCR selection mismatch", in registration, attestation and
  proofs. Their qualifying data is in the registry's own domain (``Challenge``), bound to
  the chain id, this registry and a recent block hash;
* ``register`` needs an EIP-712 voucher signed for the sending account (the operator), so a
  copied registration from another sender reverts "voucher not from an enroller";
* ``register`` and ``attest`` name the release the node runs, which the owner must have
  approved with its runtime-policy hash (``approve_release``);
* ``attest`` must carry a quote later in TPM time than any seen from the AK, from firmware
  no older than the last one seen ("firmware downgraded"); the on-time reputation bonus is
  paid at most once per attestation window;
* a missed window cannot be slashed while the node's digest or release was revoked less
  than one interval ago ("revocation grace");
* ownership moves in two steps (``transfer_ownership``, then ``accept_ownership``);
* out-of-policy proofs (``report_out_of_policy``) count in TPM-time order. A quote of a
  never-approved digest stays slashable after the node attests again (say after a reboot):
  it only has to be later than the registration quote and earlier slashes. Known limit: a
  quote of a *revoked* digest must be later than every quote the registry has seen from the
  node, so the node's next accepted attestation forgives it, even one made after the grace
  period; report such quotes before the node attests again (within its interval).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from contracts.constants import (
    ARTIFACT_PATH,
    DEFAULT_ATTESTATION_INTERVAL_S,
    DEFAULT_FRESHNESS_BLOCKS,
    DEFAULT_MINIMUM_STAKE_WEI,
    DEFAULT_PAGE,
    DEFAULT_UNBONDING_DELAY_S,
    GAS_HEADROOM_DIVISOR,
    KEY_ENV,
    KEYSTORE_PASSWORD_ENV,
    MAX_PAGE,
    MISBEHAVIOR_MISSED_WINDOW,
    MISBEHAVIOR_OUT_OF_POLICY,
    NODE_ID_BYTES,
    RECEIPT_TIMEOUT_S,
    RPC_TIMEOUT_S,
    SOFTWARE_RELEASE,
    SOURCE_PATH,
    STATUS_NAMES,
)
from contracts.errors import ArtifactError, ChainError, KeyLoadError, RegistryReverted
from contracts.quote import AkPublic, ContractQuote, misbehavior_proof, registry_qualifying_data
from contracts.region import decode_region, encode_region

_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)


@dataclass(frozen=True, slots=True)
class Artifact:
    abi: list[dict[str, Any]]
    bytecode: str
    source_sha256: str


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TxResult:
    tx_hash: str
    block_number: int
    gas_used: int
    fee_wei: int
    events: tuple[RegistryEvent, ...]

    def event_names(self) -> list[str]:
        return [e.name for e in self.events]


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    address: str
    owner: str
    pending_owner: str
    minimum_stake_wei: int
    attestation_interval_s: int
    unbonding_delay_s: int
    freshness_blocks: int


@dataclass(frozen=True, slots=True)
class Challenge:
    """A block whose hash is the nonce of the next on-chain quote, and the registry-domain
    qualifying data (this chain, this registry, that hash, the node) the quote must carry."""

    block_number: int
    block_hash: bytes
    qualifying_data: bytes


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: bytes
    operator: str
    endpoint: str
    ak: AkPublic
    stake_wei: int
    last_attestation: int
    reputation: int
    status: str
    unbonding_ends: int
    pcr_digest: bytes
    last_nonce_block: int
    release: int
    firmware_version: int
    healthy: bool
    region: str | None = None  # the operator's declared ISO 3166 code (contracts.region)


@dataclass(frozen=True, slots=True)
class HealthyPage:
    node_ids: tuple[bytes, ...]
    next_cursor: int  # 0 once the end of the registry was reached


def load_artifact(path: Path = ARTIFACT_PATH, *, source: Path | None = SOURCE_PATH) -> Artifact:
    """The committed ABI and bytecode. With ``source``, the artifact must have been built
    from exactly that file (``node contracts/compile.js`` rebuilds it). Raises ArtifactError."""
    try:
        data = json.loads(path.read_text())
        artifact = Artifact(
            abi=list(data["abi"]),
            bytecode=str(data["bytecode"]),
            source_sha256=str(data["sourceSha256"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if source is not None:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if digest != artifact.source_sha256:
            raise ArtifactError(f"{path} is stale for {source}; run: node contracts/compile.js")
    return artifact


def load_account(
    keystore: Path | None = None,
    *,
    password: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> LocalAccount:
    """The operator's key: from an Ethereum keystore file (password given or in
    $SHADOWMESH_KEYSTORE_PASSWORD), else a hex key in $SHADOWMESH_REGISTRY_KEY.
    Raises KeyLoadError; the key itself never appears in the message."""
    try:
        if keystore is not None:
            secret = password if password is not None else env.get(KEYSTORE_PASSWORD_ENV)
            if secret is None:
                raise KeyLoadError(f"keystore password missing: set {KEYSTORE_PASSWORD_ENV}")
            key = Account.decrypt(json.loads(keystore.read_text()), secret)
            account: LocalAccount = Account.from_key(key)
            return account
        raw = env.get(KEY_ENV)
        if not raw:
            raise KeyLoadError(f"no operator key: give a keystore file or set {KEY_ENV}")
        account = Account.from_key(raw.strip())
        return account
    except KeyLoadError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise KeyLoadError(f"cannot load operator key: {type(exc).__name__}") from None


def connect(rpc_url: str, *, timeout: float = RPC_TIMEOUT_S) -> Web3:
    """A Web3 instance over HTTP(S); raises ChainError when the endpoint does not answer."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap call proves the endpoint is alive
    except (requests.RequestException, Web3Exception, OSError, ValueError) as exc:
        raise ChainError(f"no chain at {rpc_url}: {type(exc).__name__}") from exc
    return w3


def revert_reason(exc: ContractLogicError) -> str:
    """The contract's revert string from a web3 ContractLogicError ("" when it gave none)."""
    data = exc.data if isinstance(exc.data, str) else None
    if data and data.startswith("0x") and bytes.fromhex(data[2:10]) == _ERROR_SELECTOR:
        try:
            (reason,) = abi_decode(["string"], bytes.fromhex(data[10:]))
            return str(reason)
        except (ValueError, TypeError, OverflowError):
            pass
    message = exc.message or ""
    for prefix in ("execution reverted: ", "execution reverted"):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _event_signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"


def _node_id(node_id: bytes) -> bytes:
    if len(node_id) != NODE_ID_BYTES:
        raise ValueError("node id must be 32 bytes")
    return bytes(node_id)


class RegistryClient:
    """One deployed registry, seen through ``w3``; ``account`` signs transactions."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        account: LocalAccount | None = None,
        *,
        artifact: Artifact | None = None,
    ) -> None:
        self.w3 = w3
        self.artifact = artifact or load_artifact()
        self.address = Web3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=self.artifact.abi)
        self.account = account
        self._event_names: dict[bytes, str] = {
            bytes(Web3.keccak(text=_event_signature(item))): item["name"]
            for item in self.artifact.abi
            if item.get("type") == "event"
        }

    def with_account(self, account: LocalAccount) -> RegistryClient:
        """The same registry, acting as another account."""
        return RegistryClient(self.w3, self.address, account, artifact=self.artifact)

    @classmethod
    def deploy(
        cls,
        w3: Web3,
        account: LocalAccount,
        *,
        minimum_stake_wei: int = DEFAULT_MINIMUM_STAKE_WEI,
        attestation_interval_s: int = DEFAULT_ATTESTATION_INTERVAL_S,
        unbonding_delay_s: int = DEFAULT_UNBONDING_DELAY_S,
        freshness_blocks: int = DEFAULT_FRESHNESS_BLOCKS,
        artifact: Artifact | None = None,
    ) -> RegistryClient:
        """Deploy a new registry owned by ``account``. Raises RegistryReverted, ChainError."""
        artifact = artifact or load_artifact()
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        call = factory.constructor(
            minimum_stake_wei, attestation_interval_s, unbonding_delay_s, freshness_blocks
        )
        receipt = _send(w3, account, call, 0)
        address = receipt["contractAddress"]
        if not address:
            raise ChainError("deployment receipt has no contract address")
        return cls(w3, address, account, artifact=artifact)

    # ----- reads -----

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.contract.functions, name)(*args).call()
        except ContractLogicError as exc:
            raise RegistryReverted(revert_reason(exc)) from None
        except (requests.RequestException, Web3Exception, OSError) as exc:
            raise ChainError(f"{name}: {type(exc).__name__}: {exc}") from exc

    def config(self) -> RegistryConfig:
        return RegistryConfig(
            address=self.address,
            owner=str(self._call("owner")),
            pending_owner=str(self._call("pendingOwner")),
            minimum_stake_wei=int(self._call("minimumStake")),
            attestation_interval_s=int(self._call("attestationInterval")),
            unbonding_delay_s=int(self._call("unbondingDelay")),
            freshness_blocks=int(self._call("freshnessBlocks")),
        )

    def chain_id(self) -> int:
        try:
            return int(self.w3.eth.chain_id)
        except (requests.RequestException, Web3Exception, OSError, ValueError) as exc:
            raise ChainError(f"chain id: {type(exc).__name__}: {exc}") from exc

    def is_enroller(self, address: str) -> bool:
        return bool(self._call("isEnroller", Web3.to_checksum_address(address)))

    def voucher_digest(self, node_id: bytes, ak: AkPublic, *, operator: str) -> bytes:
        """The EIP-712 digest the contract expects an enroller to have signed for
        (node_id, ak) registered by the account ``operator``."""
        address = Web3.to_checksum_address(operator)
        return bytes(self._call("enrolmentDigest", address, _node_id(node_id), ak.x, ak.y))

    def runtime_policy(self, release: int) -> bytes | None:
        """The runtime-policy hash the owner approved for ``release``; None if not approved."""
        value = bytes(self._call("releases", release)[0])
        return None if value == bytes(32) else value

    def qualifying_data(self, nonce: bytes, node_id: bytes) -> bytes:
        """The registry-domain qualifying data for ``nonce`` (a block hash) and ``node_id``."""
        return registry_qualifying_data(self.chain_id(), self.address, nonce, _node_id(node_id))

    def pcr_selection(self) -> bytes:
        """The PCR bitmap (SHA-256 bank) every quote must select (``PCR_SELECTION``)."""
        return bytes(self._call("PCR_SELECTION"))

    def challenge(self, node_id: bytes) -> Challenge:
        """The block before the latest as the nonce of the next quote for ``node_id``: calls
        and gas estimates run in the latest block's context, where its own hash is unknown."""
        latest = int(self.w3.eth.block_number)
        if latest < 1:
            raise ChainError("the chain has no block to take a nonce from yet")
        block = self.w3.eth.get_block(latest - 1)
        number, block_hash = int(block["number"]), bytes(block["hash"])
        return Challenge(number, block_hash, self.qualifying_data(block_hash, node_id))

    def node(self, node_id: bytes) -> NodeInfo:
        v = self._call("getNode", _node_id(node_id))
        return NodeInfo(
            node_id=bytes(v[0]),
            operator=str(v[1]),
            endpoint=str(v[2]),
            ak=AkPublic(x=bytes(v[3]), y=bytes(v[4])),
            stake_wei=int(v[5]),
            last_attestation=int(v[6]),
            reputation=int(v[7]),
            status=STATUS_NAMES[int(v[8])],
            unbonding_ends=int(v[9]),
            pcr_digest=bytes(v[10]),
            last_nonce_block=int(v[11]),
            release=int(v[12]),
            firmware_version=int(v[13]),
            healthy=bool(v[14]),
            region=decode_region(bytes(v[15])),
        )

    def node_count(self) -> int:
        return int(self._call("nodeCount"))

    def is_healthy(self, node_id: bytes, min_reputation: int = 0) -> bool:
        return bool(self._call("isHealthy", _node_id(node_id), min_reputation))

    def digest_approved(self, digest: bytes) -> bool:
        return bool(self._call("policy", digest)[0])

    def burned(self) -> int:
        return int(self._call("burned"))

    def healthy_page(
        self, cursor: int = 0, limit: int = DEFAULT_PAGE, min_reputation: int = 0
    ) -> HealthyPage:
        ids, next_cursor = self._call("listHealthy", cursor, limit, min_reputation)
        return HealthyPage(tuple(bytes(i) for i in ids), int(next_cursor))

    def healthy_nodes(self, min_reputation: int = 0, page: int = DEFAULT_PAGE) -> Iterator[bytes]:
        """Every healthy node id, one listHealthy page at a time."""
        page = max(1, min(page, MAX_PAGE))
        cursor = 0
        while True:
            result = self.healthy_page(cursor, page, min_reputation)
            yield from result.node_ids
            if result.next_cursor == 0:
                return
            cursor = result.next_cursor

    # ----- writes -----

    def _transact(self, name: str, *args: Any, value: int = 0) -> TxResult:
        if self.account is None:
            raise KeyLoadError("this client has no operator key")
        call = getattr(self.contract.functions, name)(*args)
        receipt = _send(self.w3, self.account, call, value)
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            fee_wei=int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0)),
            events=self._events(receipt),
        )

    def _events(self, receipt: Any) -> tuple[RegistryEvent, ...]:
        out = []
        for log in receipt["logs"]:
            if log["address"] != self.address or not log["topics"]:
                continue
            name = self._event_names.get(bytes(log["topics"][0]))
            if name is not None:
                decoded = getattr(self.contract.events, name)().process_log(log)
                out.append(RegistryEvent(name, dict(decoded["args"])))
        return tuple(out)

    def register(
        self,
        node_id: bytes,
        endpoint: str,
        ak: AkPublic,
        quote: ContractQuote,
        nonce_block: int,
        *,
        stake_wei: int,
        voucher: bytes,
        release: int = SOFTWARE_RELEASE,
        region: str | None = None,
    ) -> TxResult:
        """``voucher``: an appointed enroller's 65-byte EIP-712 signature over (this client's
        account as operator, node_id, ak) for this registry and chain (``contracts.voucher``).
        ``release``: the approved release the node runs. ``region``: where the operator says
        the node runs (ISO 3166, ``contracts.region``; None: not said)."""
        return self._transact(
            "register", _node_id(node_id), endpoint, ak.x, ak.y,
            _quote_arg(quote, nonce_block), release, bytes(voucher), encode_region(region),
            value=stake_wei,
        )  # fmt: skip

    def attest(
        self,
        node_id: bytes,
        quote: ContractQuote,
        nonce_block: int,
        *,
        release: int = SOFTWARE_RELEASE,
    ) -> TxResult:
        return self._transact(
            "updateAttestation", _node_id(node_id), _quote_arg(quote, nonce_block), release
        )

    def attest_with(
        self,
        node_id: bytes,
        quote_for: Callable[[bytes], ContractQuote],
        *,
        release: int = SOFTWARE_RELEASE,
    ) -> TxResult:
        """Fetch a challenge, have ``quote_for(qualifying_data)`` quote it, submit the quote."""
        challenge = self.challenge(node_id)
        quote = quote_for(challenge.qualifying_data)
        return self.attest(node_id, quote, challenge.block_number, release=release)

    def update_endpoint(self, node_id: bytes, endpoint: str) -> TxResult:
        return self._transact("updateEndpoint", _node_id(node_id), endpoint)

    def update_region(self, node_id: bytes, region: str | None) -> TxResult:
        """Declare the node's region anew (None: withdraw it); ValueError if malformed."""
        return self._transact("updateRegion", _node_id(node_id), encode_region(region))

    def approve_digest(self, digest: bytes) -> TxResult:
        return self._transact("approveDigest", digest)

    def revoke_digest(self, digest: bytes) -> TxResult:
        return self._transact("revokeDigest", digest)

    def approve_release(self, release: int, runtime_policy: bytes) -> TxResult:
        """Approve ``release`` with the SHA-256 of its runtime policy; owner only."""
        return self._transact("approveRelease", release, runtime_policy)

    def revoke_release(self, release: int) -> TxResult:
        return self._transact("revokeRelease", release)

    def set_enroller(self, address: str, appointed: bool = True) -> TxResult:
        """Appoint (or, with ``appointed=False``, remove) an enroller; owner only."""
        return self._transact("setEnroller", Web3.to_checksum_address(address), appointed)

    def transfer_ownership(self, new_owner: str) -> TxResult:
        """Name ``new_owner`` as pending owner; it takes over with ``accept_ownership``."""
        return self._transact("transferOwnership", Web3.to_checksum_address(new_owner))

    def accept_ownership(self) -> TxResult:
        return self._transact("acceptOwnership")

    def mark_stale(self, node_id: bytes) -> TxResult:
        return self._transact("markStale", _node_id(node_id))

    def report_out_of_policy(
        self, node_id: bytes, quote: ContractQuote, nonce_block: int
    ) -> TxResult:
        """Slash with a registry-domain quote that answered block ``nonce_block`` (one of
        the chain's last 256 blocks) and shows a digest outside policy."""
        proof = misbehavior_proof(quote, nonce_block)
        kind = MISBEHAVIOR_OUT_OF_POLICY
        return self._transact("reportMisbehavior", _node_id(node_id), kind, proof)

    def report_missed_window(self, node_id: bytes) -> TxResult:
        kind = MISBEHAVIOR_MISSED_WINDOW
        return self._transact("reportMisbehavior", _node_id(node_id), kind, b"")

    def request_withdrawal(self, node_id: bytes) -> TxResult:
        return self._transact("requestWithdrawal", _node_id(node_id))

    def withdraw(self, node_id: bytes) -> TxResult:
        return self._transact("withdraw", _node_id(node_id))


def _quote_arg(quote: ContractQuote, nonce_block: int) -> tuple[bytes, bytes, bytes, int]:
    """The contract's Quote struct (attest, r, s, nonceBlock)."""
    return (quote.attest, quote.r, quote.s, nonce_block)


def _send(w3: Web3, account: LocalAccount, call: Any, value: int) -> Any:
    """Estimate (which surfaces reverts with their reason), sign, send, wait for the receipt."""
    try:
        base = {"from": account.address, "value": value}
        # Head-room over the estimate: some nodes (Hardhat's EDR) estimate to the exact
        # gas, which the 63/64 rule of the P256VERIFY staticcall then leaves short.
        gas = int(call.estimate_gas(base))
        tx = call.build_transaction(
            {
                **base,
                "gas": gas + gas // GAS_HEADROOM_DIVISOR,
                "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": w3.eth.chain_id,
            }
        )
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
    except ContractLogicError as exc:
        raise RegistryReverted(revert_reason(exc)) from None
    except TimeExhausted as exc:
        raise ChainError("transaction not mined in time") from exc
    except (requests.RequestException, Web3Exception, OSError) as exc:
        raise ChainError(f"{type(exc).__name__}: {exc}") from exc
    if receipt["status"] != 1:
        # Mined but reverted (state changed after estimation): replay to learn why.
        try:
            replay: Any = dict(tx)
            replay["gas"] = receipt["gasUsed"]
            w3.eth.call(replay, receipt["blockNumber"] - 1)
        except ContractLogicError as exc:
            raise RegistryReverted(revert_reason(exc)) from None
        raise RegistryReverted("")
    return receipt
