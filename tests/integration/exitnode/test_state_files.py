"""State files under a full disk and after a torn write.

* A full state directory (a 64 KiB tmpfs we mount and fill): the exit stops with one
  line naming the file and "No space left on device", no traceback, and nothing left in
  the directory, not even a 0-byte file.
* An empty (0-byte) enrolment.json or ak.json beside a working TPM is refused at start
  with one line, never taken as state or silently enrolled over.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exitnode.errors import StateFileError
from exitnode.lifecycle import AK_FILE, ENROLMENT_FILE, ExitLifecycle
from exitnode.statefile import write_atomic
from hardware.tpm import Swtpm
from lab import provision

pytestmark = pytest.mark.integration


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space"):
                for _ in range(1000):
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "filler")


def test_write_on_a_full_disk_is_one_error_and_no_file(full_dir: Path) -> None:
    target = full_dir / ENROLMENT_FILE
    with pytest.raises(StateFileError) as info:
        write_atomic(target, "x" * 10_000)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert leftovers(full_dir) == []


def test_enrolment_on_a_full_disk_leaves_nothing(
    swtpm: Swtpm, full_dir: Path, kernel_logs: dict[str, Path]
) -> None:
    lifecycle = ExitLifecycle(
        swtpm.tcti, b"\1" * 32, full_dir, **kernel_logs,
        ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
    )  # fmt: skip
    with pytest.raises(StateFileError, match="No space left on device"):
        lifecycle.start()
    lifecycle.close()
    assert leftovers(full_dir) == []  # no AK without its record, no 0-byte record


@pytest.mark.parametrize("torn", [ENROLMENT_FILE, AK_FILE])
def test_empty_state_file_is_refused_at_start(
    swtpm: Swtpm, tmp_path: Path, torn: str, kernel_logs: dict[str, Path]
) -> None:
    def lifecycle() -> ExitLifecycle:
        return ExitLifecycle(
            swtpm.tcti, b"\1" * 32, tmp_path, **kernel_logs,
            ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
        )  # fmt: skip

    first = lifecycle()
    first.start()
    first.close()
    ak_before = (tmp_path / AK_FILE).read_bytes()
    (tmp_path / torn).write_bytes(b"")
    with pytest.raises(StateFileError, match="is empty"):
        lifecycle().start()
    if torn == ENROLMENT_FILE:
        assert (tmp_path / AK_FILE).read_bytes() == ak_before  # not enrolled over


def run_exit(directory: Path, state_dir: Path, tpm: Swtpm) -> subprocess.CompletedProcess[str]:
    provision.provision(directory, exit_host="127.0.0.1", port=1)
    config = directory / "exit.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["security"]["attestation_required"] = True
    doc["tpm"] = {"tcti": tpm.tcti}
    config.write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [sys.executable, "-m", "l2bridge", "exit", "--config", str(config), "--no-status",
         "--state-dir", str(state_dir), "--ek-ca", str(tpm.root_ca),
         "--ek-intermediate", str(tpm.intermediate_ca)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_exit_on_a_full_disk_says_one_line(swtpm: Swtpm, tmp_path: Path, full_dir: Path) -> None:
    result = run_exit(tmp_path / "lab", full_dir, swtpm)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("shadowmesh exit: cannot write ")
    assert lines[-1].endswith(": No space left on device")
    assert leftovers(full_dir) == []


def test_exit_with_a_torn_record_says_one_line(
    swtpm: Swtpm, tmp_path: Path, kernel_logs: dict[str, Path]
) -> None:
    state = tmp_path / "state"
    lifecycle = ExitLifecycle(
        swtpm.tcti, b"\1" * 32, state, **kernel_logs,
        ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
    )  # fmt: skip
    lifecycle.start()
    lifecycle.close()
    (state / ENROLMENT_FILE).write_bytes(b"")
    result = run_exit(tmp_path / "lab", state, swtpm)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("shadowmesh exit: ") and last.endswith(
        "enrolment.json is empty (a write that never finished?)"
    )
