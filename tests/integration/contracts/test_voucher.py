"""Enrolment vouchers on chain: only an appointed enroller's low-s EIP-712 signature over
exactly (this registry, this chain, the sending operator, the node id, the AK) admits a node; each
bad voucher is refused with its reason, a registration copied by another sender is refused,
and removing an enroller stops its new vouchers but keeps its nodes."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_keys import keys

from contracts.constants import SECP256K1_ORDER
from contracts.errors import RegistryReverted, VoucherError
from contracts.quote import AkPublic
from contracts.voucher import recover_voucher, sign_voucher, voucher_digest

pytestmark = pytest.mark.integration

MALFORMED = "malformed enrolment voucher"
NOT_ENROLLER = "voucher not from an enroller"


def reverts(reason: str):  # type: ignore[no-untyped-def]
    return pytest.raises(RegistryReverted, match=f"^{reason}$")


def submit(client, node, voucher: bytes, kit) -> None:  # type: ignore[no-untyped-def]
    quote, block = node.quote(client)
    client.register(node.node_id, "wss://v/ws", node.ak, quote, block,
                    stake_wei=10 * kit.ETHER, voucher=voucher)  # fmt: skip


def high_s(voucher: bytes) -> bytes:
    """The malleable twin: (r, n - s, v ^ 1) recovers the same signer."""
    s = int.from_bytes(voucher[32:64], "big")
    return voucher[:32] + (SECP256K1_ORDER - s).to_bytes(32, "big") + bytes([55 - voucher[64]])


def plain_ecrecover(message_hash: bytes, signature: bytes) -> str:
    vrs = (signature[64] - 27, int.from_bytes(signature[:32], "big"),
           int.from_bytes(signature[32:64], "big"))  # fmt: skip
    public = keys.Signature(vrs=vrs).recover_public_key_from_msg_hash(message_hash)
    return str(public.to_checksum_address())


def test_python_digest_is_the_contracts(operator, accounts, kit):
    node = kit.ExitNode.new()
    chain_id = operator.chain_id()
    for who in (accounts[1].address, accounts[3].address):
        assert voucher_digest(operator.address, chain_id, node.node_id, node.ak, operator=who) == (
            operator.voucher_digest(node.node_id, node.ak, operator=who)
        )
    assert operator.voucher_digest(node.node_id, node.ak, operator=accounts[1].address) != (
        operator.voucher_digest(node.node_id, node.ak, operator=accounts[3].address)
    )


def test_malformed_vouchers_are_refused(operator, kit):
    node = kit.ExitNode.new()
    good = node.voucher(operator)
    for bad in (b"", good[:64], good + b"\x00", bytes([1]) * 65,
                good[:64] + b"\x00", good[:64] + b"\x01", good[:64] + b"\x1d"):  # fmt: skip
        with reverts(MALFORMED):
            submit(operator, node, bad, kit)
    twin = high_s(good)
    # The twin is a valid signature by the enroller (plain ecrecover, no low-s rule, accepts
    # it); the contract still refuses it.
    me = operator.account.address
    digest = operator.voucher_digest(node.node_id, node.ak, operator=me)
    assert plain_ecrecover(digest, twin) == kit.ENROLLER.address
    with reverts(MALFORMED):
        submit(operator, node, twin, kit)
    with pytest.raises(VoucherError, match="upper half"):
        recover_voucher(
            twin, operator.address, operator.chain_id(), node.node_id, node.ak, operator=me
        )
    garbage = os.urandom(32) + (1).to_bytes(32, "big") + b"\x1b"  # well formed, signs nothing
    with reverts(NOT_ENROLLER):
        submit(operator, node, garbage, kit)
    assert operator.node_count() == 0
    submit(operator, node, good, kit)
    assert operator.node(node.node_id).status == "active"


def test_vouchers_for_anything_else_are_refused(operator, stranger, accounts, kit):
    node = kit.ExitNode.new()
    other = kit.ExitNode.new()
    chain_id = operator.chain_id()
    enroller = kit.ENROLLER
    here, elsewhere = operator.address, "0x" + os.urandom(20).hex()
    me, them = accounts[1].address, accounts[3].address
    wrong = {  # what differs: (signer, registry, chain id, node id, AK), operator
        "by a non-enroller": ((accounts[3], here, chain_id, node.node_id, node.ak), me),
        "for another operator": ((enroller, here, chain_id, node.node_id, node.ak), them),
        "for another node id": ((enroller, here, chain_id, other.node_id, node.ak), me),
        "for another AK": ((enroller, here, chain_id, node.node_id, other.ak), me),
        "for another registry": ((enroller, elsewhere, chain_id, node.node_id, node.ak), me),
        "for another chain": ((enroller, here, chain_id + 1, node.node_id, node.ak), me),
    }
    for what, (args, who) in wrong.items():
        voucher = sign_voucher(*args, operator=who)
        signer = recover_voucher(
            voucher, operator.address, chain_id, node.node_id, node.ak, operator=me
        )
        assert signer != enroller.address, what
        with reverts(NOT_ENROLLER):
            submit(operator, node, voucher, kit)
    # Swapping the AK's coordinates is another AK too.
    swapped = AkPublic(node.ak.y, node.ak.x)
    voucher = sign_voucher(enroller, operator.address, chain_id, node.node_id, swapped, operator=me)
    with reverts(NOT_ENROLLER):
        submit(operator, node, voucher, kit)
    submit(operator, node, node.voucher(operator), kit)
    assert operator.node(node.node_id).operator == me


def test_copied_registration_from_another_sender_is_refused(operator, stranger, accounts, kit):
    """Front-running: everything register takes is public calldata. A stranger who copies a
    pending registration byte for byte into their own transaction is refused, because the
    voucher names the operator; the genuine one then goes through."""
    node = kit.ExitNode.new()
    quote, block = node.quote(operator)
    args = (node.node_id, "wss://v/ws", node.ak, quote, block)
    voucher = node.voucher(operator)
    with reverts(NOT_ENROLLER):
        stranger.register(*args, stake_wei=10 * kit.ETHER, voucher=voucher)
    with reverts(NOT_ENROLLER):  # a bigger stake buys nothing either
        stranger.register(*args, stake_wei=50 * kit.ETHER, voucher=voucher)
    assert operator.node_count() == 0
    operator.register(*args, stake_wei=10 * kit.ETHER, voucher=voucher)
    assert operator.node(node.node_id).operator == accounts[1].address
    # A voucher made out to the stranger admits the node for the stranger only.
    node2 = kit.ExitNode.new()
    theirs = node2.voucher(stranger)
    with reverts(NOT_ENROLLER):
        submit(operator, node2, theirs, kit)
    submit(stranger, node2, theirs, kit)
    assert operator.node(node2.node_id).operator == accounts[3].address


def test_enroller_appointment_and_removal(owner, operator, stranger, accounts, kit):
    second = Account.create()
    with reverts("not owner"):
        stranger.set_enroller(second.address)
    with reverts("zero enroller"):
        owner.set_enroller("0x" + "00" * 20)
    with reverts("not an enroller"):
        owner.set_enroller(second.address, False)
    result = owner.set_enroller(second.address)
    assert result.event_names() == ["EnrollerSet"]
    assert result.events[0].args == {"enroller": second.address, "appointed": True}
    assert owner.is_enroller(second.address) and not owner.is_enroller(accounts[3].address)
    with reverts("already an enroller"):
        owner.set_enroller(second.address)

    admitted, later = kit.ExitNode.new(), kit.ExitNode.new()
    submit(operator, admitted, admitted.voucher(operator, second), kit)
    voucher_made_before_removal = later.voucher(operator, second)
    assert owner.set_enroller(second.address, False).events[0].args["appointed"] is False
    assert not owner.is_enroller(second.address)
    # Its node stays: the check it vouched for was true, and no proof was shown against it.
    info = operator.node(admitted.node_id)
    assert info.status == "active" and info.healthy
    assert list(operator.healthy_nodes()) == [admitted.node_id]
    quote, block = admitted.quote(operator)
    operator.attest(admitted.node_id, quote, block)  # and it keeps attesting
    # Its vouchers, new or made before the removal, admit nobody.
    with reverts(NOT_ENROLLER):
        submit(operator, later, voucher_made_before_removal, kit)
    with reverts(NOT_ENROLLER):
        submit(operator, later, later.voucher(operator, second), kit)
    submit(operator, later, later.voucher(operator), kit)  # the other enroller still counts
    assert operator.node_count() == 2
