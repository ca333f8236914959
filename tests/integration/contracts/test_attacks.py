"""Attacks on enrolment and on the registry's rules, each refused for its stated reason.

Real components: Anvil (--hardfork osaka) from this directory's conftest and two software
TPMs, each manufactured with its own local maker CA (hardware.tpm.Swtpm). TPM "A" is the
honest exit's; TPM "B" is the attacker's, whose EK chains to a root the enroller does not
trust. The ceremony runs as ``shadowmesh enrol`` runs it (attestation.ceremony with the
hybrid identity of exitnode.enrolment).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from eth_account.messages import encode_defunct

from attestation import ceremony, enrol, tpms
from attestation.errors import CeremonyRefused
from attestation.tpm import Tpm
from contracts.client import RegistryClient
from contracts.constants import QUOTED_PCRS
from contracts.errors import RegistryReverted
from contracts.quote import (
    ContractQuote,
    ak_public,
    build_attest,
    registry_qualifying_data,
    sign_attest,
)
from exitnode.enrolment import HybridIdentity, identity_signer, voucher_for
from hardware.tpm import Swtpm
from l2bridge.identity.keys import HybridSigningKey

pytestmark = pytest.mark.integration


def reverts(reason: str):  # type: ignore[no-untyped-def]
    return pytest.raises(RegistryReverted, match=f"^{reason}$")


def refused(step: str):  # type: ignore[no-untyped-def]
    return pytest.raises(CeremonyRefused, match=f"at step {step}:")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Maker:
    """A running swtpm and the CA that certified its EK."""

    swtpm: Swtpm

    @property
    def anchors(self) -> list:  # type: ignore[type-arg]
        return enrol.load_certificates([self.swtpm.root_ca])

    @property
    def intermediates(self) -> list:  # type: ignore[type-arg]
        return enrol.load_certificates([self.swtpm.intermediate_ca])


@pytest.fixture(scope="module")
def tpm_a() -> Iterator[Maker]:
    with Swtpm() as swtpm:
        yield Maker(swtpm)


@pytest.fixture(scope="module")
def tpm_b() -> Iterator[Maker]:
    with Swtpm() as swtpm:
        yield Maker(swtpm)


@pytest.fixture(scope="module")
def ak_a(tpm_a: Maker) -> enrol.AkKey:
    with Tpm(tpm_a.swtpm.tcti) as tpm:
        return enrol.create_ak(tpm)


@pytest.fixture(scope="module")
def ak_b(tpm_b: Maker) -> enrol.AkKey:
    with Tpm(tpm_b.swtpm.tcti) as tpm:
        return enrol.create_ak(tpm)


@pytest.fixture(scope="module")
def identity() -> HybridSigningKey:
    return HybridSigningKey.generate()


def terms_for(client: RegistryClient, operator: str | None = None) -> ceremony.Terms:
    who = operator or client.account.address  # type: ignore[union-attr]
    return ceremony.Terms(
        bytes.fromhex(who[2:]), client.chain_id(), bytes.fromhex(client.address[2:])
    )


def request_from(maker: Maker, ak: enrol.AkKey, key: HybridSigningKey, terms: ceremony.Terms):  # type: ignore[no-untyped-def]
    with Tpm(maker.swtpm.tcti) as tpm:
        return ceremony.make_request(tpm, ak, key.public.encode(), key.node_id, terms)


def start(request: ceremony.Request, trusted: Maker, terms: ceremony.Terms) -> ceremony.Pending:
    return ceremony.start(
        request,
        terms=terms,
        anchors=trusted.anchors,
        intermediates=trusted.intermediates,
        now=_now(),
        identity=HybridIdentity(),
    )


def answer_on(maker: Maker, ak: enrol.AkKey, pending: ceremony.Pending, key: HybridSigningKey):  # type: ignore[no-untyped-def]
    with Tpm(maker.swtpm.tcti) as tpm:
        return ceremony.answer(tpm, ak, pending.request, pending.challenge, identity_signer(key))


def tpm_quote(maker: Maker, ak: enrol.AkKey, qualifying: bytes) -> ContractQuote:
    with Tpm(maker.swtpm.tcti) as tpm:
        handle = tpm.load_ak(ak.private, ak.public)
        attest, signature = tpm.quote(handle, QUOTED_PCRS, qualifying)
    return ContractQuote.from_parts(attest, signature)


def boot_digest(maker: Maker) -> bytes:
    with Tpm(maker.swtpm.tcti) as tpm:
        return tpms.pcr_digest(tpm.read_pcrs(QUOTED_PCRS))


# ----- the honest path, as a control -----


def test_full_ceremony_admits_a_real_tpm(tpm_a, ak_a, identity, owner, operator, kit):  # noqa: PLR0917
    terms = terms_for(operator)
    pending = start(request_from(tpm_a, ak_a, identity, terms), tpm_a, terms)
    record = ceremony.finish(
        pending, answer_on(tpm_a, ak_a, pending, identity), identity=HybridIdentity()
    )
    assert record.node_id == identity.node_id
    voucher = voucher_for(kit.ENROLLER, record)
    owner.approve_digest(boot_digest(tpm_a))
    challenge = operator.challenge(identity.node_id)
    quote = tpm_quote(tpm_a, ak_a, challenge.qualifying_data)
    ak = ak_public(tpms.parse_public(ak_a.tpmt_public).public_key())
    result = operator.register(identity.node_id, "wss://a/ws", ak, quote, challenge.block_number,
                               stake_wei=10 * kit.ETHER, voucher=voucher.signature)  # fmt: skip
    assert result.events[0].name == "NodeEnrolled"
    assert result.events[0].args["enroller"] == kit.ENROLLER.address


# ----- enrolment -----


def test_vouch_for_an_ak_with_no_ek_chain_is_refused(tpm_a, ak_a, identity, operator):
    terms = terms_for(operator)
    request = replace(request_from(tpm_a, ak_a, identity, terms), ek_certificate=b"")
    with refused(ceremony.STEP_EK_CERTIFICATE) as info:
        start(request, tpm_a, terms)
    assert "no EK certificate" in str(info.value)


def test_ek_chain_to_an_untrusted_root_is_refused(tpm_a, tpm_b, ak_b, identity, operator):
    terms = terms_for(operator)
    request = request_from(tpm_b, ak_b, identity, terms)  # B's maker CA is not trusted
    with refused(ceremony.STEP_EK_CERTIFICATE) as info:
        start(request, tpm_a, terms)
    assert "does not chain to a trusted CA" in str(info.value)
    # Nor does a genuine certificate vouch for another EK than the one it certifies.
    genuine = request_from(tpm_a, ak_b, identity, terms)
    with refused(ceremony.STEP_EK_CERTIFICATE) as info:
        start(replace(request, ek_certificate=genuine.ek_certificate), tpm_a, terms)
    assert "does not certify this EK" in str(info.value)


def test_activation_answered_by_another_tpm_is_refused(tpm_a, tpm_b, ak_b, identity, operator):
    """A's genuine EK and certificate, but the AK lives in B: the credential is sealed to A's
    EK for that AK, so B cannot open it, and a guessed answer is not the secret."""
    terms = terms_for(operator)
    with Tpm(tpm_a.swtpm.tcti) as tpm:
        handle, ek_public, cert = tpm.endorsement_key()
        tpm.flush(handle)
    request = ceremony.Request(ek_public, cert or b"", ak_b.tpmt_public, identity.public.encode(),
                               identity.node_id, terms)  # fmt: skip
    pending = start(request, tpm_a, terms)  # everything checkable without the TPM is fine
    with refused(ceremony.STEP_ACTIVATION):
        answer_on(tpm_b, ak_b, pending, identity)
    guessed = ceremony.Answer(os.urandom(32), identity_signer(identity)(
        ceremony.binding_message(request, pending.challenge)))  # fmt: skip
    with refused(ceremony.STEP_ACTIVATION) as info:
        ceremony.finish(pending, guessed, identity=HybridIdentity())
    assert "the AK is not in that TPM" in str(info.value)


def test_squatting_a_node_id_without_its_hybrid_key_is_refused(  # noqa: PLR0917
    tpm_a, ak_a, identity, operator, stranger, kit
):
    terms = terms_for(stranger)
    squatter = HybridSigningKey.generate()
    # The victim's nodeId with the squatter's own key: the id is not the key's hash.
    claimed = replace(request_from(tpm_a, ak_a, squatter, terms), node_id=identity.node_id)
    with refused(ceremony.STEP_IDENTITY) as info:
        start(claimed, tpm_a, terms)
    assert "not the hash of the identity key" in str(info.value)
    # The victim's public key copied: the squatter cannot sign the binding with it.
    copied = request_from(tpm_a, ak_a, identity, terms)
    pending = start(copied, tpm_a, terms)
    with Tpm(tpm_a.swtpm.tcti) as tpm:
        reply = ceremony.answer(tpm, ak_a, copied, pending.challenge, identity_signer(squatter))
    with refused(ceremony.STEP_IDENTITY_SIGNATURE):
        ceremony.finish(pending, reply, identity=HybridIdentity())
    # And on chain, a voucher for the squatter's own node id does not register the victim's.
    node = kit.ExitNode(identity.node_id, kit.ExitNode.new().key)
    own = kit.ExitNode(squatter.node_id, node.key)
    quote, block = node.quote(stranger)
    with reverts("voucher not from an enroller"):
        stranger.register(node.node_id, "wss://squat/ws", node.ak, quote, block,
                          stake_wei=10 * kit.ETHER, voucher=own.voucher(stranger))  # fmt: skip


def test_answer_replayed_into_another_ceremony_is_refused(
    tpm_a, ak_a, identity, operator, stranger
):
    """The identity signature covers the terms and the challenge: an answer (or a signature)
    from one ceremony does not finish another, e.g. one for a different operator."""
    mine = terms_for(operator)
    first = start(request_from(tpm_a, ak_a, identity, mine), tpm_a, mine)
    first_reply = answer_on(tpm_a, ak_a, first, identity)
    second = start(request_from(tpm_a, ak_a, identity, mine), tpm_a, mine)
    with refused(ceremony.STEP_ACTIVATION):
        ceremony.finish(second, first_reply, identity=HybridIdentity())
    theirs = terms_for(stranger)
    other = start(request_from(tpm_a, ak_a, identity, theirs), tpm_a, theirs)
    fresh = answer_on(tpm_a, ak_a, other, identity)
    spliced = ceremony.Answer(fresh.credential, first_reply.identity_signature)
    with refused(ceremony.STEP_IDENTITY_SIGNATURE):
        ceremony.finish(other, spliced, identity=HybridIdentity())
    # An exit that asked for other terms than the enroller offers is refused up front.
    with refused(ceremony.STEP_TERMS) as info:
        start(request_from(tpm_a, ak_a, identity, theirs), tpm_a, mine)
    assert "asks for operator" in str(info.value)


# ----- vouchers -----


def test_voucher_replayed_for_another_operator_or_registry_is_refused(
    w3, accounts, operator, stranger, kit
):
    node = kit.ExitNode.new()
    voucher = node.voucher(operator)  # made out to the operator, on this registry
    quote, block = node.quote(stranger)
    with reverts("voucher not from an enroller"):
        stranger.register(node.node_id, "wss://copy/ws", node.ak, quote, block,
                          stake_wei=10 * kit.ETHER, voucher=voucher)  # fmt: skip
    other = RegistryClient.deploy(w3, accounts[0]).with_account(accounts[1])
    other.with_account(accounts[0]).approve_digest(kit.GOOD)
    other.with_account(accounts[0]).approve_release(kit.RELEASE, kit.RUNTIME_POLICY)
    other.with_account(accounts[0]).set_enroller(kit.ENROLLER.address)
    quote, block = node.quote(other)
    with reverts("voucher not from an enroller"):  # EIP-712 domain: another contract
        other.register(node.node_id, "wss://copy/ws", node.ak, quote, block,
                       stake_wei=10 * kit.ETHER, voucher=voucher)  # fmt: skip
    # The old personal_sign form over the same digest is not an EIP-712 signature.
    digest = operator.voucher_digest(node.node_id, node.ak, operator=operator.account.address)
    legacy = bytes(kit.ENROLLER.sign_message(encode_defunct(primitive=digest)).signature)
    quote, block = node.quote(operator)
    with reverts("voucher not from an enroller"):
        operator.register(node.node_id, "wss://e/ws", node.ak, quote, block,
                          stake_wei=10 * kit.ETHER, voucher=legacy)  # fmt: skip
    quote, block = node.quote(operator)
    operator.register(node.node_id, "wss://e/ws", node.ak, quote, block,
                      stake_wei=10 * kit.ETHER, voucher=voucher)  # fmt: skip


# ----- quote domains -----


def test_handshake_quote_is_no_slashing_proof(operator, reporter, kit):
    """Clients collect handshake quotes by the thousand; one of unapproved software, even
    answering a recent block hash, must not slash: its qualifying data is another domain."""
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    challenge = reporter.challenge(node.node_id)
    collected = node.handshake_quote(challenge.block_hash, kit.BAD)
    with reverts("nonce mismatch"):
        reporter.report_out_of_policy(node.node_id, collected, challenge.block_number)
    assert reporter.node(node.node_id).stake_wei == 40 * kit.ETHER


def test_quote_for_another_registry_or_chain_is_refused(w3, accounts, operator, reporter, kit):
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    other = RegistryClient.deploy(w3, accounts[0])
    challenge = reporter.challenge(node.node_id)
    for chain_id, registry in ((reporter.chain_id(), other.address), (1, reporter.address)):
        extra = registry_qualifying_data(chain_id, registry, challenge.block_hash, node.node_id)
        for digest in (kit.GOOD, kit.BAD):
            quote = sign_attest(node.key, build_attest(extra, digest, clock=10**12))
            with reverts("nonce mismatch"):
                operator.attest(node.node_id, quote, challenge.block_number)
            with reverts("nonce mismatch"):
                reporter.report_out_of_policy(node.node_id, quote, challenge.block_number)
    assert reporter.node(node.node_id).stake_wei == 40 * kit.ETHER


# ----- registry rules -----


def test_missed_window_slash_inside_revocation_grace_is_refused(owner, operator, reporter, kit):
    """The owner revokes the node's digest just before its deadline: the node cannot attest
    until it upgrades, and nobody may slash it for that during one interval."""
    node = kit.ExitNode.new()
    node.register(operator, stake=20 * kit.ETHER)
    kit.advance(kit.INTERVAL - 30)
    owner.revoke_digest(kit.GOOD)
    kit.advance(60)  # the deadline passed
    with reverts("revocation grace"):
        reporter.report_missed_window(node.node_id)
    upgraded = hashlib.sha256(b"patched boot chain").digest()
    owner.approve_digest(upgraded)
    quote, block = node.quote(operator, upgraded)
    operator.attest(node.node_id, quote, block)  # upgraded inside the grace
    assert reporter.node(node.node_id).stake_wei == 20 * kit.ETHER
    # The grace is not an amnesty: a node that never upgrades is slashed once it ends.
    lazy = kit.ExitNode.new()
    owner.approve_digest(kit.GOOD)
    lazy.register(operator, stake=20 * kit.ETHER)
    owner.approve_release(9, os.urandom(32))
    quote, block = lazy.quote(operator)
    operator.attest(lazy.node_id, quote, block, release=9)
    kit.advance(kit.INTERVAL - 30)
    owner.revoke_release(9)  # a release revocation gives the same grace
    kit.advance(60)
    with reverts("revocation grace"):
        reporter.report_missed_window(lazy.node_id)
    kit.advance(kit.INTERVAL)
    assert reporter.report_missed_window(lazy.node_id).events[1].name == "NodeSlashed"


def test_withdrawal_cannot_outrun_a_pending_slash(w3, accounts, operator, reporter, kit):
    with reverts("unbonding delay out of range"):
        RegistryClient.deploy(w3, accounts[0], attestation_interval_s=kit.INTERVAL,
                              unbonding_delay_s=0)  # fmt: skip
    # With any allowed delay, the stake stays slashable while it unbonds.
    node = kit.ExitNode.new()
    node.register(operator, stake=40 * kit.ETHER)
    proof, block = node.quote(reporter, kit.BAD)  # the node quoted unapproved software
    operator.request_withdrawal(node.node_id)
    with reverts("unbonding delay not over"):
        operator.withdraw(node.node_id)
    assert reporter.report_out_of_policy(node.node_id, proof, block).events[0].name == "NodeSlashed"
    kit.advance(kit.UNBONDING)
    assert operator.withdraw(node.node_id).events[0].args["amount"] == 20 * kit.ETHER


def test_firmware_downgrade_is_refused(operator, kit):
    node = kit.ExitNode.new()
    quote, block = node.quote(operator, firmware=kit.FIRMWARE)
    operator.register(node.node_id, "wss://fw/ws", node.ak, quote, block,
                      stake_wei=10 * kit.ETHER, voucher=node.voucher(operator))  # fmt: skip
    quote, block = node.quote(operator, firmware=kit.FIRMWARE - 1)
    with reverts("firmware downgraded"):
        operator.attest(node.node_id, quote, block)
    quote, block = node.quote(operator, firmware=kit.FIRMWARE + 1)  # an upgrade is fine
    operator.attest(node.node_id, quote, block)
    assert operator.node(node.node_id).firmware_version == kit.FIRMWARE + 1
    quote, block = node.quote(operator, firmware=kit.FIRMWARE)  # and final
    with reverts("firmware downgraded"):
        operator.attest(node.node_id, quote, block)


def test_ownership_cannot_be_handed_to_a_wrong_address(owner, accounts, kit):
    unreachable = "0x" + "de" * 20  # nobody holds its key
    owner.transfer_ownership(unreachable)
    owner.approve_digest(os.urandom(32))  # still the owner
    owner.transfer_ownership(accounts[1].address)  # corrected before it took effect
    assert owner.config().pending_owner == accounts[1].address
