"""network.lan_interfaces: interfaces join the client's bridge with their addresses and are
given back as they were; a missing or foreign-bridged interface is refused, nothing changed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware import netns
from hardware.netns import Lab, Namespace
from l2bridge.client.lan import LanAttachment, LanError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def state(ns: Namespace, dev: str) -> tuple[str | None, bool, list[str]]:
    doc = json.loads(ns.ip("-j", "addr", "show", "dev", dev))[0]
    addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in doc["addr_info"]
                   if a["scope"] == "global")  # fmt: skip
    return doc.get("master"), "UP" in doc["flags"], addrs


@pytest.fixture
def gateway() -> Iterator[tuple[Namespace, Namespace]]:
    with Lab() as lab:
        gw, host = lab.namespace("gw"), lab.namespace("host")
        lab.veth(gw, "eth1", host, "eth0")
        lab.veth(gw, "eth2", host, "eth9")
        gw.ip("addr", "add", "10.9.0.254/24", "dev", "eth1")
        gw.ip("addr", "add", "fd00:9::1/64", "dev", "eth1", "nodad")
        gw.ip("link", "set", "eth2", "down")
        host.ip("addr", "add", "10.9.0.1/24", "dev", "eth0")
        netns.bridge(gw, "br-sm")
        yield gw, host


def test_attach_moves_addresses_and_restore_gives_everything_back(
    gateway: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    gw, host = gateway
    before = {dev: state(gw, dev) for dev in ("eth1", "eth2")}
    lan = LanAttachment("br-sm", ("eth1", "eth2"), gw, state_dir=tmp_path)
    lan.attach()
    assert state(gw, "eth1")[0] == "br-sm" and state(gw, "eth1")[2] == []
    assert state(gw, "eth2")[:2] == ("br-sm", True)
    assert "10.9.0.254/24" in state(gw, "br-sm")[2]
    # the gateway still answers on its LAN address, now through the bridge
    assert " 0% packet loss" in host.run(["ping", "-c", "2", "-W", "2", "10.9.0.254"])
    lan.restore()
    assert {dev: state(gw, dev) for dev in ("eth1", "eth2")} == before
    assert "10.9.0.254/24" not in state(gw, "br-sm")[2]


def test_refusals_change_nothing(gateway: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    gw, _host = gateway
    before = state(gw, "eth1")
    with pytest.raises(LanError, match=r"network\.lan_interfaces: eth7: no such interface"):
        LanAttachment("br-sm", ("eth1", "eth7"), gw, state_dir=tmp_path).attach()
    assert state(gw, "eth1") == before
    netns.bridge(gw, "br-other")
    netns.attach(gw, "eth2", "br-other")
    with pytest.raises(LanError, match="eth2 is already in bridge br-other"):
        LanAttachment("br-sm", ("eth1", "eth2"), gw, state_dir=tmp_path).attach()
    assert state(gw, "eth1") == before


def test_a_killed_client_s_interfaces_are_given_back_by_the_next_run(
    gateway: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    gw, _host = gateway
    before = state(gw, "eth1")
    LanAttachment("br-sm", ("eth1",), gw, state_dir=tmp_path).attach()  # then "kill -9"
    assert state(gw, "eth1")[0] == "br-sm"
    again = LanAttachment("br-sm", ("eth1",), gw, state_dir=tmp_path)
    again.attach()  # still in our bridge, its addresses on the bridge
    again.restore()
    assert state(gw, "eth1") == before
    assert "10.9.0.254/24" not in state(gw, "br-sm")[2]
    assert not again.state_file.exists()


def gro(ns: Namespace, dev: str) -> str:
    for line in ns.run(["ethtool", "-k", dev]).splitlines():
        if line.strip().startswith("generic-receive-offload:"):
            return line.split(":", 1)[1].split()[0]
    raise AssertionError(f"{dev}: no generic-receive-offload line")


def test_gro_is_switched_on_while_attached_and_off_again_at_restore(
    gateway: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    gw, _host = gateway
    gw.run(["ethtool", "-K", "eth1", "gro", "off"])
    gw.run(["ethtool", "-K", "eth2", "gro", "on"])
    lan = LanAttachment("br-sm", ("eth1", "eth2"), gw, state_dir=tmp_path, gro=True)
    lan.attach()
    assert (gro(gw, "eth1"), gro(gw, "eth2")) == ("on", "on")
    recorded = json.loads(lan.state_file.read_text())
    assert {d["name"]: d["gro_was_off"] for d in recorded} == {"eth1": True, "eth2": False}
    # a client killed now and started again still knows eth1's GRO was off before
    again = LanAttachment("br-sm", ("eth1", "eth2"), gw, state_dir=tmp_path, gro=True)
    again.attach()
    again.restore()
    assert (gro(gw, "eth1"), gro(gw, "eth2")) == ("off", "on")
    # without gro, nothing is touched
    plain = LanAttachment("br-sm", ("eth1",), gw, state_dir=tmp_path)
    plain.attach()
    assert gro(gw, "eth1") == "off"
    plain.restore()
