"""What an exit measures about its configuration: the same for exits that differ only in
per-node paths, different when a behaviour-relevant setting differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitnode.attested import measured_config
from l2bridge.node.config import ConfigError, config_from_mapping


def exit_config(device: str, *, quorum: int = 1, interval: str = "2s") -> dict[str, object]:
    return {
        "version": "1.0",
        "security": {"key_rotation_interval": "2s", "attestation_required": True},
        "atomic_time": {
            "enabled": True,
            "consensus_quorum": quorum,
            "sources": [{"kind": "gpsdo", "device": device}],
        },
        "chain": {"attestation_interval": interval},
    }


def measured(tmp_path: Path, name: str, raw: dict[str, object]) -> bytes:
    config = config_from_mapping(raw, base_dir=tmp_path)
    return measured_config(config, tmp_path / name).read_bytes()


def test_clock_device_paths_are_not_measured(tmp_path):
    a = measured(tmp_path, "a", exit_config("/tmp/lab/clock-exit-1"))
    b = measured(tmp_path, "b", exit_config("/tmp/lab/clock-exit-2"))
    assert a == b
    assert b"clock-exit" not in a and b"gpsdo" in a


def test_clock_settings_are_measured(tmp_path):
    a = measured(tmp_path, "a", exit_config("/dev/ttyUSB0", quorum=1))
    b = measured(tmp_path, "b", exit_config("/dev/ttyUSB0", quorum=2))
    assert a != b


def test_lab_attestation_intervals_of_seconds_load(tmp_path):
    raw = exit_config("/dev/ttyUSB0", interval="2s")
    assert config_from_mapping(raw, base_dir=tmp_path).chain.attestation_interval == 2.0
    with pytest.raises(ConfigError, match=r"chain\.attestation_interval"):
        config_from_mapping(exit_config("/dev/ttyUSB0", interval="500ms"), base_dir=tmp_path)
