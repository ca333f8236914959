"""``shadowmesh attest enroll | quote | golden | verify`` against a real swtpm."""

from __future__ import annotations

import json

import pytest

from hardware.tpm import Swtpm
from l2bridge.commands.main import main

pytestmark = pytest.mark.integration

NODE = "ab" * 32
NONCE = "cd" * 32


def test_operator_flow(tmp_path, capsys):
    ak, record, evidence, policy = (tmp_path / n for n in ("ak.json", "rec.json", "ev", "p.json"))
    config = tmp_path / "exit.yaml"
    config.write_text("mtu: 1400\n")
    with Swtpm() as tpm:
        base = ["attest", "enroll", "--tcti", tpm.tcti, "--ca", str(tpm.root_ca)]
        assert main([*base, "--intermediate", str(tpm.intermediate_ca),
                     "--ak-out", str(ak), "--record-out", str(record)]) == 0  # fmt: skip
        assert main([*base, "--ak-out", str(ak), "--record-out", str(record)]) == 1
        assert "does not chain" in capsys.readouterr().err
        quote = ["attest", "quote", "--tcti", tpm.tcti, "--ak", str(ak), "--node-id", NODE,
                 "--config", str(config), "--nonce", NONCE, "--out", str(evidence)]  # fmt: skip
        assert main([*quote, "--measure"]) == 0
        golden = ["attest", "golden", "--evidence", str(evidence), "--enrolment", str(record)]
        assert main([*golden, "--out", str(policy)]) == 0
        assert json.loads(policy.read_text())["manifest"]["config"]
        state = tmp_path / "state.json"
        verify = ["attest", "verify", "--evidence", str(evidence), "--policy", str(policy),
                  "--enrolment", str(record), "--node-id", NODE, "--state", str(state)]  # fmt: skip
        assert main([*verify, "--nonce", NONCE]) == 0
        assert "OK" in capsys.readouterr().out
        assert main([*verify, "--nonce", "ee" * 32]) == 1
        assert "nonce: evidence answers another nonce" in capsys.readouterr().out
        config.write_text("mtu: 9000\n")  # configuration changed after the golden policy
        assert main([*quote, "--measure"]) == 0
        assert main([*verify, "--nonce", NONCE]) == 1
        assert "manifest: config differs from golden policy" in capsys.readouterr().out
