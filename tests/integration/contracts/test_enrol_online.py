"""The online ceremony (``shadowmesh enrol serve`` / ``online``) over loopback TCP with a real
swtpm: the honest run ends with the same voucher on both ends and a registration; an
unappointed "enroller" gets no answer from the exit, and an exit whose EK is not from a
trusted maker gets a refusal naming the step, never the enroller's detail."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from eth_account import Account

from attestation import ceremony, enrol, tpms
from attestation.errors import CeremonyRefused
from attestation.tpm import Tpm
from contracts.constants import QUOTED_PCRS
from contracts.quote import ContractQuote, ak_public
from contracts.voucher import Voucher
from exitnode import enrol_online
from hardware.tpm import Swtpm
from l2bridge.commands.main import main
from l2bridge.identity.keys import HybridSigningKey

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def swtpm() -> Iterator[Swtpm]:
    with Swtpm() as tpm:
        yield tpm


@pytest.fixture(scope="module")
def ak(swtpm: Swtpm) -> enrol.AkKey:
    with Tpm(swtpm.tcti) as tpm:
        return enrol.create_ak(tpm)


def _terms(client) -> ceremony.Terms:  # type: ignore[no-untyped-def]
    return ceremony.Terms(bytes.fromhex(client.account.address[2:]), client.chain_id(),
                          bytes.fromhex(client.address[2:]))  # fmt: skip


def _run(side: enrol_online.ExitSide, enroller, swtpm: Swtpm, trusted: Swtpm):  # type: ignore[no-untyped-def]
    """Both ends in two threads; (exit's outcome, enroller's outcome), each a value or the
    exception it raised."""
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, object] = {}

    def exit_end() -> None:
        try:
            outcome["exit"] = enrol_online.serve_once(listener, side, timeout=30)
        except Exception as exc:  # recorded for the assertions
            outcome["exit"] = exc

    thread = threading.Thread(target=exit_end)
    thread.start()
    try:
        outcome["enroller"] = enrol_online.run_enroller(
            listener.getsockname()[:2], account=enroller, terms=side.terms,
            anchors=enrol.load_certificates([trusted.root_ca]),
            intermediates=enrol.load_certificates([trusted.intermediate_ca]),
            now=lambda: datetime.datetime.now(datetime.UTC),
        )  # fmt: skip
    except Exception as exc:
        outcome["enroller"] = exc
    thread.join(60)
    listener.close()
    return outcome["exit"], outcome["enroller"]


def test_online_ceremony_admits_the_exit(swtpm, ak, owner, operator, kit):
    key = HybridSigningKey.generate()
    side = enrol_online.ExitSide(swtpm.tcti, ak, key, _terms(operator), kit.ENROLLER.address)
    at_exit, at_enroller = _run(side, kit.ENROLLER, swtpm, swtpm)
    assert isinstance(at_exit, Voucher), at_exit
    voucher, record = at_enroller  # type: ignore[misc]
    assert at_exit == voucher and record.node_id == key.node_id
    point = ak_public(tpms.parse_public(ak.tpmt_public).public_key())
    with Tpm(swtpm.tcti) as tpm:
        owner.approve_digest(tpms.pcr_digest(tpm.read_pcrs(QUOTED_PCRS)))
        challenge = operator.challenge(key.node_id)
        handle = tpm.load_ak(ak.private, ak.public)
        quote = ContractQuote.from_parts(*tpm.quote(handle, QUOTED_PCRS, challenge.qualifying_data))
    operator.register(key.node_id, "wss://online/ws", point, quote, challenge.block_number,
                      stake_wei=10 * kit.ETHER, voucher=voucher.signature)  # fmt: skip


def test_exit_answers_only_the_expected_enroller(swtpm, ak, operator, kit):
    impostor = Account.create()
    side = enrol_online.ExitSide(swtpm.tcti, ak, HybridSigningKey.generate(), _terms(operator),
                                 kit.ENROLLER.address)  # fmt: skip
    at_exit, at_enroller = _run(side, impostor, swtpm, swtpm)
    assert isinstance(at_exit, CeremonyRefused) and at_exit.step == ceremony.STEP_REQUEST
    assert f"signed by {impostor.address}, not the enroller" in str(at_exit)
    assert isinstance(at_enroller, enrol_online.WireError)  # no answer, no signature


def test_exit_with_an_untrusted_ek_is_told_the_step_only(swtpm, ak, operator, kit):
    with Swtpm() as other:  # the enroller trusts only this other maker's CA
        side = enrol_online.ExitSide(swtpm.tcti, ak, HybridSigningKey.generate(),
                                     _terms(operator), kit.ENROLLER.address)  # fmt: skip
        at_exit, at_enroller = _run(side, kit.ENROLLER, swtpm, other)
    assert isinstance(at_enroller, CeremonyRefused)
    assert at_enroller.step == ceremony.STEP_EK_CERTIFICATE
    assert isinstance(at_exit, enrol_online.WireError)
    assert str(at_exit) == "the other end refused: step ek-certificate"


def test_serve_and_online_commands(swtpm, operator, kit, tmp_path, monkeypatch, capsys):  # noqa: PLR0917
    key = HybridSigningKey.generate()
    key.save(tmp_path / "exit.identity")
    terms = ["--operator", operator.account.address, "--chain-id", str(operator.chain_id()),
             "--registry", operator.address]  # fmt: skip
    serve = subprocess.Popen(
        [sys.executable, "-m", "l2bridge", "enrol", "serve", "--tcti", swtpm.tcti,
         "--ak", str(tmp_path / "ak.json"), "--identity", str(tmp_path / "exit.identity"),
         *terms, "--listen", "127.0.0.1:0", "--enroller", kit.ENROLLER.address,
         "--out", str(tmp_path / "exit-voucher.json"), "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        listening = json.loads(serve.stdout.readline())["listening"]
        monkeypatch.setenv("SHADOWMESH_REGISTRY_KEY", kit.ENROLLER.key.hex())
        code = main(["enrol", "online", "--connect", listening, "--ca", str(swtpm.root_ca),
                     "--intermediate", str(swtpm.intermediate_ca), *terms,
                     "--out", str(tmp_path / "voucher.json")])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        _out, err = serve.communicate(timeout=60)
        assert serve.returncode == 0, err
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    mine = Voucher.parse((tmp_path / "voucher.json").read_text())
    theirs = Voucher.parse((tmp_path / "exit-voucher.json").read_text())
    assert mine == theirs and mine.node_id == key.node_id
