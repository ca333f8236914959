import pytest

from l2bridge.transport.caps import ConnectionCaps, source_key


def test_source_keys():
    assert source_key("198.51.100.7") == "198.51.100.7"
    assert source_key("::ffff:198.51.100.7") == "198.51.100.7"
    # One subscriber's /64 is one source, whatever addresses it picks inside it.
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("fe80::1%eth0") == source_key("fe80::2")


def test_caps_total_and_per_source():
    caps = ConnectionCaps(total=3, per_source=2)
    assert caps.open("a") and caps.open("a")
    assert not caps.open("a")  # per source
    assert caps.open("b")
    assert not caps.open("c")  # total
    caps.close("a")
    assert caps.open("c")
    assert not caps.open("a")
    assert caps.open_count == 3


def test_caps_refuse_bad_use():
    with pytest.raises(ValueError):
        ConnectionCaps(total=0, per_source=1)
    caps = ConnectionCaps(total=1, per_source=1)
    with pytest.raises(ValueError):
        caps.close("never-opened")
