"""The TCG crypto-agile event log: layout, replay, and the boot policy on top of it."""

from __future__ import annotations

import hashlib
import struct

import pytest

from attestation import constants as c
from attestation import eventlog as el
from attestation.errors import EventLogError

REQUIRED = ("ima_policy=tcb", "ima_template=ima-ng", "ima_hash=sha256")
CMDLINE = "root=/dev/vda1 ro ima_policy=tcb ima_template=ima-ng ima_hash=sha256"


def boot_events(cmdline: str = CMDLINE) -> list[el.Event]:
    events = [el.measured(0, el.EV_S_CRTM_VERSION, b"firmware 1.0")]
    events += [el.measured(i, el.EV_SEPARATOR, b"\0\0\0\0") for i in range(8)]
    events += [el.cmdline_event(cmdline), el.measured(9, el.EV_IPL, b"/boot/vmlinuz", b"kernel")]
    return events


def quoted(log: bytes) -> dict[int, bytes]:
    values = el.replay(el.parse(log))
    return {i: values.get(i, bytes(32)) for i in range(10)}


def test_header_layout_and_round_trip():
    log = el.encode(boot_events())
    assert struct.unpack_from("<II", log) == (0, c.EV_NO_ACTION)
    assert log[8:28] == bytes(20)
    assert log[32:48] == c.SPEC_ID_SIGNATURE
    events = el.parse(log)
    assert el.encode(events[1:]) == log
    assert events[-2].data == b"kernel_cmdline: " + CMDLINE.encode()


def test_replay_is_sha256_extend_from_zero():
    events = el.parse(el.encode(boot_events()))
    values = el.replay(events)
    kernel = hashlib.sha256(b"kernel").digest()
    assert values[9] == hashlib.sha256(bytes(32) + kernel).digest()
    assert set(values) == set(range(10))


def test_approved_boot_passes():
    log = el.encode(boot_events())
    policy = el.BootPolicy(tuple(quoted(log).items()), REQUIRED)
    assert el.check_boot(log, quoted(log), policy) == []


def test_boot_without_ima_fails_naming_the_parameter():
    good = el.encode(boot_events())
    policy = el.BootPolicy(tuple(quoted(good).items()), REQUIRED)
    log = el.encode(boot_events("root=/dev/vda1 ro"))
    problems = el.check_boot(log, quoted(log), policy)
    assert "kernel command line lacks ima_policy=tcb (booted without IMA as approved)" in problems
    assert "PCR 8 differs from the boot policy" in problems


def test_a_log_that_does_not_replay_to_the_quote_fails():
    log = el.encode(boot_events())
    values = quoted(log)
    values[4] = bytes(32)
    problems = el.check_boot(log, values, el.BootPolicy((), REQUIRED))
    assert problems == ["PCR 4 does not match the event log"]


def test_cmdline_data_is_checked_against_its_digest():
    """The PCR binds the digest, not the data: a nice text with the real digest fails."""
    real = el.cmdline_event("root=/dev/vda1 ro")
    fake = el.Event(8, el.EV_IPL, real.digests, b"kernel_cmdline: " + CMDLINE.encode())
    events = [*boot_events()[:-2], fake, boot_events()[-1]]
    log = el.encode(events)
    problems = el.check_boot(log, quoted(log), el.BootPolicy((), REQUIRED))
    assert "kernel command line event's data does not match its digest" in problems
    assert "event log has 0 kernel command lines, expected one" in problems


def test_two_command_lines_fail():
    events = [*boot_events(), el.cmdline_event(CMDLINE)]
    log = el.encode(events)
    assert "event log has 2 kernel command lines, expected one" in el.check_boot(
        log, quoted(log), el.BootPolicy((), REQUIRED)
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:32] + b"Spec ID Event02\0" + b[48:], "Spec ID"),
        (lambda b: b[:4] + b"\x01" + b[5:], "does not start"),
        (lambda b: b + struct.pack("<III", 24, 1, 0) + bytes(4), "PCR 24"),
        (lambda b: b + struct.pack("<IIIH", 1, 1, 1, 4) + bytes(20) + bytes(4), "not declared"),
        (lambda b: b + struct.pack("<III", 1, 1, 0) + struct.pack("<I", 1 << 30), "too large"),
    ],
)
def test_malformed_logs(mutate, message):
    with pytest.raises(EventLogError, match=message):
        el.parse(mutate(el.encode(boot_events())))


def test_startup_locality_sets_pcr0_start():
    loc = el.Event(0, c.EV_NO_ACTION, (), c.STARTUP_LOCALITY_SIGNATURE + b"\x03")
    first = el.measured(0, el.EV_S_CRTM_VERSION, b"fw")
    values = el.replay(el.parse(el.encode([loc, first])))
    start = bytes(31) + b"\x03"
    assert values[0] == hashlib.sha256(start + first.digests[0][1]).digest()
