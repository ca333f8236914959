"""Receive Packet Steering for a TAP (hardware.tap.spread_receive): the mask Linux reads,
and what is written where (a directory standing in for /sys/class/net)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware.tap import TapConfig, cpu_mask, spread_receive


@pytest.mark.parametrize(
    ("cpus", "mask"),
    [
        ([0, 1], "00000003"),
        ([1], "00000002"),
        ([31], "80000000"),
        ([32], "00000001,00000000"),
        ([0, 40], "00000100,00000001"),
        (range(64), "ffffffff,ffffffff"),
        (range(65), "00000001,ffffffff,ffffffff"),
    ],
)
def test_the_mask_is_in_linux_cpumask_format(cpus: list[int], mask: str) -> None:
    assert cpu_mask(cpus) == mask


def test_a_negative_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        cpu_mask([0, -1])


def _queue(sysfs: Path, name: str) -> Path:
    queue = sysfs / name / "queues" / "rx-0"
    queue.mkdir(parents=True)
    (queue / "rps_cpus").write_text("00000000\n")
    return queue / "rps_cpus"


def test_every_allowed_cpu_gets_the_taps_receive_work(tmp_path: Path) -> None:
    rps = _queue(tmp_path, "sm0")
    assert spread_receive("sm0", [0, 2, 3], sysfs=tmp_path) == "0000000d"
    assert rps.read_text() == "0000000d\n"


def test_with_one_cpu_nothing_is_written(tmp_path: Path) -> None:
    # Steering to the one CPU there is would only add work.
    rps = _queue(tmp_path, "sm0")
    assert spread_receive("sm0", [3], sysfs=tmp_path) is None
    assert rps.read_text() == "00000000\n"


def test_a_device_without_the_file_is_an_error(tmp_path: Path) -> None:
    # No such device here, or a kernel built without RPS: the caller says which setting.
    with pytest.raises(OSError):
        spread_receive("sm0", [0, 1], sysfs=tmp_path)


def test_it_is_off_unless_asked() -> None:
    assert TapConfig("sm0").rps is False
