"""What the merging port (hardware.gro_port) is called and when it is refused."""

from __future__ import annotations

import pytest

from hardware.gro_port import FULL_NAME_LEN, GroPort, GroPortError, check_gro, names, plan
from hardware.netns import Namespace


def test_names_follow_the_tap_and_fit_an_interface_name() -> None:
    assert names("sm0") == ("sm0-out", "sm0-in")
    long = "a-very-long-tap"  # 15 characters: the longest name Linux takes
    for name in names(long):
        assert len(name) <= 15 and name.startswith("a-very-long")
    assert len(set(names(long))) == 2


@pytest.mark.parametrize(
    ("vnet_hdr", "bridge", "message"),
    [(False, "br0", "needs network.vnet_hdr: true"), (True, None, "needs network.bridge")],
)
def test_kernel_merging_is_refused_where_it_cannot_work(
    vnet_hdr: bool, bridge: str | None, message: str
) -> None:
    with pytest.raises(GroPortError, match=message):
        check_gro("kernel", vnet_hdr, bridge)
    # the other modes need neither
    check_gro("software", vnet_hdr, bridge)
    check_gro("off", vnet_hdr, bridge)


def test_teardown_removes_the_taps_redirect_and_the_pair_in_the_ports_namespace() -> None:
    port = GroPort(Namespace("lab1"), "sm0", "br0", 1500)
    assert port.teardown() == [
        ["ip", "netns", "exec", "lab1", "tc", "qdisc", "del", "dev", "sm0", "clsact"],
        ["ip", "netns", "exec", "lab1", "ip", "link", "del", "sm0-out"],
    ]
    assert GroPort(None, "sm0", "br0", 1500).teardown()[1] == ["ip", "link", "del", "sm0-out"]


def test_auto_is_kernel_only_where_the_port_can_work() -> None:
    assert plan("auto", "sm0", True, "br0") == "kernel"
    assert plan("auto", "sm0", False, "br0") == "software"  # the TAP cannot take super-frames
    assert plan("auto", "sm0", True, None) == "software"  # no bridge to join
    # A name the port's devices would cut: two such TAPs could share one port's names.
    assert plan("auto", "a" * FULL_NAME_LEN, True, "br0") == "kernel"
    assert plan("auto", "a" * (FULL_NAME_LEN + 1), True, "br0") == "software"
    assert FULL_NAME_LEN + len("-out") == 15


def test_explicit_modes_are_kept_and_kernel_checked() -> None:
    assert plan("software", "sm0", True, "br0") == "software"
    assert plan("off", "sm0", True, "br0") == "off"
    assert plan("kernel", "sm0", True, "br0") == "kernel"
    with pytest.raises(GroPortError, match=r"needs network\.bridge"):
        plan("kernel", "sm0", True, None)
