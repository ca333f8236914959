"""Sources over the fake serial port and fake PPS, in real (short) time."""

import math
import threading
import time

import pytest

from hardware.pps import FakePps
from hardware.serial_port import FakeSerialPort, SerialSettings
from timing import clock as clk
from timing import nmea, prs10, scpi
from timing.sources import GpsdoSource, Prs10Source, ScpiSource, label_pps


def _wait(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _status(c, name):
    return next(s for s in c.status().sources if s.name == name)


def test_gpsdo_nmea_samples_rejects_and_unplug_replug():
    c = clk.DisciplinedClock()
    port = FakeSerialPort(SerialSettings("fake-gps", timeout=0.05))
    src = GpsdoSource("gps", c, port)
    src.start()
    try:
        assert _wait(lambda: port.is_open)
        offset = 0.2
        for _ in range(3):
            # speak at the device's whole second, as a receiver does
            label = math.ceil(c.local() + offset)
            time.sleep(max(0.0, label - offset - c.local()))
            port.inject(nmea.encode_rmc(float(label), True) + b"$GPZDA,garbage*00\r\n")
        assert _wait(lambda: _status(c, "gps").samples >= 2)
        st = _status(c, "gps")
        assert st.locked and st.state == "ok"
        assert dict(st.rejected)["bad-checksum"] >= 2
        port.unplug()
        assert _wait(lambda: _status(c, "gps").state == "disconnected")
        port.replug()
        assert _wait(lambda: src.reconnects == 1 and port.is_open)
    finally:
        src.stop()
    assert not src.running


def test_gpsdo_no_fix_is_not_locked():
    c = clk.DisciplinedClock()
    port = FakeSerialPort(SerialSettings("fake-gps", timeout=0.05))
    src = GpsdoSource("gps", c, port)
    src.start()
    try:
        assert _wait(lambda: port.is_open)
        port.inject(nmea.encode_rmc(1.7e9, False) + nmea.encode_gga(1.7e9, 0, 0))
        assert _wait(lambda: _status(c, "gps").state == "no-fix")
        assert not _status(c, "gps").locked and _status(c, "gps").samples == 0
    finally:
        src.stop()


def test_label_pps():
    fix = nmea.GnssTime(1000.0, 50.3, True, 1, 8)
    assert label_pps(50.25, fix, 0.05) == 1000.0
    assert label_pps(51.25, fix, 0.05) == 1001.0
    assert label_pps(50.75, fix, 0.05) is None  # half a second off: ambiguous
    assert label_pps(55.0, fix, 0.05) is None


def test_gpsdo_with_pps_uses_edges():
    c = clk.DisciplinedClock()
    port = FakeSerialPort(SerialSettings("fake-gps", timeout=0.05))
    pps = FakePps()
    # realtime == local here, so edges are local times
    src = GpsdoSource("gps", c, port, pps=pps, realtime=c.local)
    src.start()
    try:
        assert _wait(lambda: port.is_open)
        true_offset = 0.3
        for _ in range(3):
            edge_local = c.local()
            label = round(edge_local + true_offset)
            edge_local = label - true_offset
            port.inject(nmea.encode_rmc(float(label), True))
            time.sleep(0.35)  # the burst closes after the gap
            pps.pulse(edge_local)
            time.sleep(0.1)
        assert _wait(lambda: _status(c, "gps").samples >= 2)
        assert _status(c, "gps").offset == pytest.approx(true_offset, abs=1e-4)
    finally:
        src.stop()


def _scpi_device(offset, locked):
    def respond(data: bytes) -> bytes:
        q = scpi.parse_command(data)
        if q is scpi.Query.TIME:
            return scpi.encode_time(time.time() + offset)
        if q is scpi.Query.LOCK:
            return scpi.encode_lock(locked[0])
        if q is scpi.Query.STATUS:
            return scpi.encode_status(0)
        return scpi.encode_identity(scpi.Identity("SIM", "RB", "1", "1"))

    return respond


def test_scpi_source_polls_and_reports_lock():
    locked = [False]
    c = clk.DisciplinedClock()
    port = FakeSerialPort(SerialSettings("fake-rb", timeout=0.05), _scpi_device(0.5, locked))
    src = ScpiSource("rb", c, port, poll_interval=0.1)
    src.start()
    try:
        assert _wait(lambda: src.identity is not None)
        assert _wait(lambda: _status(c, "rb").state == "unlocked")
        assert _status(c, "rb").samples == 0
        locked[0] = True
        assert _wait(lambda: _status(c, "rb").samples >= 3)
        assert _status(c, "rb").offset == pytest.approx(0.5, abs=0.01)
        assert c.status().quorum_met
    finally:
        src.stop()


def test_prs10_source_lock_without_pps_is_not_a_candidate():
    def respond(data: bytes) -> bytes:
        command, _ = prs10.parse_command(data)
        return {
            prs10.Command.ID: prs10.encode_identity(prs10.Identity("3.24", "9")),
            prs10.Command.ST: prs10.encode_status((0, 0, 0, 0, 4, 0)),
            prs10.Command.LO: prs10.encode_lock(True),
            prs10.Command.TT: prs10.encode_time_tag(12e-9),
        }[command]

    c = clk.DisciplinedClock()
    port = FakeSerialPort(SerialSettings("fake-prs", timeout=0.05), respond)
    src = Prs10Source("prs", c, port, poll_interval=0.1)
    src.start()
    try:
        assert _wait(lambda: src.time_tag is not None and _status(c, "prs").locked)
        assert src.identity == prs10.Identity("3.24", "9")
        assert src.time_tag == pytest.approx(12e-9)
        assert c.status().candidates == 0
        assert "no PPS" in _status(c, "prs").detail
    finally:
        src.stop()


def test_fake_serial_port_contract():
    port = FakeSerialPort(SerialSettings("x", timeout=0.05))
    port.open()
    got = []
    t = threading.Thread(target=lambda: got.append(port.read(10)))
    t.start()
    port.inject(b"abc")
    t.join(2)
    assert got == [b"abc"] and port.read(1) == b""
    port.unplug()
    with pytest.raises(OSError):
        port.read(1)
    with pytest.raises(OSError):
        port.open()


def test_prs10_with_pps_labels_edges_only_while_locked():
    locked = [False]

    def respond(data: bytes) -> bytes:
        command, _ = prs10.parse_command(data)
        return {
            prs10.Command.ID: prs10.encode_identity(prs10.Identity("3.24", "9")),
            prs10.Command.ST: prs10.encode_status((0, 0, 0, 0, 4, 0)),
            prs10.Command.LO: prs10.encode_lock(locked[0]),
            prs10.Command.TT: prs10.encode_time_tag(12e-9),
        }[command]

    def edge_on_whole_second():
        # the host clock labels the edge (quorum 1): put it on a whole system second
        return c.local() - (time.time() % 1.0)

    c = clk.DisciplinedClock()
    port = FakeSerialPort(SerialSettings("fake-prs", timeout=0.05), respond)
    pps = FakePps()
    src = Prs10Source("prs", c, port, poll_interval=0.1, pps=pps, realtime=c.local)
    src.start()
    try:
        assert _wait(lambda: _status(c, "prs").state == "unlocked")
        pps.pulse(edge_on_whole_second())
        time.sleep(0.3)
        assert _status(c, "prs").samples == 0  # unlocked: its edges name no second
        locked[0] = True
        assert _wait(lambda: _status(c, "prs").locked)
        for _ in range(3):
            pps.pulse(edge_on_whole_second())
            time.sleep(0.1)
        assert _wait(lambda: _status(c, "prs").samples >= 1)
        assert "no PPS" not in _status(c, "prs").detail
    finally:
        src.stop()
