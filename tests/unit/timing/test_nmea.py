import pytest

from timing import nmea
from timing.constants import (
    REASON_BAD_ADDRESS,
    REASON_BAD_CHECKSUM,
    REASON_BAD_FIELD,
    REASON_EMPTY,
    REASON_FIELD_COUNT,
    REASON_NO_CHECKSUM,
    REASON_NO_START,
    REASON_NOT_ASCII,
    REASON_TOO_LONG,
)
from timing.errors import NmeaError

T = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def test_checksum_of_known_sentence():
    # blank RMC a u-blox sends before its first fix
    assert nmea.parse(b"$GPRMC,,V,,,,,,,,,,N*53\r\n") == nmea.Rmc("GP", None, False, "N")


@pytest.mark.parametrize("utc", [T, T + 0.5, T + 86399.99 - (T % 86400), 946684800.0])
def test_round_trips(utc):
    assert nmea.parse(nmea.encode_zda(utc)) == nmea.Zda("GP", pytest.approx(utc), 0)
    assert nmea.parse(nmea.encode_rmc(utc, True)) == nmea.Rmc("GP", pytest.approx(utc), True, "A")
    gga = nmea.parse(nmea.encode_gga(utc, 2, 11, talker="GN"))
    assert gga == nmea.Gga("GN", pytest.approx(utc % 86400), 2, 11)


def test_blank_fields_before_a_fix():
    assert nmea.parse(nmea.encode_zda(None)) == nmea.Zda("GP", None, None)
    assert nmea.parse(nmea.encode_rmc(None, False)).utc is None
    gga = nmea.parse(nmea.encode_gga(None, 0, 0))
    assert isinstance(gga, nmea.Gga) and gga.fix_quality == 0 and gga.seconds_of_day is None


def test_rmc_warning_flag_and_mode():
    rmc = nmea.parse(nmea.encode_rmc(T, False))
    assert isinstance(rmc, nmea.Rmc) and rmc.utc == T and not rmc.valid
    # status A but mode N (data not valid) is not valid
    line = nmea.encode(
        "GP", "RMC", ["221320.00", "A", "", "", "", "", "", "", "141123", "", "", "N"]
    )
    assert not nmea.parse(line).valid  # type: ignore[union-attr]
    # NMEA 2.0 (11 fields, no mode) and 4.1 (13 fields)
    f11 = ["221320.00", "A", "", "", "", "", "", "", "141123", "", ""]
    assert nmea.parse(nmea.encode("GP", "RMC", f11)).valid  # type: ignore[union-attr]
    assert nmea.parse(nmea.encode("GN", "RMC", [*f11, "A", "V"])).valid  # type: ignore[union-attr]


def test_other_sentences_are_passed_through():
    s = nmea.parse(nmea.encode("GP", "GSV", ["1", "1", "00"]))
    assert s == nmea.Sentence("GP", "GSV", ("1", "1", "00"))
    p = nmea.parse(nmea.encode("P", "UBX", ["00"]))
    assert isinstance(p, nmea.Sentence) and p.talker == "P"


def _bad(reason: str, line: bytes) -> None:
    with pytest.raises(NmeaError) as info:
        nmea.parse(line)
    assert info.value.reason == reason


def _with_fields(kind: str, fields: list[str]) -> bytes:
    return nmea.encode("GP", kind, fields)


def test_every_malformed_class():
    good = nmea.encode_zda(T)
    _bad(REASON_EMPTY, b"\r\n")
    _bad(REASON_TOO_LONG, b"$GPZDA," + b"1" * 90 + b"*00")
    _bad(REASON_NOT_ASCII, good.replace(b"Z", b"\xda"))
    _bad(REASON_NOT_ASCII, good[:-2] + b"\x00")
    _bad(REASON_NO_START, good[1:])
    _bad(REASON_NO_CHECKSUM, good.split(b"*")[0])
    _bad(REASON_NO_CHECKSUM, good.split(b"*")[0] + b"*5")
    _bad(REASON_BAD_CHECKSUM, good.split(b"*")[0] + b"*00")
    _bad(REASON_BAD_CHECKSUM, good.split(b"*")[0] + b"*ZZ")
    _bad(REASON_BAD_ADDRESS, nmea.encode("G", "ZDA", ["", "", "", "", "", ""]))
    _bad(REASON_BAD_ADDRESS, nmea.encode("gp", "ZDA", ["", "", "", "", "", ""]))
    _bad(REASON_FIELD_COUNT, _with_fields("ZDA", ["", ""]))
    _bad(REASON_FIELD_COUNT, _with_fields("RMC", [""] * 5))
    _bad(REASON_FIELD_COUNT, _with_fields("GGA", [""] * 13))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["256199.00", "14", "11", "2023", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["221320.00", "31", "11", "2023", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["221320.00", "14", "13", "2023", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["221320.00", "14", "11", "23", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["2213", "14", "11", "2023", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["221320.", "14", "11", "2023", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("ZDA", ["221320.00", "", "11", "2023", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("RMC", ["221320", "X", *[""] * 6, "141123", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("RMC", ["221320", "A", *[""] * 6, "1411", "", ""]))
    _bad(REASON_BAD_FIELD, _with_fields("RMC", ["221320", "A", *[""] * 6, "141123", "", "", "Q"]))
    _bad(REASON_BAD_FIELD, _with_fields("GGA", ["221320", "", "", "", "", "x", *[""] * 8]))
    _bad(REASON_BAD_FIELD, _with_fields("GGA", ["221320", "", "", "", "", "1", "-3", *[""] * 7]))


def test_leap_second_is_accepted():
    z = nmea.parse(_with_fields("ZDA", ["235960.00", "31", "12", "2016", "00", "00"]))
    assert isinstance(z, nmea.Zda) and z.utc == 1483228800.0  # 23:59:60 == next midnight


def test_zone_fields():
    z = nmea.parse(_with_fields("ZDA", ["221320.00", "14", "11", "2023", "-05", "30"]))
    assert isinstance(z, nmea.Zda) and z.zone_minutes == -330


def _burst(utc: float | None, valid: bool) -> list[nmea.Parsed]:
    return [
        nmea.parse(nmea.encode_rmc(utc, valid)),
        nmea.parse(nmea.encode_gga(utc, 1 if valid else 0, 8)),
        nmea.parse(nmea.encode_zda(utc)),
    ]


def test_tracker_groups_one_second_and_stamps_first_arrival():
    tr = nmea.NmeaTimeTracker(burst_gap=0.3)
    out = []
    for i, s in enumerate(_burst(T, True)):
        out += tr.feed(s, 100.0 + i * 0.01)
    assert out == []
    assert tr.poll(100.1) == []
    (fix,) = tr.poll(100.5)
    assert fix == nmea.GnssTime(T, 100.0, True, 1, 8)
    # the next second's first sentence closes a pending one too
    tr.feed(_burst(T + 1, True)[0], 101.0)
    (fix2,) = tr.feed(_burst(T + 2, True)[0], 102.0)
    assert fix2.label == T + 1 and fix2.received == 101.0


def test_tracker_validity():
    tr = nmea.NmeaTimeTracker()
    for s in _burst(T, False):
        tr.feed(s, 1.0)
    (fix,) = tr.poll(5.0)
    assert not fix.valid
    # ZDA alone is not a fix
    tr.feed(nmea.parse(nmea.encode_zda(T + 1)), 6.0)
    (fix,) = tr.poll(9.0)
    assert not fix.valid
    # blank sentences produce nothing
    for s in _burst(None, False):
        assert tr.feed(s, 10.0) == []
    assert tr.poll(20.0) == []
    # GGA alone with a date learnt earlier gives a label
    tr.feed(nmea.parse(nmea.encode_gga(T + 5, 1, 7)), 30.0)
    (fix,) = tr.poll(31.0)
    assert fix.label == T + 5 and fix.valid
