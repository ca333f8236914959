"""What the merging port (hardware.gro_port) is called and when it is refused."""

from __future__ import annotations

import pytest

from hardware.gro_port import GroPort, GroPortError, check_gro, names
from hardware.netns import Namespace


def test_names_follow_the_tap_and_fit_an_interface_name() -> None:
    assert names("sm0") == ("sm0-out", "sm0-in", "sm0-br")
    long = "a-very-long-tap"  # 15 characters: the longest name Linux takes
    for name in names(long):
        assert len(name) <= 15 and name.startswith("a-very-long")
    assert len(set(names(long))) == 3


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


def test_teardown_removes_the_pair_and_the_inner_bridge_in_the_ports_namespace() -> None:
    port = GroPort(Namespace("lab1"), "sm0", "br0", 1500)
    assert port.teardown() == [
        ["ip", "netns", "exec", "lab1", "ip", "link", "del", "sm0-br"],
        ["ip", "netns", "exec", "lab1", "ip", "link", "del", "sm0-out"],
    ]
    assert GroPort(None, "sm0", "br0", 1500).teardown()[1] == ["ip", "link", "del", "sm0-out"]
