"""ExitNodeRegistry on Anvil (osaka): every function and every revert reason."""

from __future__ import annotations

import os

import pytest
from web3 import Web3

from contracts.client import RegistryClient
from contracts.constants import PCR_SELECT_BITMAP, TPM_ALG_SHA256
from contracts.errors import RegistryReverted
from contracts.quote import ContractQuote, build_attest, sign_attest

pytestmark = pytest.mark.integration


def reverts(reason: str):  # type: ignore[no-untyped-def]
    return pytest.raises(RegistryReverted, match=f"^{reason}$")


# ----- deployment and owner -----


def test_deploy_sets_parameters(deployed, accounts):
    cfg = deployed.config()
    assert cfg.owner == accounts[0].address
    assert cfg.minimum_stake_wei == 10 * 10**18
    assert (cfg.attestation_interval_s, cfg.unbonding_delay_s, cfg.freshness_blocks) == (
        3600,
        86_400,
        64,
    )
    assert deployed.node_count() == 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((10, 0, 86_400, 64), "interval out of range"),
        ((10, 4, 86_400, 64), "interval out of range"),
        ((10, 7 * 86_400 + 1, 30 * 86_400, 64), "interval out of range"),
        ((10, 3600, 0, 64), "unbonding delay out of range"),  # leave before a slash lands
        ((10, 3600, 3599, 64), "unbonding delay out of range"),
        ((10, 3 * 3600, 6 * 3600 - 1, 64), "unbonding delay out of range"),  # < 2 intervals
        ((10, 3600, 365 * 86_400 + 1, 64), "unbonding delay out of range"),
        ((10, 3600, 2**64 - 1, 64), "unbonding delay out of range"),  # would wrap uint64
        ((10, 3600, 86_400, 0), "freshness must be 1..256 blocks"),
        ((10, 3600, 86_400, 257), "freshness must be 1..256 blocks"),
        ((0, 3600, 86_400, 64), "minimum stake out of range"),
    ],
)
def test_deploy_rejects_bad_parameters(w3, accounts, args, reason):
    with reverts(reason):
        RegistryClient.deploy(
            w3,
            accounts[0],
            minimum_stake_wei=args[0],
            attestation_interval_s=args[1],
            unbonding_delay_s=args[2],
            freshness_blocks=args[3],
        )


def test_digest_policy_is_owner_only(owner, stranger, kit):
    digest = os.urandom(32)
    with reverts("not owner"):
        stranger.approve_digest(digest)
    assert owner.approve_digest(digest).event_names() == ["DigestApproved"]
    assert owner.digest_approved(digest)
    with reverts("digest already approved"):
        owner.approve_digest(digest)
    with reverts("not owner"):
        stranger.revoke_digest(digest)
    assert owner.revoke_digest(digest).event_names() == ["DigestRevoked"]
    assert not owner.digest_approved(digest)
    with reverts("digest not approved"):
        owner.revoke_digest(digest)


def test_deploy_accepts_the_bounds(w3, accounts):
    for interval, delay in ((5, 3600), (7 * 86_400, 365 * 86_400)):
        cfg = RegistryClient.deploy(
            w3, accounts[0], attestation_interval_s=interval, unbonding_delay_s=delay
        ).config()
        assert (cfg.attestation_interval_s, cfg.unbonding_delay_s) == (interval, delay)


def test_release_policy_is_owner_only(owner, stranger, kit):
    policy = os.urandom(32)
    with reverts("not owner"):
        stranger.approve_release(7, policy)
    for release, value, reason in (
        (0, policy, "zero release"),
        (7, bytes(32), "zero runtime policy"),
        (kit.RELEASE, policy, "release already approved"),
    ):
        with reverts(reason):
            owner.approve_release(release, value)
    assert owner.approve_release(7, policy).event_names() == ["ReleaseApproved"]
    assert owner.runtime_policy(7) == policy
    assert owner.runtime_policy(kit.RELEASE) == kit.RUNTIME_POLICY
    with reverts("not owner"):
        stranger.revoke_release(7)
    assert owner.revoke_release(7).event_names() == ["ReleaseRevoked"]
    assert owner.runtime_policy(7) is None
    with reverts("release not approved"):
        owner.revoke_release(7)
    with reverts("release was revoked"):  # a number never names a second policy
        owner.approve_release(7, os.urandom(32))


def test_node_names_an_approved_release(owner, operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    with reverts("release not approved"):
        operator.register(node.node_id, "wss://e/ws", node.ak, quote, block,
                          stake_wei=10 * kit.ETHER, voucher=node.voucher(operator),
                          release=2)  # fmt: skip
    node.register(operator)
    assert operator.node(node.node_id).release == kit.RELEASE
    owner.approve_release(2, os.urandom(32))
    quote, block = node.quote(operator)
    assert operator.attest(node.node_id, quote, block, release=2).gas_used > 0
    assert operator.node(node.node_id).release == 2
    owner.revoke_release(2)
    quote, block = node.quote(operator)
    with reverts("release not approved"):
        operator.attest(node.node_id, quote, block, release=2)
    operator.attest(node.node_id, quote, block, release=kit.RELEASE)


def test_transfer_ownership_takes_two_steps(owner, stranger, accounts):
    with reverts("not owner"):
        stranger.transfer_ownership(accounts[3].address)
    with reverts("zero owner"):
        owner.transfer_ownership("0x" + "00" * 20)
    assert owner.transfer_ownership(accounts[2].address).event_names() == [
        "OwnershipTransferStarted"
    ]
    assert owner.config().owner == accounts[0].address  # nothing moved yet
    assert owner.transfer_ownership(accounts[3].address).event_names() == [
        "OwnershipTransferStarted"
    ]  # a mistyped address is replaced before anyone accepts
    with reverts("not pending owner"):
        owner.with_account(accounts[2]).accept_ownership()
    owner.approve_digest(os.urandom(32))  # the old owner still rules until acceptance
    assert stranger.config().pending_owner == accounts[3].address
    assert stranger.accept_ownership().event_names() == ["OwnershipTransferred"]
    cfg = stranger.config()
    assert (cfg.owner, cfg.pending_owner) == (accounts[3].address, "0x" + "00" * 20)
    stranger.approve_digest(os.urandom(32))  # the new owner may now set policy
    with reverts("not owner"):
        owner.approve_digest(os.urandom(32))


# ----- registration -----


def test_register_and_show(operator, accounts, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    result = operator.register(
        node.node_id, "wss://exit.example/ws", node.ak, quote, block,
        stake_wei=12 * kit.ETHER, voucher=node.voucher(operator),
    )  # fmt: skip
    assert result.event_names() == ["NodeEnrolled", "NodeRegistered", "AttestationUpdated"]
    assert result.events[0].args["enroller"] == kit.ENROLLER.address
    assert result.events[1].args["stake"] == 12 * kit.ETHER
    info = operator.node(node.node_id)
    assert info.operator == accounts[1].address
    assert (info.endpoint, info.status, info.reputation) == ("wss://exit.example/ws", "active", 500)
    assert (info.ak, info.stake_wei, info.pcr_digest) == (node.ak, 12 * kit.ETHER, kit.GOOD)
    assert (info.release, info.firmware_version) == (kit.RELEASE, kit.FIRMWARE)
    assert info.last_nonce_block == block and info.healthy
    assert operator.is_healthy(node.node_id, 500) and not operator.is_healthy(node.node_id, 501)
    assert list(operator.healthy_nodes()) == [node.node_id]
    assert operator.node_count() == 1


def test_register_rejects_low_stake_duplicates_and_bad_endpoints(operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    with reverts("stake below minimum"):
        operator.register(node.node_id, "e", node.ak, quote, block, stake_wei=10 * kit.ETHER - 1,
                          voucher=node.voucher(operator))  # fmt: skip
    for endpoint in ("", "x" * 257):
        with reverts("endpoint length out of range"):
            operator.register(
                node.node_id, endpoint, node.ak, quote, block,
                stake_wei=10 * kit.ETHER, voucher=node.voucher(operator),
            )  # fmt: skip
    node.register(operator)
    quote, block = node.quote(operator)
    with reverts("node already registered"):
        operator.register(node.node_id, "e", node.ak, quote, block, stake_wei=10 * kit.ETHER,
                          voucher=node.voucher(operator))  # fmt: skip
    other = kit.ExitNode(os.urandom(32), node.key)  # same AK, another node id
    quote, block = other.quote(operator)
    with reverts("AK already registered"):
        operator.register(other.node_id, "e", other.ak, quote, block, stake_wei=10 * kit.ETHER,
                          voucher=other.voucher(operator))  # fmt: skip


def _register(client: RegistryClient, node, quote: ContractQuote, block: int, kit) -> None:  # type: ignore[no-untyped-def]
    client.register(node.node_id, "wss://e/ws", node.ak, quote, block, stake_wei=10 * kit.ETHER,
                    voucher=node.voucher(client))  # fmt: skip


def test_tampered_quote_byte_is_rejected(operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    attest = bytearray(quote.attest)
    attest[-48] ^= 0x01  # inside firmwareVersion: still parses, signature no longer matches
    with reverts("bad quote signature"):
        _register(operator, node, ContractQuote(bytes(attest), quote.r, quote.s), block, kit)
    with reverts("bad quote signature"):
        _register(operator, node, ContractQuote(quote.attest, quote.s, quote.r), block, kit)
    _register(operator, node, quote, block, kit)  # the untouched quote passes


def test_quote_signed_by_another_key_is_rejected(operator, kit):
    node, impostor = kit.ExitNode.new(), kit.ExitNode.new()
    quote, block = impostor.quote(operator, node_id=node.node_id)
    with reverts("bad quote signature"):
        _register(operator, node, quote, block, kit)


def test_wrong_nonce_is_rejected(operator, kit):
    node = kit.ExitNode.new()
    # Bound to another node id.
    quote, block = node.quote(operator, node_id=os.urandom(32))
    with reverts("nonce mismatch"):
        _register(operator, node, quote, block, kit)
    # A random nonce instead of the block hash, in the handshake's domain.
    quote = node.handshake_quote(os.urandom(32), kit.GOOD)
    with reverts("nonce mismatch"):
        _register(operator, node, quote, operator.challenge(node.node_id).block_number, kit)
    # The block's hash in the handshake domain (as an exit answers a client's nonce).
    challenge = operator.challenge(node.node_id)
    quote = node.handshake_quote(challenge.block_hash, kit.GOOD)
    with reverts("nonce mismatch"):
        _register(operator, node, quote, challenge.block_number, kit)
    # The right hash, but claimed for another block.
    quote, block = node.quote(operator)
    kit.mine(1)
    with reverts("nonce mismatch"):
        _register(operator, node, quote, block + 1, kit)


def test_old_or_future_nonce_block_is_rejected(operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    kit.mine(kit.FRESHNESS + 1)
    with reverts("nonce block not recent"):
        _register(operator, node, quote, block, kit)
    latest = operator.w3.eth.block_number
    with reverts("nonce block not recent"):
        _register(operator, node, quote, latest + 5, kit)


def test_unapproved_digest_is_rejected(operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator, kit.BAD)
    with reverts("PCR digest not approved"):
        _register(operator, node, quote, block, kit)


@pytest.mark.parametrize(
    "change",
    [
        {"magic": 0xFF544348},
        {"attest_type": 0x8014},
        {"pcr_select": ((0x0004, b"\xff\x00\x80"),)},  # SHA-1 bank
        {"pcr_select": ()},
        {"pcr_select": ((0x000B, b""),)},
        {"pcr_select": ((0x000B, b"\xff\x00\x80\x00"),)},  # 32 PCRs' worth of bitmap
        {"pcr_select": ((0x000B, b"\xff\x00\x80"), (0x000B, b"\xff\x00\x80"))},  # two banks
        {"digest_size": 31},
        {"extra_size": 31},
        {"trailing": True},
        {"truncate": True},
    ],
)
def test_malformed_quote_is_rejected(operator, kit, change):
    node = kit.ExitNode.new()
    challenge = operator.challenge(node.node_id)
    extra = challenge.qualifying_data[: change.get("extra_size", 32)]
    digest = kit.GOOD[: change.get("digest_size", 32)]
    kwargs = {k: v for k, v in change.items() if k in ("magic", "attest_type", "pcr_select")}
    attest = build_attest(extra, digest, **kwargs)
    if change.get("trailing"):
        attest += b"\x00"
    if change.get("truncate"):
        attest = attest[:-1]
    with reverts("malformed quote"):
        _register(operator, node, sign_attest(node.key, attest), challenge.block_number, kit)


# The golden boot state copied into a resettable PCR (16, 23) while PCRs 8-9 hold what
# really booted: a digest over another selection can equal an approved one, so only the
# selection tells them apart.
OTHER_SELECTIONS = [
    b"\xff\x00\x00",  # 0-7 (the kernel command line in 8-9 left out)
    b"\xff\x00\x81",  # 0-7, 16, 23
    b"\xff\x07\x00",  # 0-10 (IMA's PCR changes with every file: never on chain)
    b"\xff\x03\x80",  # 0-9, 23
    b"\xff\xff\xff",  # all 24
]


@pytest.mark.parametrize("bitmap", OTHER_SELECTIONS)
def test_approved_digest_over_another_selection_is_refused(operator, kit, bitmap):
    node = kit.ExitNode.new()
    challenge = operator.challenge(node.node_id)
    select = ((TPM_ALG_SHA256, bitmap),)
    attest = build_attest(challenge.qualifying_data, kit.GOOD, pcr_select=select)
    with reverts("PCR selection mismatch"):
        _register(operator, node, sign_attest(node.key, attest), challenge.block_number, kit)
    node.register(operator)
    challenge = operator.challenge(node.node_id)
    attest = build_attest(challenge.qualifying_data, kit.GOOD, clock=10**12, pcr_select=select)
    with reverts("PCR selection mismatch"):
        operator.attest(node.node_id, sign_attest(node.key, attest), challenge.block_number)
    assert operator._call("PCR_SELECTION") == PCR_SELECT_BITMAP == operator.pcr_selection()


def test_out_of_policy_quote_over_another_selection_does_not_slash(operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    for bitmap in OTHER_SELECTIONS:
        proof, block = node.quote(reporter, kit.BAD, pcr_select=((TPM_ALG_SHA256, bitmap),))
        with reverts("PCR selection mismatch"):
            reporter.report_out_of_policy(node.node_id, proof, block)
    info = reporter.node(node.node_id)
    assert (info.stake_wei, info.reputation) == (40 * kit.ETHER, 500)


# ----- attestation updates -----


def test_only_operator_updates_and_reputation_grows(operator, stranger, kit):
    node = kit.ExitNode.new()
    kit.to_window(60)
    node.register(operator)
    kit.to_window(5)  # the next window, within the interval: on time
    quote, block = node.quote(operator)
    with reverts("not operator"):
        stranger.attest(node.node_id, quote, block)
    result = operator.attest(node.node_id, quote, block)
    assert result.event_names() == ["ReputationChanged", "AttestationUpdated"]
    assert operator.node(node.node_id).reputation == 510
    with reverts("nonce block not newer"):  # the same quote cannot be replayed
        operator.attest(node.node_id, quote, block)
    quote, block = node.quote(operator, kit.BAD)
    with reverts("PCR digest not approved"):
        operator.attest(node.node_id, quote, block)
    with reverts("unknown node"):
        operator.attest(os.urandom(32), quote, block)


def test_reputation_is_credited_once_per_window(operator, kit):
    """Pumping: updates every block add the on-time bonus once per attestation window."""
    node = kit.ExitNode.new()
    kit.to_window(60)
    node.register(operator)
    for _ in range(6):  # the registration's window: no bonus at all
        quote, block = node.quote(operator)
        assert operator.attest(node.node_id, quote, block).event_names() == ["AttestationUpdated"]
    kit.to_window(5)
    for i in range(6):
        quote, block = node.quote(operator)
        names = operator.attest(node.node_id, quote, block).event_names()
        assert names == (["ReputationChanged"] if i == 0 else []) + ["AttestationUpdated"]
    assert operator.node(node.node_id).reputation == 510
    # The next window pays again, if the attestation is on time (within one interval of the
    # last one, which was a few seconds past the previous window's start; chain time has
    # whole seconds, so the start of this window leaves a margin of those seconds).
    kit.to_window(0)
    quote, block = node.quote(operator)
    operator.attest(node.node_id, quote, block)
    quote, block = node.quote(operator)
    operator.attest(node.node_id, quote, block)
    assert operator.node(node.node_id).reputation == 520


def test_attestation_older_in_tpm_time_is_refused(operator, kit):
    """TPM time only goes back through TPM2_Clear; such quotes cannot update a node."""
    node = kit.ExitNode.new()
    quote, block = node.quote(operator, clock=50_000, reset_count=2)
    _register(operator, node, quote, block, kit)
    for clock, resets in ((50_000, 2), (49_999, 2), (10**15, 1), (1, 0)):
        quote, block = node.quote(operator, clock=clock, reset_count=resets)
        with reverts("quote not newer"):
            operator.attest(node.node_id, quote, block)
    quote, block = node.quote(operator, clock=5, reset_count=3)  # a reboot: a new reset epoch
    operator.attest(node.node_id, quote, block)


def test_attest_with_quote_callback(operator, kit):
    node = kit.ExitNode.new()
    node.register(operator)

    def quote_for(qualifying: bytes) -> ContractQuote:
        return sign_attest(node.key, build_attest(qualifying, kit.GOOD, clock=10**12))

    assert operator.attest_with(node.node_id, quote_for).gas_used > 0


def test_update_endpoint(operator, stranger, kit):
    node = kit.ExitNode.new()
    node.register(operator)
    with reverts("not operator"):
        stranger.update_endpoint(node.node_id, "wss://new/ws")
    assert operator.update_endpoint(node.node_id, "wss://new/ws").event_names() == [
        "EndpointUpdated"
    ]
    assert operator.node(node.node_id).endpoint == "wss://new/ws"
    with reverts("endpoint length out of range"):
        operator.update_endpoint(node.node_id, "")
    operator.request_withdrawal(node.node_id)
    with reverts("node unbonding"):
        operator.update_endpoint(node.node_id, "wss://later/ws")


def test_region_declared_at_registration_and_updated_by_the_operator_only(operator, stranger, kit):
    """An exit declares where it runs (ISO 3166) when it registers and may change it; the
    contract keeps the format (so every client reads the same codes) and the operator's
    exclusive right to it."""
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    result = operator.register(
        node.node_id, "wss://e/ws", node.ak, quote, block, stake_wei=10 * kit.ETHER,
        voucher=node.voucher(operator), region="DE-BE",
    )  # fmt: skip
    assert result.event_names() == [
        "NodeEnrolled", "NodeRegistered", "AttestationUpdated", "RegionUpdated"
    ]  # fmt: skip
    assert operator.node(node.node_id).region == "DE-BE"
    with reverts("not operator"):
        stranger.update_region(node.node_id, "FR")
    assert operator.update_region(node.node_id, "US-CA").event_names() == ["RegionUpdated"]
    assert operator.node(node.node_id).region == "US-CA"
    with reverts("region unchanged"):
        operator.update_region(node.node_id, "US-CA")
    # Malformed codes sent past the Python client's own check: the contract refuses them.
    for raw in (
        b"de\0\0\0\0\0\0",
        b"D\0\0\0\0\0\0\0",
        b"DE-\0\0\0\0\0",
        b"DE-ABCD\0",
        b"DE\0X\0\0\0\0",
        b"DE_B\0\0\0\0",
        b"DEU\0\0\0\0\0",
        b"DE-B\0\0\0E",
    ):
        with reverts("malformed region"):
            operator._transact("updateRegion", node.node_id, raw)
    assert operator.node(node.node_id).region == "US-CA"
    operator.update_region(node.node_id, None)  # withdrawn: unknown again
    assert operator.node(node.node_id).region is None
    operator.request_withdrawal(node.node_id)
    with reverts("node unbonding"):
        operator.update_region(node.node_id, "FR")


def test_register_refuses_a_malformed_region_and_defaults_to_none(operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    struct = (quote.attest, quote.r, quote.s, block)
    args = (node.node_id, "wss://e/ws", node.ak.x, node.ak.y, struct, kit.RELEASE,
            node.voucher(operator))  # fmt: skip
    with reverts("malformed region"):
        operator._transact("register", *args, b"Berlin\0\0", value=10 * kit.ETHER)
    node.register(operator)  # no region said
    assert operator.node(node.node_id).region is None


# ----- staleness and slashing -----


def test_mark_stale_after_window(operator, stranger, kit):
    node = kit.ExitNode.new()
    node.register(operator)
    with reverts("attestation window open"):
        stranger.mark_stale(node.node_id)
    kit.advance(kit.INTERVAL + 1)
    assert not operator.node(node.node_id).healthy  # unhealthy before anyone marks it
    assert stranger.mark_stale(node.node_id).event_names() == ["NodeStale", "ReputationChanged"]
    info = operator.node(node.node_id)
    assert (info.status, info.reputation) == ("stale", 450)
    with reverts("node not active"):
        stranger.mark_stale(node.node_id)
    with reverts("unknown node"):
        stranger.mark_stale(os.urandom(32))
    quote, block = node.quote(operator)  # a late attestation revives it, without a bonus
    assert operator.attest(node.node_id, quote, block).event_names() == ["AttestationUpdated"]
    info = operator.node(node.node_id)
    assert (info.status, info.reputation, info.healthy) == ("active", 450, True)
    quote, block = node.quote(operator)  # nor does an on-time one in the late one's window
    assert operator.attest(node.node_id, quote, block).event_names() == ["AttestationUpdated"]
    assert operator.node(node.node_id).reputation == 450


def test_missed_window_slashes_and_rewards(operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=20 * kit.ETHER)
    with reverts("attestation window open"):
        reporter.report_missed_window(node.node_id)
    kit.advance(kit.INTERVAL + 1)
    before = kit.balance(reporter.account.address)
    result = reporter.report_missed_window(node.node_id)
    assert result.event_names() == ["NodeStale", "NodeSlashed", "ReputationChanged"]
    slashed = result.events[1].args
    assert (slashed["amount"], slashed["reward"]) == (2 * kit.ETHER, kit.ETHER // 5)
    assert kit.balance(reporter.account.address) - before == kit.ETHER // 5 - result.fee_wei
    info = reporter.node(node.node_id)
    assert (info.stake_wei, info.reputation, info.status) == (18 * kit.ETHER, 400, "stale")
    assert reporter.burned() == 2 * kit.ETHER - kit.ETHER // 5
    with reverts("window already slashed"):
        reporter.report_missed_window(node.node_id)


def test_missed_window_below_minimum_stake_ejects(operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator)  # exactly the minimum: any slash leaves it short
    kit.advance(kit.INTERVAL + 1)
    result = reporter.report_missed_window(node.node_id)
    assert "WithdrawalRequested" in result.event_names()
    assert reporter.node(node.node_id).status == "unbonding"
    with reverts("node not active"):
        reporter.report_missed_window(node.node_id)


def test_misbehavior_kind_and_proof_shape(operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator)
    with reverts("unknown misbehavior kind"):
        reporter._transact("reportMisbehavior", node.node_id, 3, b"")
    with reverts("unexpected proof"):
        reporter._transact("reportMisbehavior", node.node_id, 2, b"\x01")
    with reverts("unknown node"):
        reporter.report_missed_window(os.urandom(32))


def test_out_of_policy_quote_slashes(operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    proof, block = node.quote(reporter, kit.BAD)  # a registry quote of unapproved software
    before = kit.balance(reporter.account.address)
    result = reporter.report_out_of_policy(node.node_id, proof, block)
    assert result.event_names() == ["NodeSlashed", "ReputationChanged"]
    assert (result.events[0].args["amount"], result.events[0].args["reward"]) == (
        20 * kit.ETHER,
        2 * kit.ETHER,
    )
    assert kit.balance(reporter.account.address) - before == 2 * kit.ETHER - result.fee_wei
    info = reporter.node(node.node_id)
    assert (info.stake_wei, info.reputation, info.status) == (20 * kit.ETHER, 250, "active")
    with reverts("quote not newer"):  # the same proof cannot slash twice
        reporter.report_out_of_policy(node.node_id, proof, block)


def test_forged_proofs_do_not_slash(operator, reporter, kit):
    node, impostor = kit.ExitNode.new(), kit.ExitNode.new()
    node.register(operator)
    forged, block = impostor.quote(reporter, kit.BAD, node_id=node.node_id)  # wrong key
    with reverts("bad quote signature"):
        reporter.report_out_of_policy(node.node_id, forged, block)
    genuine, block = node.quote(reporter, kit.BAD, clock=10**12)
    swapped = ContractQuote(genuine.attest, forged.r, forged.s)
    with reverts("bad quote signature"):
        reporter.report_out_of_policy(node.node_id, swapped, block)
    good, block = node.quote(reporter, kit.GOOD)
    with reverts("digest within policy"):
        reporter.report_out_of_policy(node.node_id, good, block)
    bad, block = node.quote(reporter, kit.BAD)
    kit.mine(1)
    with reverts("nonce mismatch"):  # claimed for another block than it answered
        reporter.report_out_of_policy(node.node_id, bad, block + 1)
    with reverts("nonce block not recent"):  # a block with no hash yet
        reporter.report_out_of_policy(node.node_id, bad, operator.w3.eth.block_number + 1)
    old, block = node.quote(reporter, kit.BAD, clock=1)  # older than its on-chain attestation
    with reverts("quote not newer"):
        reporter.report_out_of_policy(node.node_id, old, block)
    tampered = bytearray(old.attest)
    with reverts("malformed quote"):
        reporter.report_out_of_policy(
            node.node_id, ContractQuote(bytes(tampered[:-1]), b"\x01" * 32, b"\x01" * 32), block
        )
    assert reporter.node(node.node_id).stake_wei == 10 * kit.ETHER


def test_revoked_digest_becomes_slashable_after_grace(owner, operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    owner.revoke_digest(kit.GOOD)
    proof, proof_block = node.quote(reporter, kit.GOOD)
    with reverts("digest within policy"):  # an interval to upgrade before it counts
        reporter.report_out_of_policy(node.node_id, proof, proof_block)
    quote, block = node.quote(operator)
    with reverts("PCR digest not approved"):  # but it no longer attests
        operator.attest(node.node_id, quote, block)
    kit.advance(kit.INTERVAL + 1)
    assert reporter.report_out_of_policy(node.node_id, proof, proof_block).gas_used > 0


def test_reboot_and_good_attestation_do_not_clear_an_unapproved_quote(operator, reporter, kit):
    """Slashing dodged by rebooting: an unapproved digest quoted after registration stays a
    proof after the node reboots (new reset count) and attests an approved digest again."""
    node = kit.ExitNode.new()
    quote, block = node.quote(operator, clock=1_000, reset_count=4)
    operator.register(node.node_id, "wss://e/ws", node.ak, quote, block,
                      stake_wei=40 * kit.ETHER, voucher=node.voucher(operator))  # fmt: skip
    bad, bad_block = node.quote(reporter, kit.BAD, clock=90_000, reset_count=4)  # kept
    for clock in (10, 20):  # reboot, then attest approved software, twice
        quote, block = node.quote(operator, clock=clock, reset_count=5)
        operator.attest(node.node_id, quote, block)
    result = reporter.report_out_of_policy(node.node_id, bad, bad_block)
    assert result.event_names() == ["NodeSlashed", "ReputationChanged"]
    with reverts("quote not newer"):  # once only
        reporter.report_out_of_policy(node.node_id, bad, bad_block)
    # Quotes from before the registration are not proofs (set-up before it was approved),
    # nor are ones older than the quote that already slashed.
    for clock, resets in ((999, 4), (500, 3), (80_000, 4)):
        early, block = node.quote(reporter, kit.BAD, clock=clock, reset_count=resets)
        with reverts("quote not newer"):
            reporter.report_out_of_policy(node.node_id, early, block)
    later, block = node.quote(reporter, kit.BAD, clock=30, reset_count=5)  # still counts
    assert reporter.report_out_of_policy(node.node_id, later, block).gas_used > 0
    assert reporter.node(node.node_id).stake_wei == 10 * kit.ETHER


def test_revoked_digest_quote_is_forgiven_by_a_newer_attestation(owner, operator, reporter, kit):
    """The documented limit: for a revoked digest the registry cannot tell a quote made
    during the grace period from one made after it, so a newer accepted attestation forgives
    both; the quote slashes only while it is newer than everything accepted."""
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    old = os.urandom(32)
    owner.approve_digest(old)
    quote, block = node.quote(operator, old, clock=2_000, reset_count=1)
    operator.attest(node.node_id, quote, block)  # running `old`, approved then
    owner.revoke_digest(old)
    kit.advance(kit.INTERVAL + 1)  # grace over: `old` is now out of policy
    bad, bad_block = node.quote(reporter, old, clock=3_000, reset_count=1)
    quote, block = node.quote(operator, clock=10, reset_count=2)  # reboot into approved software
    operator.attest(node.node_id, quote, block)
    with reverts("quote not newer"):
        reporter.report_out_of_policy(node.node_id, bad, bad_block)
    bad, block = node.quote(reporter, old, clock=20, reset_count=2)  # newer: it slashes
    assert reporter.report_out_of_policy(node.node_id, bad, block).gas_used > 0


def test_low_reputation_ejects(operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=1000 * kit.ETHER)
    for _ in range(3):  # 500 -> 250 -> 125 -> 62: below the floor of 100
        proof, block = node.quote(reporter, kit.BAD)
        result = reporter.report_out_of_policy(node.node_id, proof, block)
    assert "WithdrawalRequested" in result.event_names()
    info = reporter.node(node.node_id)
    assert (info.reputation, info.status, info.healthy) == (62, "unbonding", False)
    proof, block = node.quote(reporter, kit.BAD)  # still slashable while unbonding
    reporter.report_out_of_policy(node.node_id, proof, block)
    assert reporter.node(node.node_id).stake_wei == 1000 * kit.ETHER // 16


# ----- withdrawal -----


def test_withdrawal_after_unbonding_delay(operator, stranger, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=15 * kit.ETHER)
    with reverts("not unbonding"):
        operator.withdraw(node.node_id)
    with reverts("not operator"):
        stranger.request_withdrawal(node.node_id)
    result = operator.request_withdrawal(node.node_id)
    assert result.event_names() == ["WithdrawalRequested"]
    info = operator.node(node.node_id)
    assert info.status == "unbonding" and not info.healthy
    assert info.unbonding_ends == result.events[0].args["availableAt"]
    with reverts("already unbonding"):
        operator.request_withdrawal(node.node_id)
    quote, block = node.quote(operator)
    with reverts("node not active"):
        operator.attest(node.node_id, quote, block)
    with reverts("unbonding delay not over"):
        operator.withdraw(node.node_id)
    kit.advance(kit.UNBONDING - 60)
    with reverts("unbonding delay not over"):
        operator.withdraw(node.node_id)
    kit.advance(60)
    with reverts("not operator"):
        stranger.withdraw(node.node_id)
    before = kit.balance(operator.account.address)
    result = operator.withdraw(node.node_id)
    assert result.event_names() == ["Withdrawn"]
    assert kit.balance(operator.account.address) - before == 15 * kit.ETHER - result.fee_wei
    with reverts("unknown node"):
        operator.node(node.node_id)
    assert operator.node_count() == 0
    node.register(operator)  # the id and the AK are free again


def test_list_rejects_bad_limits(registry):
    for limit in (0, 501):
        with reverts("limit out of range"):
            registry.healthy_page(0, limit)
    page = registry.healthy_page(5, 10)
    assert page.node_ids == () and page.next_cursor == 0


def test_expected_qualifying_data_matches_python(registry, kit):
    node_id = os.urandom(32)
    challenge = registry.challenge(node_id)
    on_chain = registry._call("expectedQualifyingData", challenge.block_number, node_id)
    assert bytes(on_chain) == challenge.qualifying_data
    assert challenge.block_hash == bytes(registry.w3.eth.get_block(challenge.block_number)["hash"])
    assert Web3.is_address(registry.address)
