"""The merging port (hardware.gro_port) in a namespace of its own: what it builds, what it
leaves behind, and what it refuses to touch (root; a TAP made with ``ip tuntap`` stands in
for the node's)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from hardware import netns
from hardware.gro_port import GroPort, GroPortError
from hardware.netns import Lab, Namespace

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with Lab() as lab:
        space = lab.namespace("gport")
        space.ip("link", "add", "br0", "type", "bridge")
        space.ip("tuntap", "add", "dev", "sm0", "mode", "tap")
        yield space


def _master(ns: Namespace, dev: str) -> str | None:
    doc = json.loads(ns.ip("-j", "link", "show", "dev", dev))[0]
    return doc.get("master")


def _feature(ns: Namespace, dev: str, name: str) -> str:
    for line in ns.run(["ethtool", "-k", dev]).splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value.split()[0]
    raise AssertionError(f"{dev}: no {name}")


def test_the_tap_reaches_its_bridge_through_the_pair_and_close_takes_it_away(
    ns: Namespace,
) -> None:
    port = GroPort(ns, "sm0", "br0", 1400)
    port.open()
    assert _master(ns, "sm0") == "sm0-br"
    assert _master(ns, "sm0-in") == "sm0-br"
    assert _master(ns, "sm0-out") == "br0"
    # TSO off on the sending end is what sends every frame through the merging end's GRO.
    assert _feature(ns, "sm0-out", "tcp-segmentation-offload") == "off"
    assert _feature(ns, "sm0-in", "generic-receive-offload") == "on"
    for dev in ("sm0-out", "sm0-in", "sm0-br"):
        assert json.loads(ns.ip("-j", "link", "show", "dev", dev))[0]["mtu"] == 1400
        # ports, not hosts: nothing of their own (IPv6 link-local, MLD) into the LAN
        assert ns.run(["cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"]).strip() == "1"
        assert "inet6" not in ns.ip("-o", "addr", "show", "dev", dev)
    port.close()
    for dev in ("sm0-out", "sm0-in", "sm0-br"):
        assert not netns.link_exists(ns, dev)
    assert netns.link_exists(ns, "sm0") and _master(ns, "sm0") is None


def test_a_killed_nodes_port_is_replaced_at_the_next_start(ns: Namespace) -> None:
    GroPort(ns, "sm0", "br0", 1500).open()  # never closed: the node was killed
    again = GroPort(ns, "sm0", "br0", 1500)
    again.open()
    assert _master(ns, "sm0-out") == "br0" and _master(ns, "sm0") == "sm0-br"
    for cmd in again.teardown():
        netns.run(cmd)
    assert not netns.link_exists(ns, "sm0-out") and not netns.link_exists(ns, "sm0-br")


@pytest.mark.parametrize("name", ["sm0-out", "sm0-br", "sm0-in"])
def test_a_device_of_the_same_name_that_is_not_ours_is_refused_and_left(
    ns: Namespace, name: str
) -> None:
    ns.ip("tuntap", "add", "dev", name, "mode", "tap")
    with pytest.raises(GroPortError, match=name):
        GroPort(ns, "sm0", "br0", 1500).open()
    assert netns.link_exists(ns, name)
    assert _master(ns, "sm0") is None


def test_an_operators_bridge_of_the_inner_bridges_name_is_refused_and_left(ns: Namespace) -> None:
    ns.ip("link", "add", "sm0-br", "type", "bridge")  # default settings: not one we made
    with pytest.raises(GroPortError, match="sm0-br"):
        GroPort(ns, "sm0", "br0", 1500).open()
    assert netns.link_exists(ns, "sm0-br")
    # ours in every setting, but holding a port of someone else's: still refused
    ns.ip("link", "del", "sm0-br")
    port = GroPort(ns, "sm0", "br0", 1500)
    port.open()
    ns.ip("link", "del", "sm0-out")
    ns.ip("tuntap", "add", "dev", "other0", "mode", "tap")
    ns.ip("link", "set", "other0", "master", "sm0-br")
    with pytest.raises(GroPortError, match="sm0-br"):
        GroPort(ns, "sm0", "br0", 1500).open()
    assert _master(ns, "other0") == "sm0-br"


def test_a_failed_build_leaves_nothing_behind(ns: Namespace) -> None:
    with pytest.raises(GroPortError, match=r"network\.gro: kernel"):
        GroPort(ns, "sm0", "no-such-br", 1500).open()
    for dev in ("sm0-out", "sm0-in", "sm0-br"):
        assert not netns.link_exists(ns, dev)
