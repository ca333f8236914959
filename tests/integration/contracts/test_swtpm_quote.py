"""A genuine TPM quote (swtpm, through attestation/) is accepted by the contract; the same
quote with one byte changed, or answering an old block, is not; a real out-of-policy quote
slashes."""

from __future__ import annotations

import os

import pytest

from attestation import tpms
from attestation.enrol import create_ak
from attestation.tpm import Tpm
from contracts.errors import RegistryReverted
from contracts.quote import ContractQuote, ak_public, qualifying_data
from hardware.tpm import Swtpm

pytestmark = pytest.mark.integration

PCR = 23


def test_genuine_swtpm_quote(owner, operator, reporter, kit):
    node_id = os.urandom(32)
    with Swtpm() as swtpm, Tpm(swtpm.tcti) as tpm:
        ak = create_ak(tpm)
        handle = tpm.load_ak(ak.private, ak.public)
        tpm.reset_pcr(PCR)
        tpm.extend_pcr(PCR, os.urandom(32))
        ak_pub = ak_public(tpms.parse_public(ak.tpmt_public).public_key())

        def quote(qualifying: bytes) -> ContractQuote:
            attest, signature = tpm.quote(handle, [PCR], qualifying)
            return ContractQuote.from_parts(attest, signature)

        challenge = operator.challenge(node_id)
        first = quote(challenge.qualifying_data)
        digest = tpms.parse_attest(first.attest).pcr_digest
        with pytest.raises(RegistryReverted, match=r"^PCR digest not approved$"):
            operator.register(node_id, "wss://tpm/ws", ak_pub, first, challenge.block_number,
                              stake_wei=20 * kit.ETHER)  # fmt: skip
        owner.approve_digest(digest)
        tampered = bytearray(first.attest)
        tampered[-48] ^= 0x01  # firmwareVersion
        with pytest.raises(RegistryReverted, match=r"^bad quote signature$"):
            operator.register(node_id, "wss://tpm/ws", ak_pub,
                              ContractQuote(bytes(tampered), first.r, first.s),
                              challenge.block_number, stake_wei=20 * kit.ETHER)  # fmt: skip
        operator.register(node_id, "wss://tpm/ws", ak_pub, first, challenge.block_number,
                          stake_wei=20 * kit.ETHER)  # fmt: skip
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
