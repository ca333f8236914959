import pytest

from timing import prs10, scpi
from timing.constants import (
    REASON_BAD_FIELD,
    REASON_FIELD_COUNT,
    REASON_TOO_LONG,
    REASON_UNEXPECTED,
)
from timing.errors import Prs10Error, ScpiError

T = 1_700_000_000.25


def test_scpi_replies_round_trip():
    ident = scpi.Identity("ACME", "RB-1", "42", "2.1")
    assert scpi.parse_reply(scpi.Query.IDN, scpi.encode_identity(ident)) == ident
    tod = scpi.parse_reply(scpi.Query.TIME, scpi.encode_time(T))
    assert isinstance(tod, scpi.TimeOfDay)
    assert tod.seconds_of_day == pytest.approx(T % 86400, abs=1e-6)
    assert scpi.parse_reply(scpi.Query.DATE, scpi.encode_date(2023, 11, 14)) == scpi.Date(
        2023, 11, 14
    )
    assert scpi.parse_reply(scpi.Query.LOCK, scpi.encode_lock(True)) == scpi.Lock(True)
    st = scpi.parse_reply(scpi.Query.STATUS, scpi.encode_status(scpi.STATUS_HOLDOVER))
    assert isinstance(st, scpi.Status) and st.healthy
    assert not scpi.Status(scpi.STATUS_NO_REFERENCE).healthy


def test_scpi_resolve_day_picks_nearest():
    assert scpi.resolve_day(T % 86400, T + 3) == pytest.approx(T)
    assert scpi.resolve_day(86399.5, T - (T % 86400) + 10) == pytest.approx(T - (T % 86400) - 0.5)


@pytest.mark.parametrize(
    ("query", "line", "reason"),
    [
        (scpi.Query.IDN, b"only,three,fields\n", REASON_FIELD_COUNT),
        (scpi.Query.TIME, b"25,00,00\n", REASON_BAD_FIELD),
        (scpi.Query.TIME, b"12,00\n", REASON_FIELD_COUNT),
        (scpi.Query.TIME, b"12,00,07.x\n", REASON_BAD_FIELD),
        (scpi.Query.DATE, b"2023,13,01\n", REASON_BAD_FIELD),
        (scpi.Query.LOCK, b"yes\n", REASON_BAD_FIELD),
        (scpi.Query.STATUS, b"-1\n", REASON_BAD_FIELD),
        (scpi.Query.STATUS, b"9" * 200 + b"\n", REASON_TOO_LONG),
    ],
)
def test_scpi_bad_replies(query, line, reason):
    with pytest.raises(ScpiError) as info:
        scpi.parse_reply(query, line)
    assert info.value.reason == reason


def test_scpi_commands_long_and_short_forms():
    assert scpi.parse_command(b"*idn?\n") is scpi.Query.IDN
    assert scpi.parse_command(b":SYSTem:TIME?\r\n") is scpi.Query.TIME
    assert scpi.parse_command(b"synchronization:lock?") is scpi.Query.LOCK
    for bad in (b"SYST:TIME", b"FOO:BAR?", b"SYST:LOCK?"):
        with pytest.raises(ScpiError) as info:
            scpi.parse_command(bad)
        assert info.value.reason == REASON_UNEXPECTED


def test_scpi_client_exchange_timeout_and_unsolicited():
    c = scpi.ScpiClient(reply_timeout=0.5)
    assert c.request(scpi.Query.TIME, 10.0) == b"SYST:TIME?\n"
    with pytest.raises(ScpiError):
        c.request(scpi.Query.LOCK, 10.0)
    (ev,) = c.feed(scpi.encode_time(T), 10.002)
    assert isinstance(ev, scpi.TimeOfDay) and (ev.sent, ev.received) == (10.0, 10.002)
    assert c.feed(b"1\n", 11.0) == [scpi.Rejected(REASON_UNEXPECTED, None)]
    c.request(scpi.Query.LOCK, 12.0)
    assert c.expire(12.4) == []
    assert c.expire(12.6) == [scpi.TimedOut(scpi.Query.LOCK)]
    c.request(scpi.Query.LOCK, 13.0)
    assert c.feed(b"maybe\n", 13.1) == [scpi.Rejected(REASON_BAD_FIELD, scpi.Query.LOCK)]


def test_prs10_replies_and_commands():
    assert prs10.parse_reply(prs10.Command.ID, b"PRS10_3.24_SN_77777\r") == prs10.Identity(
        "3.24", "77777"
    )
    st = prs10.parse_reply(prs10.Command.ST, prs10.encode_status((0, 0, 0, 0, 4, 0)))
    assert isinstance(st, prs10.StatusBytes) and st.healthy and st.pps_locked
    assert not prs10.StatusBytes((0, 0, 2, 0, 0, 0)).healthy
    assert prs10.parse_reply(prs10.Command.LO, b"1\r") == prs10.LockLoop(True)
    tt = prs10.parse_reply(prs10.Command.TT, prs10.encode_time_tag(-1.5e-7), 3.0)
    assert tt == prs10.TimeTag(pytest.approx(-1.5e-7), 3.0)
    assert prs10.parse_command(b"tt?\r") == (prs10.Command.TT, None)
    assert prs10.parse_command(b"LO 0\r") == (prs10.Command.LO, "0")


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (prs10.Command.ID, b"SRS_3.24_SN_1"),
        (prs10.Command.ST, b"0,0,0,0,0"),
        (prs10.Command.ST, b"0,0,0,0,0,256"),
        (prs10.Command.LO, b"2"),
        (prs10.Command.TT, b"12ns"),
        (prs10.Command.TT, b"5000000000"),
        (prs10.Command.TT, b""),
    ],
)
def test_prs10_bad_replies(command, line):
    with pytest.raises(Prs10Error):
        prs10.parse_reply(command, line)


def test_prs10_bad_commands_and_client():
    for bad in (b"XX?", b"ST 5", b"LO 7"):
        with pytest.raises(Prs10Error):
            prs10.parse_command(bad)
    c = prs10.Prs10Client(reply_timeout=0.5)
    assert c.request(prs10.Command.ST, 1.0) == b"ST?\r"
    (ev,) = c.feed(b"0,0,0,0,4,0\r", 1.1)
    assert isinstance(ev, prs10.StatusBytes)
    c.request(prs10.Command.TT, 2.0)
    assert c.expire(3.0) == [prs10.TimedOut(prs10.Command.TT)]
    assert c.feed(b"x" * 100 + b"\r", 4.0) == [prs10.Rejected(REASON_TOO_LONG, None)]
