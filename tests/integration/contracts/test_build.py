"""The committed artifact is what solc-js builds from the committed source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from contracts.client import load_artifact
from contracts.constants import ARTIFACT_PATH, NODE_MODULES, PACKAGE_DIR, SOURCE_PATH
from contracts.errors import ArtifactError

pytestmark = pytest.mark.integration

NODE22 = NODE_MODULES / "node" / "bin" / "node"


def _compile(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NODE22), str(directory / "compile.js"), *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_artifact_matches_solc_build():
    result = _compile(PACKAGE_DIR, "--check")
    assert result.returncode == 0, result.stderr
    load_artifact()  # and the recorded source hash agrees


def test_check_fails_when_source_changes(tmp_path):
    work = tmp_path / "contracts"
    (work / "build").mkdir(parents=True)
    for name in ("compile.js", "package.json"):
        shutil.copy(PACKAGE_DIR / name, work / name)
    shutil.copy(ARTIFACT_PATH, work / "build" / ARTIFACT_PATH.name)
    (work / "node_modules").symlink_to(NODE_MODULES)
    source = SOURCE_PATH.read_text().replace("REPUTATION_ON_TIME = 10", "REPUTATION_ON_TIME = 11")
    (work / SOURCE_PATH.name).write_text(source)
    result = _compile(work, "--check")
    assert result.returncode == 1
    assert "does not match" in result.stderr
    with pytest.raises(ArtifactError):
        load_artifact(work / "build" / ARTIFACT_PATH.name, source=work / SOURCE_PATH.name)
    assert _compile(work).returncode == 0  # rebuilding brings them back in line
    assert _compile(work, "--check").returncode == 0
