"""Slither over the registry contract, fed by the solc-js build (no native solc): every
finding must be on the accepted list below, each with the reason it is by design; a new
kind of finding, or an accepted kind in a new place, fails the test.

Slither lives in its own virtual environment (.venv-slither, made by
hardware/setup/install.sh) because slither-analyzer pins web3 < 8. It reads a Hardhat-style
build-info that ``contracts/compile.js --build-info`` writes from the same solc-js and
settings as the committed artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from contracts.constants import NODE_MODULES, PACKAGE_DIR, SOURCE_PATH

pytestmark = pytest.mark.integration

REPO = PACKAGE_DIR.parent
NODE22 = NODE_MODULES / "node" / "bin" / "node"
SLITHER = Path(os.environ.get("SHADOWMESH_SLITHER", REPO / ".venv-slither" / "bin" / "slither"))

# (detector, function) -> why it is accepted. A detector listed with function "*" is
# accepted wherever it fires (its reason holds for every instance).
ACCEPTED = {
    ("arbitrary-send-eth", "_slash"): (
        "the reporter's reward goes to msg.sender, the account that proved the misbehaviour; "
        "the amount is fixed by the contract, and the call is the last statement"
    ),
    ("divide-before-multiply", "_slash"): (
        "rounding order: the reward is a share of the slashed amount, itself a share of the "
        "stake; truncation favours the burn, never the reporter, by less than 1 wei per step"
    ),
    ("incorrect-equality", "register"): (
        "an enum equality (status == Status.None: no such node yet), not a balance or "
        "timestamp equality an attacker can steer"
    ),
    ("timestamp", "*"): (
        "attestation windows, the revocation grace and the unbonding delay are measured in "
        "chain time by design; a validator's few seconds of skew do not matter at intervals "
        "of minutes to days (Slither also flags plain storage reads in those functions)"
    ),
    ("assembly", "_be"): "reads a big-endian field of TPMS_ATTEST; bounds checked by callers",
    ("assembly", "listHealthy"): "shrinks the returned array to the matches (mstore of length)",
    ("low-level-calls", "_p256"): (
        "the P256VERIFY precompile (EIP-7951) has no Solidity interface; success, length "
        "and value are all checked"
    ),
    ("low-level-calls", "withdraw"): (
        "sends the stake after the node was deleted (checks-effects-interactions); a "
        "failed transfer reverts"
    ),
    ("low-level-calls", "_slash"): (
        "sends the reporter's reward after all state changes; a failed transfer reverts"
    ),
}


def _function_of(result: dict) -> str:
    for element in result.get("elements", []):
        if element.get("type") == "function":
            return str(element["name"])
        parent = element.get("type_specific_fields", {}).get("parent", {})
        if parent.get("type") == "function":
            return str(parent["name"])
    return "?"


def run_slither(work: Path) -> list[dict]:
    built = subprocess.run(
        [str(NODE22), str(PACKAGE_DIR / "compile.js"), "--build-info", str(work)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    shutil.copy(SOURCE_PATH, work / SOURCE_PATH.name)
    (work / "hardhat.config.js").write_text("module.exports = {};\n")  # marks the layout
    report = work / "slither.json"
    done = subprocess.run(
        [str(SLITHER), str(work), "--hardhat-ignore-compile", "--npx-disable",
         "--json", str(report)],
        capture_output=True, text=True, timeout=600, cwd=work, check=False,
    )  # fmt: skip
    assert report.exists(), done.stderr[-2000:]
    doc = json.loads(report.read_text())
    assert doc["success"], doc.get("error")
    return list(doc["results"].get("detectors", []))


def test_slither_reports_only_accepted_findings(tmp_path):
    assert SLITHER.exists(), (
        f"no slither at {SLITHER}: run hardware/setup/install.sh (or set SHADOWMESH_SLITHER)"
    )
    findings = run_slither(tmp_path)
    assert findings, "slither analysed nothing: the build-info was not read"
    unexplained = []
    seen = set()
    for result in findings:
        key = (result["check"], _function_of(result))
        accepted = key if key in ACCEPTED else (key[0], "*")
        if accepted not in ACCEPTED:
            unexplained.append(f"{key}: {result['description'].splitlines()[0]}")
        seen.add(accepted)
    assert unexplained == []
    # Every accepted entry still fires: a reason that no longer applies is removed.
    assert set(ACCEPTED) == seen
