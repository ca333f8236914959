"""Anvil once per module, a registry deployed on it, and a snapshot per test.

Quotes here are synthetic TPMS_ATTEST blobs in the registry's format, signed with software
P-256 keys (the swtpm modules use a real TPM). The dev mnemonic's accounts play the owner,
operators and reporters; its account 6 is the enroller the owner appointed, whose vouchers
admit the synthetic nodes. Release 1 is approved with a runtime-policy hash.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from contracts.client import RegistryClient, connect
from contracts.constants import PCR_SELECT_BITMAP, TPM_ALG_SHA256
from contracts.quote import (
    AkPublic,
    ContractQuote,
    ak_public,
    build_attest,
    pcr_digest,
    sign_attest,
)
from contracts.voucher import vouch_for
from hardware.chain import Anvil

DEV_MNEMONIC = "test test test test test test test test test test test junk"
ETHER = 10**18
GOOD_DIGEST = pcr_digest([hashlib.sha256(b"approved software").digest()])
BAD_DIGEST = pcr_digest([hashlib.sha256(b"tampered software").digest()])
RELEASE = 1
RUNTIME_POLICY = hashlib.sha256(b"runtime policy of release 1").digest()
HANDSHAKE_DOMAIN = b"shadowmesh/handshake/v1"  # what clients' handshake quotes carry
FIRMWARE = 0x20191023
INTERVAL = 3600
UNBONDING = 86_400
FRESHNESS = 64

_clock = itertools.count(10_000, 1_000)  # TPM clock readings that only move forward


def dev_accounts(n: int) -> list[LocalAccount]:
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)
    ]


ENROLLER = dev_accounts(7)[6]  # signs vouchers only: needs no ether


def rpc(w3: Web3, method: str, *params: object) -> object:
    reply = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def advance(w3: Web3, seconds: int) -> None:
    """Move chain time forward and mine a block stamped with it."""
    rpc(w3, "evm_increaseTime", seconds)
    rpc(w3, "evm_mine")


def mine(w3: Web3, blocks: int) -> None:
    for _ in range(blocks):
        rpc(w3, "evm_mine")


@dataclass
class ExitNode:
    """A synthetic exit: its node id and a software P-256 AK."""

    node_id: bytes
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls) -> ExitNode:
        return cls(os.urandom(32), ec.generate_private_key(ec.SECP256R1()))

    @property
    def ak(self) -> AkPublic:
        return ak_public(self.key.public_key())

    def quote(
        self,
        client: RegistryClient,
        digest: bytes = GOOD_DIGEST,
        *,
        nonce_block: int | None = None,
        node_id: bytes | None = None,
        clock: int | None = None,
        reset_count: int = 0,
        firmware: int = FIRMWARE,
        pcr_select: tuple[tuple[int, bytes], ...] = ((TPM_ALG_SHA256, PCR_SELECT_BITMAP),),
    ) -> tuple[ContractQuote, int]:
        """A registry-domain quote answering the registry's challenge (or block
        ``nonce_block``); also what a slashing proof must be."""
        if nonce_block is None:
            nonce_block = client.challenge(self.node_id).block_number
        block_hash = bytes(client.w3.eth.get_block(nonce_block)["hash"])
        extra = client.qualifying_data(block_hash, node_id or self.node_id)
        attest = build_attest(
            extra,
            digest,
            clock=next(_clock) if clock is None else clock,
            reset_count=reset_count,
            firmware_version=firmware,
            pcr_select=pcr_select,
        )
        return sign_attest(self.key, attest), nonce_block

    def handshake_quote(
        self,
        nonce: bytes,
        digest: bytes,
        clock: int | None = None,
        *,
        reset_count: int = 0,
        pcr_select: tuple[tuple[int, bytes], ...] = ((TPM_ALG_SHA256, PCR_SELECT_BITMAP),),
    ) -> ContractQuote:
        """A quote as a client receives it in a handshake: its own random nonce, in the
        handshake domain SHA-256("shadowmesh/handshake/v1" || nonce || nodeId)."""
        attest = build_attest(
            hashlib.sha256(HANDSHAKE_DOMAIN + nonce + self.node_id).digest(),
            digest,
            clock=next(_clock) if clock is None else clock,
            reset_count=reset_count,
            pcr_select=pcr_select,
        )
        return sign_attest(self.key, attest)

    def voucher(self, client: RegistryClient, enroller: LocalAccount = ENROLLER) -> bytes:
        """``enroller``'s voucher for this node's id and AK on ``client``'s registry, made
        out to ``client``'s account as the operator that registers."""
        assert client.account is not None
        return vouch_for(enroller, client, self.node_id, self.ak, operator=client.account.address)

    def register(self, client: RegistryClient, stake: int = 10 * ETHER, endpoint: str = "") -> None:
        quote, block = self.quote(client)
        client.register(
            self.node_id,
            endpoint or f"wss://{self.node_id[:4].hex()}.exit.example:443/ws",
            self.ak,
            quote,
            block,
            stake_wei=stake,
            voucher=self.voucher(client),
        )


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    with Anvil(accounts=6, balance_ether=100_000) as node:
        yield node  # type: ignore[misc]


@pytest.fixture(scope="module")
def w3(chain: Anvil) -> Web3:
    return connect(chain.rpc_url)


@pytest.fixture(scope="module")
def accounts() -> list[LocalAccount]:
    return dev_accounts(6)


@pytest.fixture(scope="module")
def deployed(w3: Web3, accounts: list[LocalAccount]) -> RegistryClient:
    client = RegistryClient.deploy(
        w3,
        accounts[0],
        minimum_stake_wei=10 * ETHER,
        attestation_interval_s=INTERVAL,
        unbonding_delay_s=UNBONDING,
        freshness_blocks=FRESHNESS,
    )
    client.approve_digest(GOOD_DIGEST)
    client.approve_release(RELEASE, RUNTIME_POLICY)
    client.set_enroller(ENROLLER.address)
    return client


@pytest.fixture
def registry(w3: Web3, deployed: RegistryClient) -> Iterator[RegistryClient]:
    """The module's registry, rolled back after each test."""
    snapshot = rpc(w3, "evm_snapshot")
    try:
        yield deployed
    finally:
        rpc(w3, "evm_revert", snapshot)


@pytest.fixture
def owner(registry: RegistryClient, accounts: list[LocalAccount]) -> RegistryClient:
    return registry.with_account(accounts[0])


@pytest.fixture
def operator(registry: RegistryClient, accounts: list[LocalAccount]) -> RegistryClient:
    return registry.with_account(accounts[1])


@pytest.fixture
def reporter(registry: RegistryClient, accounts: list[LocalAccount]) -> RegistryClient:
    return registry.with_account(accounts[2])


@pytest.fixture
def stranger(registry: RegistryClient, accounts: list[LocalAccount]) -> RegistryClient:
    return registry.with_account(accounts[3])


class Kit:
    """What the test modules use (they cannot import this conftest under importlib mode)."""

    ExitNode = ExitNode
    GOOD = GOOD_DIGEST
    BAD = BAD_DIGEST
    ETHER = ETHER
    INTERVAL = INTERVAL
    UNBONDING = UNBONDING
    FRESHNESS = FRESHNESS
    ENROLLER = ENROLLER
    RELEASE = RELEASE
    RUNTIME_POLICY = RUNTIME_POLICY
    FIRMWARE = FIRMWARE
    dev_accounts = staticmethod(dev_accounts)

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3

    def advance(self, seconds: int) -> None:
        advance(self.w3, seconds)

    def to_window(self, offset: int, windows: int = 1) -> None:
        """Move chain time to ``offset`` seconds into the ``windows``-th attestation window
        (block.timestamp // INTERVAL) after the current one."""
        now = int(self.w3.eth.get_block("latest")["timestamp"])
        advance(self.w3, (now // INTERVAL + windows) * INTERVAL + offset - now)

    def mine(self, blocks: int) -> None:
        mine(self.w3, blocks)

    def rpc(self, method: str, *params: object) -> object:
        return rpc(self.w3, method, *params)

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(address))  # type: ignore[arg-type]


@pytest.fixture
def kit(w3: Web3) -> Kit:
    return Kit(w3)
