"""Fuzzing the timing dialects: any input gives a result or a documented ParseError."""

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from timing import nmea, prs10, scpi
from timing.errors import ParseError
from timing.lines import LineSplitter

LINES = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda kind, fields: nmea.encode("GP", kind, fields),
        st.sampled_from(["ZDA", "RMC", "GGA", "GSV"]),
        st.lists(st.text(alphabet="0123456789.,AVNE-+ ", max_size=12), max_size=15),
    ),
)


@settings(max_examples=400, deadline=None)
@given(LINES)
def test_nmea_parse(line):
    with contextlib.suppress(ParseError):
        nmea.parse(line)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=150), st.sampled_from(list(scpi.Query)))
def test_scpi_reply_and_command(line, query):
    for fn in (lambda: scpi.parse_reply(query, line), lambda: scpi.parse_command(line)):
        with contextlib.suppress(ParseError):
            fn()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.sampled_from(list(prs10.Command)))
def test_prs10_reply_and_command(line, command):
    for fn in (lambda: prs10.parse_reply(command, line), lambda: prs10.parse_command(line)):
        with contextlib.suppress(ParseError):
            fn()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=20))
def test_stream_clients_and_tracker_never_raise(chunks):
    splitter = LineSplitter(64)
    sc, pc = scpi.ScpiClient(), prs10.Prs10Client()
    tracker = nmea.NmeaTimeTracker()
    for i, chunk in enumerate(chunks):
        now = float(i)
        if not sc.busy:
            sc.request(scpi.Query.TIME, now)
        if not pc.busy:
            pc.request(prs10.Command.TT, now)
        sc.feed(chunk, now)
        pc.feed(chunk, now)
        for item in splitter.feed(chunk, now):
            assert getattr(item, "data", b"") == b"" or len(item.data) <= 64
            with contextlib.suppress(ParseError):
                tracker.feed(nmea.parse(getattr(item, "data", b"")), now)
        tracker.poll(now + 0.5)
        assert splitter.pending() <= 64
