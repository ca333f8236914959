"""``shadowmesh attest enroll | runtime-policy | quote | golden | verify`` against swtpm."""

from __future__ import annotations

import json
import os

import pytest

from attestation import tpms
from attestation.tpm import Tpm
from contracts.constants import QUOTED_PCRS
from hardware.tpm import Swtpm
from l2bridge.commands.main import main
from lab.imaharness import EVENT_LOG, IMA_LIST, LAB_CMDLINE, Kernel

pytestmark = pytest.mark.integration

NODE = "ab" * 32
NONCE = "cd" * 32


def _load(kernel: Kernel, path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        kernel.measure_fd(fd)
    finally:
        os.close(fd)


def test_operator_flow(tmp_path, capsys):
    ak, record, evidence, policy = (tmp_path / n for n in ("ak.json", "rec.json", "ev", "p.json"))
    runtime = tmp_path / "runtime.json"
    release = tmp_path / "release"
    (release / "__pycache__").mkdir(parents=True)
    (release / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"bytecode")
    (release / "exit.yaml").write_text("mtu: 1400\n")
    with Swtpm() as swtpm, Tpm(swtpm.tcti) as tpm:
        base = ["attest", "enroll", "--tcti", swtpm.tcti, "--ca", str(swtpm.root_ca)]
        assert main([*base, "--intermediate", str(swtpm.intermediate_ca),
                     "--ak-out", str(ak), "--record-out", str(record)]) == 0  # fmt: skip
        assert main([*base, "--ak-out", str(ak), "--record-out", str(record)]) == 1
        assert "does not chain" in capsys.readouterr().err
        kernel = Kernel(tpm, tmp_path)
        kernel.boot(LAB_CMDLINE)
        for path in sorted(release.rglob("*")):
            if path.is_file():
                _load(kernel, path)
        assert main(["attest", "runtime-policy", "--no-defaults", "--include", str(release),
                     "--exclude", "^/var/lib/shadowmesh/", "--out", str(runtime)]) == 0  # fmt: skip
        doc = json.loads(runtime.read_text())
        pyc = release / "__pycache__/server.cpython-311.pyc"
        assert set(doc["digests"]) == {str(release / "exit.yaml"), str(pyc)}
        assert doc["meta"]["version"] == 1 and doc["excludes"] == ["^/var/lib/shadowmesh/"]
        quote = ["attest", "quote", "--tcti", swtpm.tcti, "--ak", str(ak), "--node-id", NODE,
                 "--ima-list", str(tmp_path / IMA_LIST), "--event-log", str(tmp_path / EVENT_LOG),
                 "--nonce", NONCE, "--out", str(evidence)]  # fmt: skip
        assert main(quote) == 0
        golden = ["attest", "golden", "--evidence", str(evidence), "--enrolment", str(record),
                  "--runtime-policy", str(runtime)]  # fmt: skip
        assert main([*golden, "--out", str(policy)]) == 0
        # the digest the owner approves: the TPM's own digest over PCRs 0-9, as a registry
        # quote reports it (read here from the TPM, not from the evidence)
        boot = tpms.pcr_digest(tpm.read_pcrs(QUOTED_PCRS)).hex()
        assert "boot digest over PCRs 0-9 (" in (printed := capsys.readouterr().out)
        assert printed.rstrip().endswith(boot)
        assert json.loads(policy.read_text())["boot"]["kernel_cmdline_requires"]
        state = tmp_path / "state.json"
        verify = ["attest", "verify", "--evidence", str(evidence), "--policy", str(policy),
                  "--enrolment", str(record), "--node-id", NODE, "--state", str(state)]  # fmt: skip
        assert main([*verify, "--nonce", NONCE]) == 0
        assert "OK" in capsys.readouterr().out
        assert json.loads(state.read_text())["ima_count"] == 3
        assert main([*verify, "--nonce", "ee" * 32]) == 1
        assert "nonce: evidence answers another nonce" in capsys.readouterr().out
        (release / "exit.yaml").write_text("mtu: 9000\n")  # configuration changed, then read
        _load(kernel, release / "exit.yaml")
        assert main([*quote[:-2], "--ima-from", "3", "--out", str(evidence)]) == 0
        assert main([*verify, "--nonce", NONCE]) == 1
        out = capsys.readouterr().out
        assert f"runtime: {release}/exit.yaml has digest" in out
