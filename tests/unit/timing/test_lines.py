from timing.lines import Line, LineSplitter, Overlong


def test_split_on_cr_lf_and_stamp_first_byte():
    s = LineSplitter()
    assert s.feed(b"$GPZ", 1.0) == []
    assert s.feed(b"DA\r\n$GP", 2.0) == [Line(b"$GPZDA", 1.0)]
    assert s.feed(b"RMC\n\r\nX\r", 3.0) == [Line(b"$GPRMC", 2.0), Line(b"X", 3.0)]
    assert s.pending() == 0


def test_overlong_dropped_once_up_to_end_of_line():
    s = LineSplitter(max_line=8)
    out = s.feed(b"0123456789abc", 1.0)
    assert out == [Overlong(1.0)]
    assert s.feed(b"defgh" * 100, 2.0) == []
    assert s.pending() == 0
    assert s.feed(b"\nok\n", 3.0) == [Line(b"ok", 3.0)]


def test_reset_forgets_partial():
    s = LineSplitter()
    s.feed(b"half", 1.0)
    s.reset()
    assert s.feed(b"new\n", 2.0) == [Line(b"new", 2.0)]
