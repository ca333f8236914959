"""The exit's registry upkeep and its enrolment voucher, with a software AK and an in-memory
registry that checks vouchers as the contract does: no usable voucher is the state
"no-voucher" with a message saying what to do, never a crash and never a wasted quote."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account

from attestation import constants as ac
from attestation import tpms
from contracts.client import Challenge
from contracts.constants import QUOTED_PCRS
from contracts.errors import RegistryReverted
from contracts.quote import (
    AkPublic,
    ContractQuote,
    ak_public,
    build_attest,
    registry_qualifying_data,
)
from contracts.voucher import Voucher, recover_voucher
from exitnode.upkeep import RegistryUpkeep
from l2bridge.node.config import config_from_mapping
from l2bridge.node.metrics import Metrics

ENROLLER = Account.from_key("0x" + "51" * 32)
STRANGER = Account.from_key("0x" + "52" * 32)
OPERATOR = Account.from_key("0x" + "53" * 32)
ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CHAIN = 31337
DIGEST = hashlib.sha256(b"approved").digest()


class FakeLifecycle:
    """A software AK in the TPM's public format; counts the quotes it makes."""

    def __init__(self, state_dir: Path) -> None:
        self.node_id = os.urandom(32)
        self.state_dir = state_dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = self.key.public_key().public_numbers()
        self.ak_public = tpms.encode_public(
            tpms.EccPublic(ac.TPM_ALG_SHA256, ac.AK_REQUIRED_ATTRIBUTES, b"",
                           n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big"))
        )  # fmt: skip
        self.quotes = 0

    @property
    def ak(self) -> AkPublic:
        return ak_public(self.key.public_key())

    def check_measurement(self) -> bool:
        return True

    def registry_quote(self, qualifying: bytes, pcrs: tuple[int, ...]) -> tuple[bytes, bytes]:
        assert pcrs == QUOTED_PCRS  # the registry's boot selection, never PCR 10 or 23
        self.quotes += 1
        attest = build_attest(qualifying, DIGEST, clock=self.quotes)
        return attest, self.key.sign(attest, ec.ECDSA(hashes.SHA256()))


@dataclass
class Registered:
    status: str
    endpoint: str
    region: str | None = None


@dataclass
class FakeRegistry:
    """Keeps the contract's voucher rule: the signer must be an appointed enroller."""

    address: str = ADDRESS
    account: object = OPERATOR  # the key register is sent with: vouchers name it
    enrollers: set[str] = field(default_factory=lambda: {ENROLLER.address})
    nodes: dict[bytes, Registered] = field(default_factory=dict)
    vouchers: list[bytes] = field(default_factory=list)
    region_updates: list[str | None] = field(default_factory=list)

    def chain_id(self) -> int:
        return CHAIN

    def node(self, node_id: bytes) -> Registered:
        if node_id not in self.nodes:
            raise RegistryReverted("unknown node")
        return self.nodes[node_id]

    def challenge(self, node_id: bytes) -> Challenge:
        block_hash = os.urandom(32)
        return Challenge(
            7, block_hash, registry_qualifying_data(CHAIN, ADDRESS, block_hash, node_id)
        )

    def config(self):  # type: ignore[no-untyped-def]
        return type("Config", (), {"minimum_stake_wei": 10})()

    def register(self, node_id, endpoint, ak, quote, block, *, stake_wei, voucher, release,  # type: ignore[no-untyped-def]
                 region=None):  # fmt: skip
        assert isinstance(quote, ContractQuote) and stake_wei == 10 and release == 1
        signer = recover_voucher(
            voucher, self.address, CHAIN, node_id, ak, operator=OPERATOR.address
        )
        if signer not in self.enrollers:
            raise RegistryReverted("voucher not from an enroller")
        self.vouchers.append(voucher)
        self.nodes[node_id] = Registered("active", endpoint, region)
        return type("Tx", (), {"tx_hash": "0x01"})()

    def attest(self, node_id, quote, block, *, release):  # type: ignore[no-untyped-def]
        return type("Tx", (), {"tx_hash": "0x02"})()

    def update_region(self, node_id, region):  # type: ignore[no-untyped-def]
        self.region_updates.append(region)
        self.nodes[node_id].region = region
        return type("Tx", (), {"tx_hash": "0x03"})()


def upkeep(tmp_path: Path, voucher: Path | None, registry: FakeRegistry | None = None,  # type: ignore[no-untyped-def]
           region: str | None = None):  # fmt: skip
    life = FakeLifecycle(tmp_path / "state")
    reg = registry or FakeRegistry()
    metrics = Metrics("exit")
    u = RegistryUpkeep(lambda: reg, life, "wss://x/ws", interval=60.0, voucher=voucher,  # type: ignore[arg-type]
                       retry_s=1.0, metrics=metrics, region=region)  # fmt: skip
    return u, life, reg, metrics


def write_voucher(path: Path, life: FakeLifecycle, **changes: object) -> Path:
    args: dict[str, object] = {"account": ENROLLER, "contract": ADDRESS, "chain_id": CHAIN,
                               "operator": OPERATOR.address, "node_id": life.node_id,
                               "ak": life.ak}  # fmt: skip
    args.update(changes)
    path.write_text(Voucher.make(**args).dump())  # type: ignore[arg-type]
    return path


def test_no_voucher_configured_says_what_to_run(tmp_path):
    u, life, reg, metrics = upkeep(tmp_path, None)
    assert u.step() == "no-voucher"
    assert "chain.enrolment_voucher" in u.detail
    assert f"shadowmesh enrol request --ak {life.state_dir / 'ak.json'}" in u.detail
    assert life.node_id.hex() in u.detail and ADDRESS in u.detail
    assert f"--operator {OPERATOR.address}" in u.detail
    assert life.quotes == 0 and reg.nodes == {}  # no TPM work, nothing sent
    assert metrics.snapshot()["gauges"]["registry_state"] == 6.0
    assert u.next_wait() == 1.0 and (u.step(), u.next_wait()) == ("no-voucher", 2.0)


def test_unusable_voucher_files_are_no_voucher(tmp_path):
    missing = tmp_path / "missing.json"
    u, life, reg, _ = upkeep(tmp_path, missing)
    assert u.step() == "no-voucher" and "cannot read" in u.detail
    missing.write_text("{not json")
    assert u.step() == "no-voucher" and "malformed voucher file" in u.detail
    missing.write_bytes(b"\x00" * 70_000)
    assert u.step() == "no-voucher" and "too large" in u.detail
    (tmp_path / "dir").mkdir()
    u.voucher_path = tmp_path / "dir"
    assert u.step() == "no-voucher" and "cannot read" in u.detail
    u.voucher_path = missing
    for changes, reason in (
        ({"node_id": os.urandom(32)}, "another node id"),
        ({"ak": AkPublic(life.ak.y, life.ak.x)}, "another AK"),
        ({"contract": "0x" + "ab" * 20}, "voucher is for registry"),
        ({"chain_id": 1}, "for chain 1"),
        ({"operator": STRANGER.address}, f"for operator {STRANGER.address}"),
    ):
        write_voucher(missing, life, **changes)
        assert u.step() == "no-voucher" and reason in u.detail, reason
    assert life.quotes == 0 and reg.nodes == {}


def test_voucher_by_a_non_enroller_is_rejected_by_the_registry(tmp_path):
    path = tmp_path / "voucher.json"
    u, life, reg, _ = upkeep(tmp_path, path)
    write_voucher(path, life, account=STRANGER)
    assert u.step() == "rejected" and u.detail == "voucher not from an enroller"
    reg.enrollers.add(STRANGER.address)  # the owner appoints it: the retry goes through
    assert u.step() == "registered"


def test_a_voucher_written_while_running_is_picked_up_then_not_needed(tmp_path):
    path = tmp_path / "voucher.json"
    u, life, reg, _ = upkeep(tmp_path, path)
    assert u.step() == "no-voucher"
    write_voucher(path, life)
    assert u.step() == "registered" and u.failures == 0
    assert reg.vouchers == [Voucher.parse(path.read_text()).signature]
    path.unlink()
    assert u.step() == "attested"  # registered nodes attest without it
    assert life.quotes == 2


def test_config_carries_the_voucher_path(tmp_path):
    raw = {"chain": {"enrolment_voucher": "keys/voucher.json"}}
    config = config_from_mapping(raw, base_dir=tmp_path)
    assert config.chain.enrolment_voucher == tmp_path / "keys" / "voucher.json"
    assert config_from_mapping({}).chain.enrolment_voucher is None


def test_no_operator_key_is_said_before_any_voucher_or_quote(tmp_path):
    path = tmp_path / "voucher.json"
    u, life, reg, _ = upkeep(tmp_path, path, FakeRegistry(account=None))
    write_voucher(path, life)
    assert u.step() == "no-operator-key" and "operator" in u.detail
    assert life.quotes == 0 and reg.nodes == {}


def test_region_is_declared_at_registration_and_corrected_after(tmp_path):
    """chain.region goes on chain with the registration; a record that later differs (the
    operator moved the node and changed the setting) is corrected at the next attestation."""
    u, life, reg, _ = upkeep(tmp_path, None, region="DE-BE")
    u.voucher_path = write_voucher(tmp_path / "v.json", life)
    assert u.step() == "registered"
    assert reg.nodes[life.node_id].region == "DE-BE" and reg.region_updates == []
    assert u.step() == "attested"
    assert reg.region_updates == []  # unchanged: no transaction
    u.region = "FR"
    assert u.step() == "attested"
    assert reg.region_updates == ["FR"] and reg.nodes[life.node_id].region == "FR"
    u.region = None  # the setting removed: the claim is withdrawn, not left stale
    assert u.step() == "attested"
    assert reg.region_updates == ["FR", None]
