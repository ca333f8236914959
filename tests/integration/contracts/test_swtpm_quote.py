"""A genuine TPM quote (swtpm, through attestation/) is accepted by the contract; the same
quote with one byte changed, or answering an old block, is not; a real out-of-policy quote
slashes. The AK is admitted by an enroller who ran the real enrolment (EK certificate chain
to the swtpm's maker CA, MakeCredential, ActivateCredential in the TPM) and vouched for the
resulting record; a software key quoting the same approved digest cannot use that voucher."""

from __future__ import annotations

import datetime
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import enrol, tpms
from attestation.tpm import Tpm
from contracts.cli import enrolment_ak
from contracts.constants import QUOTED_PCRS
from contracts.errors import RegistryReverted
from contracts.quote import ContractQuote, ak_public, build_attest, qualifying_data, sign_attest
from contracts.voucher import Voucher
from hardware.tpm import Swtpm

pytestmark = pytest.mark.integration

PCR = 23
QUOTED = QUOTED_PCRS  # the registry's selection


def enrolled_voucher(tpm: Tpm, swtpm: Swtpm, node_id: bytes, registry, enroller):  # type: ignore[no-untyped-def]
    """Both sides of the enrolment; the enroller vouches for the record it produced."""
    ak = enrol.create_ak(tpm)
    request = enrol.request(tpm, ak)
    anchors = enrol.load_certificates([swtpm.root_ca])
    intermediates = enrol.load_certificates([swtpm.intermediate_ca])
    enrol.check_ek_certificate(request, anchors, intermediates, datetime.datetime.now(datetime.UTC))
    challenge, expected = enrol.make_challenge(request)
    record = enrol.finish(request, expected, enrol.answer(tpm, ak, challenge))
    ak_pub = enrolment_ak(record.dump())  # what `registry vouch --enrolment` reads
    operator = registry.account.address  # the account that will send register
    chain_id = registry.chain_id()
    voucher = Voucher.make(enroller, registry.address, chain_id, node_id, ak_pub, operator=operator)
    return ak, ak_pub, Voucher.parse(voucher.dump()).signature


def test_genuine_swtpm_quote(owner, operator, reporter, kit):
    node_id = os.urandom(32)
    with Swtpm() as swtpm, Tpm(swtpm.tcti) as tpm:
        ak, ak_pub, voucher = enrolled_voucher(tpm, swtpm, node_id, operator, kit.ENROLLER)
        assert ak_pub == ak_public(tpms.parse_public(ak.tpmt_public).public_key())
        handle = tpm.load_ak(ak.private, ak.public)
        tpm.reset_pcr(PCR)
        tpm.extend_pcr(PCR, os.urandom(32))

        def quote(qualifying: bytes, pcrs: tuple[int, ...] = QUOTED) -> ContractQuote:
            attest, signature = tpm.quote(handle, list(pcrs), qualifying)
            return ContractQuote.from_parts(attest, signature)

        challenge = operator.challenge(node_id)
        first = quote(challenge.qualifying_data)
        digest = tpms.parse_attest(first.attest).pcr_digest
        # The same TPM quoting only PCR 23: a genuine signature over another selection,
        # refused whatever its digest (approved below for that very selection).
        only_23 = quote(challenge.qualifying_data, (PCR,))
        assert tpms.parse_attest(only_23.attest).pcrs == (PCR,)
        owner.approve_digest(tpms.parse_attest(only_23.attest).pcr_digest)
        with pytest.raises(RegistryReverted, match=r"^PCR selection mismatch$"):
            operator.register(node_id, "wss://tpm/ws", ak_pub, only_23, challenge.block_number,
                              stake_wei=20 * kit.ETHER, voucher=voucher)  # fmt: skip
        with pytest.raises(RegistryReverted, match=r"^PCR digest not approved$"):
            operator.register(node_id, "wss://tpm/ws", ak_pub, first, challenge.block_number,
                              stake_wei=20 * kit.ETHER, voucher=voucher)  # fmt: skip
        owner.approve_digest(digest)

        # The gap this closes: a software P-256 key quoting the approved digest for the same
        # node id. Its quote is well formed and signed, but no enroller vouched for its key.
        software = ec.generate_private_key(ec.SECP256R1())
        forged = sign_attest(software, build_attest(challenge.qualifying_data, digest))
        with pytest.raises(RegistryReverted, match=r"^voucher not from an enroller$"):
            operator.register(node_id, "wss://tpm/ws", ak_public(software.public_key()), forged,
                              challenge.block_number, stake_wei=20 * kit.ETHER,
                              voucher=voucher)  # fmt: skip
        tampered = bytearray(first.attest)
        tampered[-48] ^= 0x01  # firmwareVersion
        with pytest.raises(RegistryReverted, match=r"^bad quote signature$"):
            operator.register(node_id, "wss://tpm/ws", ak_pub,
                              ContractQuote(bytes(tampered), first.r, first.s),
                              challenge.block_number, stake_wei=20 * kit.ETHER,
                              voucher=voucher)  # fmt: skip
        operator.register(node_id, "wss://tpm/ws", ak_pub, first, challenge.block_number,
                          stake_wei=20 * kit.ETHER, voucher=voucher)  # fmt: skip
        assert operator.node(node_id).pcr_digest == digest

        kit.mine(1)
        later = operator.challenge(node_id)
        late_quote = quote(later.qualifying_data)
        kit.mine(kit.FRESHNESS + 1)  # the operator waited too long to submit it
        with pytest.raises(RegistryReverted, match=r"^nonce block not recent$"):
            operator.attest(node_id, late_quote, later.block_number)
        assert operator.attest_with(node_id, quote).event_names()[-1] == "AttestationUpdated"

        # The exit extends its PCR (other software): its next handshake quote is out of policy.
        tpm.extend_pcr(PCR, os.urandom(32))
        nonce = os.urandom(32)

        bad = quote(qualifying_data(nonce, node_id))
        result = reporter.report_out_of_policy(node_id, bad, nonce)
        assert result.events[0].args["amount"] == 10 * kit.ETHER
