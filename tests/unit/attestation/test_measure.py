import hashlib
import struct

import pytest

from attestation import constants as c
from attestation import measure
from attestation.errors import EventLogError, MeasurementError

NODE = b"\x42" * 32


def test_manifest_measures_software_config_and_node_id(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_bytes(b"print(1)")
    (pkg / "sub" / "b.py").write_bytes(b"x = 2")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.pyc").write_bytes(b"junk")
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF")
    config = tmp_path / "exit.yaml"
    config.write_text("mtu: 1400\n")
    manifest = measure.build_manifest([pkg, binary], config, NODE)
    assert [e.name for e in manifest] == ["software:pkg", "software:tool", "config", "node-id"]
    assert manifest[1].digest == hashlib.sha256(b"\x7fELF").digest()
    assert manifest[2].digest == hashlib.sha256(b"mtu: 1400\n").digest()
    assert manifest[3].digest == NODE
    # bytecode caches do not count; content and names do
    (pkg / "__pycache__" / "a.pyc").write_bytes(b"other junk")
    assert measure.build_manifest([pkg, binary], config, NODE) == manifest
    (pkg / "sub" / "b.py").write_bytes(b"x = 3")
    assert measure.build_manifest([pkg, binary], config, NODE)[0] != manifest[0]


def test_manifest_errors(tmp_path):
    with pytest.raises(MeasurementError, match="cannot measure"):
        measure.build_manifest([tmp_path / "missing"], None, NODE)
    with pytest.raises(MeasurementError, match="32 bytes"):
        measure.build_manifest([], None, b"short")


def test_installed_software_finds_the_packages():
    names = [p.name for p in measure.installed_software()]
    assert "attestation" in names and "l2bridge" in names


# --- synthetic TCG crypto-agile event log ---


def _header(algs=((0x0004, 20), (0x000B, 32))):
    spec = c.SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    spec += b"".join(struct.pack("<HH", a, s) for a, s in algs) + b"\x00"
    return struct.pack("<II", 0, c.EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec


def _event(pcr, etype, data, algs=(0x0004, 0x000B)):
    digests = b"".join(
        struct.pack("<H", a) + hashlib.new({4: "sha1", 11: "sha256"}[a], data).digest()
        for a in algs
    )
    return (
        struct.pack("<III", pcr, etype, len(algs)) + digests + struct.pack("<I", len(data)) + data
    )


def _expected(pcr_events, start=bytes(32)):
    value = start
    for data in pcr_events:
        value = hashlib.sha256(value + hashlib.sha256(data).digest()).digest()
    return value


def test_parse_and_replay_synthetic_log():
    locality = struct.pack("<III", 0, c.EV_NO_ACTION, 0) + struct.pack("<I", 17)
    locality += c.STARTUP_LOCALITY_SIGNATURE + b"\x03"
    log = (
        _header()
        + locality
        + _event(0, 0x80000008, b"firmware")
        + _event(7, 0x80000001, b"secure boot")
        + _event(0, 0x00000004, b"separator")
        + _event(4, 0x80000003, b"bootloader")
    )
    events = measure.parse_event_log(log)
    assert len(events) == 6
    values = measure.replay_event_log(events)
    assert values[0] == _expected([b"firmware", b"separator"], bytes(31) + b"\x03")
    assert values[7] == _expected([b"secure boot"])
    assert values[4] == _expected([b"bootloader"])
    sha1 = measure.replay_event_log(events, 0x0004)
    assert len(sha1[7]) == 20


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (b"", "truncated"),
        (_header()[:-3], "truncated"),
        (struct.pack("<II", 0, 1) + _header()[8:], "Spec ID"),
        (_header() + _event(24, 1, b"x"), "PCR 24"),
        (_header(((0x000B, 32),)) + _event(0, 1, b"x"), "not declared"),
        (_header(((0x000B, 20),)), "digest size"),
        (_header() + _event(0, 1, b"x")[:-1], "truncated"),
        (_header() + struct.pack("<III", 0, 1, 9), "too many digests"),
    ],
)
def test_malformed_logs_are_refused(log, reason):
    with pytest.raises(EventLogError, match=reason):
        measure.parse_event_log(log)


def test_replay_needs_the_bank():
    events = measure.parse_event_log(_header() + _event(1, 1, b"x", algs=(0x0004,)))
    with pytest.raises(EventLogError, match="lacks"):
        measure.replay_event_log(events)


def test_read_event_log_absent(tmp_path):
    assert measure.read_event_log(tmp_path / "nothing") is None
    path = tmp_path / "log"
    path.write_bytes(_header() + _event(2, 1, b"y"))
    events = measure.read_event_log(path)
    assert events is not None and events[1].pcr == 2
