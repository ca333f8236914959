"""``shadowmesh enrol`` end to end: the exit (a real swtpm, its identity key) and the enroller
exchange the four files, the voucher registers the node on Anvil, and the files are checked
at each step (a tampered answer or a pending state used twice is refused, naming the step)."""

from __future__ import annotations

import json
import stat

import pytest

from attestation import enrol, tpms
from attestation.tpm import Tpm
from contracts.constants import QUOTED_PCRS
from contracts.quote import ContractQuote, ak_public
from contracts.voucher import Voucher
from hardware.tpm import Swtpm
from l2bridge.commands.main import main
from l2bridge.identity.keys import HybridSigningKey

pytestmark = pytest.mark.integration


def run(capsys, *args: str) -> dict:  # type: ignore[no-untyped-def]
    assert main(["enrol", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def refused(capsys, *args: str) -> str:  # type: ignore[no-untyped-def]
    assert main(["enrol", *args]) == 1
    return capsys.readouterr().err


def test_enrol_commands_admit_the_exit(owner, operator, kit, tmp_path, monkeypatch, capsys):  # noqa: PLR0917
    key = HybridSigningKey.generate()
    identity = tmp_path / "exit.identity"
    key.save(identity)
    ak_file, files = tmp_path / "ak.json", {n: tmp_path / f"{n}.json" for n in
                                            ("request", "challenge", "pending", "answer",
                                             "voucher", "record")}  # fmt: skip
    terms = ["--operator", operator.account.address, "--chain-id", str(operator.chain_id()),
             "--registry", operator.address]  # fmt: skip
    with Swtpm() as swtpm:
        exit_side = ["--tcti", swtpm.tcti, "--ak", str(ak_file), "--identity", str(identity)]
        made = run(capsys, "request", *exit_side, *terms, "--out", str(files["request"]))
        assert made["node_id"] == key.node_id.hex() and made["ek_certificate"] is True
        assert ak_file.exists()  # the AK was created in the TPM
        ca = ["--ca", str(swtpm.root_ca), "--intermediate", str(swtpm.intermediate_ca)]
        # Terms the exit did not ask for: refused before any challenge is made.
        other = [*terms[:-1], "0x" + "77" * 20]
        out = ["--out", str(files["challenge"]), "--pending", str(files["pending"])]
        err = refused(capsys, "challenge", "--request", str(files["request"]), *ca, *other, *out)
        assert "refused at step terms" in err and not files["pending"].exists()
        run(capsys, "challenge", "--request", str(files["request"]), *ca, *terms, *out)
        assert stat.S_IMODE(files["pending"].stat().st_mode) == 0o600
        run(capsys, "answer", *exit_side, "--request", str(files["request"]),
            "--challenge", str(files["challenge"]), "--out", str(files["answer"]))  # fmt: skip
        # A tampered answer is refused, naming the step.
        good = json.loads(files["answer"].read_text())
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**good, "credential": "00" * 32}))
        monkeypatch.setenv("SHADOWMESH_REGISTRY_KEY", kit.ENROLLER.key.hex())
        vouch = ["vouch", "--pending", str(files["pending"]), "--out", str(files["voucher"])]
        assert "refused at step activation" in refused(capsys, *vouch, "--answer", str(bad))
        assert not files["voucher"].exists()
        done = run(capsys, *vouch, "--answer", str(files["answer"]),
                   "--record-out", str(files["record"]))  # fmt: skip
        assert done["enroller"] == kit.ENROLLER.address
        assert not files["pending"].exists()  # one ceremony, one secret
        assert "cannot read" in refused(capsys, *vouch, "--answer", str(files["answer"]))

        voucher = Voucher.parse(files["voucher"].read_text())
        record = enrol.Enrolment.parse(files["record"].read_text())
        ak = ak_public(tpms.parse_public(record.ak_public).public_key())
        voucher.check_for(operator.address, operator.chain_id(), key.node_id, ak,
                          operator=operator.account.address)  # fmt: skip
        with Tpm(swtpm.tcti) as tpm:
            owner.approve_digest(tpms.pcr_digest(tpm.read_pcrs(QUOTED_PCRS)))
            challenge = operator.challenge(key.node_id)
            ak_key = enrol.AkKey.load(ak_file)
            handle = tpm.load_ak(ak_key.private, ak_key.public)
            quote = ContractQuote.from_parts(
                *tpm.quote(handle, QUOTED_PCRS, challenge.qualifying_data)
            )
        result = operator.register(key.node_id, "wss://enrolled/ws", ak, quote,
                                   challenge.block_number, stake_wei=10 * kit.ETHER,
                                   voucher=voucher.signature)  # fmt: skip
        assert result.events[0].name == "NodeEnrolled"
        assert operator.node(key.node_id).ak == ak
