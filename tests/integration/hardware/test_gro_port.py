"""The merging port (hardware.gro_port) in a namespace of its own: what it builds, what it
leaves behind, and what it refuses to touch (root; a TAP made with ``ip tuntap`` stands in
for the node's)."""

from __future__ import annotations

import json
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware import ethernet, gro, netns
from hardware.gro_port import (
    GRO_FLUSH_TIMEOUT_NS,
    GroPort,
    GroPortError,
    join_bridge,
    longer_than,
)
from hardware.netns import Lab, Namespace, unique
from hardware.tap import LinuxTap, TapConfig

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
    assert _master(ns, "sm0-out") == "br0"
    # Between the merging end and the TAP: tc both ways, no bridge (nothing learns or
    # filters there, and netfilter never sees the frames a second time).
    assert _master(ns, "sm0") is None and _master(ns, "sm0-in") is None
    assert "Egress Redirect to device sm0)" in ns.run(
        ["tc", "filter", "show", "dev", "sm0-in", "ingress"]
    )
    assert "Egress Redirect to device sm0-in)" in ns.run(
        ["tc", "filter", "show", "dev", "sm0", "ingress"]
    )
    # TSO off on the sending end is what sends every frame through the merging end's GRO.
    assert _feature(ns, "sm0-out", "tcp-segmentation-offload") == "off"
    assert _feature(ns, "sm0-in", "generic-receive-offload") == "on"
    assert _feature(ns, "sm0-in", "rx-udp-gro-forwarding") == "on"
    flush = ns.run(["cat", "/sys/class/net/sm0-in/gro_flush_timeout"]).strip()
    assert flush == str(GRO_FLUSH_TIMEOUT_NS)
    # Frames longer than any single frame (super-frames) go around the pair to the TAP.
    shown = ns.run(["tc", "filter", "show", "dev", "sm0-out", "egress"])
    assert f"bytecode '{longer_than(1400 + 22)}'" in shown
    assert "Egress Redirect to device sm0)" in shown
    for dev in ("sm0-out", "sm0-in"):
        assert json.loads(ns.ip("-j", "link", "show", "dev", dev))[0]["mtu"] == 1400
        # ports, not hosts: nothing of their own (IPv6 link-local, MLD) into the LAN
        assert ns.run(["cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"]).strip() == "1"
        assert "inet6" not in ns.ip("-o", "addr", "show", "dev", dev)
    port.close()
    for dev in ("sm0-out", "sm0-in"):
        assert not netns.link_exists(ns, dev)
    assert netns.link_exists(ns, "sm0") and _master(ns, "sm0") is None
    assert "clsact" not in ns.run(["tc", "qdisc", "show", "dev", "sm0"])


def test_a_killed_nodes_port_is_replaced_at_the_next_start(ns: Namespace) -> None:
    GroPort(ns, "sm0", "br0", 1500).open()  # never closed: the node was killed
    again = GroPort(ns, "sm0", "br0", 1500)
    again.open()
    assert _master(ns, "sm0-out") == "br0"
    # one redirect from the TAP, not one per start
    shown = ns.run(["tc", "filter", "show", "dev", "sm0", "ingress"])
    assert shown.count("Egress Redirect to device sm0-in)") == 1
    for cmd in again.teardown():
        netns.run(cmd)
    assert not netns.link_exists(ns, "sm0-out") and not netns.link_exists(ns, "sm0-in")


def _old_inner_bridge(ns: Namespace, *ports: str) -> None:
    """The inner bridge earlier versions put between the merging end and the TAP."""
    ns.ip("link", "add", "sm0-br", "type", "bridge", "stp_state", "0", "forward_delay", "0",
          "mcast_snooping", "0", "group_fwd_mask", "0xfff8")  # fmt: skip
    for port in ports:
        ns.ip("link", "set", port, "master", "sm0-br")


@pytest.mark.parametrize("with_tap", [False, True])
def test_the_bridge_an_earlier_version_left_is_removed(ns: Namespace, with_tap: bool) -> None:
    # A node of the earlier version killed: its bridge stays, empty, or holding a
    # persistent TAP (which must not stay in a bridge the port no longer uses).
    _old_inner_bridge(ns, *(["sm0"] if with_tap else []))
    port = GroPort(ns, "sm0", "br0", 1500)
    port.open()
    assert not netns.link_exists(ns, "sm0-br")
    assert _master(ns, "sm0") is None and _master(ns, "sm0-out") == "br0"
    port.close()


def test_a_bridge_of_the_old_name_that_is_not_a_leftover_is_left(ns: Namespace) -> None:
    # Another port in it: somebody's bridge, whatever its settings.
    ns.ip("tuntap", "add", "dev", "other0", "mode", "tap")
    _old_inner_bridge(ns, "other0")
    # A plain bridge of that name.
    ns.ip("link", "add", "sm1-br", "type", "bridge")
    ns.ip("tuntap", "add", "dev", "sm1", "mode", "tap")
    for tap in ("sm0", "sm1"):
        port = GroPort(ns, tap, "br0", 1500)
        port.open()
        port.close()
    assert _master(ns, "other0") == "sm0-br"
    assert netns.link_exists(ns, "sm1-br")


@pytest.mark.parametrize("name", ["sm0-out", "sm0-in"])
def test_a_device_of_the_same_name_that_is_not_ours_is_refused_and_left(
    ns: Namespace, name: str
) -> None:
    ns.ip("tuntap", "add", "dev", name, "mode", "tap")
    with pytest.raises(GroPortError, match=name):
        GroPort(ns, "sm0", "br0", 1500).open()
    assert netns.link_exists(ns, name)
    assert _master(ns, "sm0") is None


def test_a_failed_build_leaves_nothing_behind(ns: Namespace) -> None:
    with pytest.raises(GroPortError, match=r"network\.gro: kernel"):
        GroPort(ns, "sm0", "no-such-br", 1500).open()
    for dev in ("sm0-out", "sm0-in"):
        assert not netns.link_exists(ns, dev)
    assert "clsact" not in ns.run(["tc", "qdisc", "show", "dev", "sm0"])


def _without_tc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for tool in ("ip", "ethtool", "sysctl", "tee"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_without_tc_the_build_fails_saying_so_and_leaves_nothing_behind(
    ns: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The redirect for super-frames is the last step: the devices exist and the TAP is in
    # the inner bridge when it fails; all of that must go, and the error name the tool.
    _without_tc(tmp_path, monkeypatch)
    with pytest.raises(GroPortError, match=r"network\.gro: kernel: .*\btc\b.*No such file"):
        GroPort(ns, "sm0", "br0", 1500).open()
    monkeypatch.undo()
    for dev in ("sm0-out", "sm0-in"):
        assert not netns.link_exists(ns, dev)
    assert netns.link_exists(ns, "sm0") and _master(ns, "sm0") is None


def test_auto_joins_through_the_port_where_it_can_be_built(ns: Namespace) -> None:
    undo, mode = join_bridge("sm0", "br0", 1500, gro="kernel", fallback=True, ns=ns)
    assert mode == "kernel"
    assert _master(ns, "sm0-out") == "br0" and _master(ns, "sm0") is None
    for cmd in undo:
        netns.run(cmd)
    assert not netns.link_exists(ns, "sm0-out") and not netns.link_exists(ns, "sm0-in")


def test_auto_falls_back_to_a_direct_join_when_the_port_cannot_be_built(
    ns: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # network.gro: auto on a host without tc: the node still starts, its TAP in the bridge
    # with software GRO, the log saying why; nothing of the port is left.
    _without_tc(tmp_path, monkeypatch)
    with caplog.at_level("WARNING", logger="hardware.gro_port"):
        undo, mode = join_bridge("sm0", "br0", 1500, gro="kernel", fallback=True, ns=ns)
    monkeypatch.undo()
    assert (undo, mode) == ([], "software")
    assert _master(ns, "sm0") == "br0"
    for dev in ("sm0-out", "sm0-in"):
        assert not netns.link_exists(ns, dev)
    # the TAP's own frames are not redirected to a pair that is not there
    assert "clsact" not in ns.run(["tc", "qdisc", "show", "dev", "sm0"])
    assert "auto merges in software instead" in caplog.text and "tc" in caplog.text


def test_an_explicit_kernel_does_not_fall_back(
    ns: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # network.gro: kernel is the operator's choice: a port that cannot be built stops the
    # node rather than running it without what was asked for.
    _without_tc(tmp_path, monkeypatch)
    with pytest.raises(GroPortError, match=r"\btc\b"):
        join_bridge("sm0", "br0", 1500, gro="kernel", ns=ns)
    monkeypatch.undo()
    assert _master(ns, "sm0") is None


def test_auto_does_not_delete_a_device_that_is_not_ours(ns: Namespace) -> None:
    # A device of the port's name that is not a leftover of ours: refused and left, and the
    # TAP joins directly.
    ns.ip("link", "add", "sm0-in", "type", "bridge")
    undo, mode = join_bridge("sm0", "br0", 1500, gro="kernel", fallback=True, ns=ns)
    assert (undo, mode) == ([], "software")
    assert _master(ns, "sm0") == "br0" and netns.link_exists(ns, "sm0-in")


SEND_UDP = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("10.240.0.2", 5555))
for i in range(int(sys.argv[1])):
    u.send(i.to_bytes(4, "big") * 350)  # 1400 bytes, one datagram per system call
"""


def test_udp_sent_one_datagram_at_a_time_reaches_the_tap_merged_by_linux() -> None:
    """What the flush timeout is for: with none (0), Linux merged 4 of about 100,000
    datagrams sent this way; with it, most arrive in super-frames, and every datagram is
    there, whole and in order."""
    count = 3000
    with Lab() as lab:
        sender, node = lab.namespace("gsend"), lab.namespace("gnode")
        netns.bridge(node, "br0")
        lab.veth(sender, "eth0", node, "lanport")
        netns.attach(node, "lanport", "br0")
        sender.ip("addr", "add", "10.240.0.1/24", "dev", "eth0")
        # A station behind the node: unknown to the bridge, so its frames reach the TAP.
        sender.ip("neigh", "replace", "10.240.0.2", "lladdr", "02:00:00:00:99:02",
                  "dev", "eth0", "nud", "permanent")  # fmt: skip
        tap = LinuxTap(TapConfig(unique("gt"), offload=True))
        port = GroPort(node, tap.name, "br0", 1500)
        try:
            netns.run(["ip", "link", "set", tap.name, "netns", node.name])
            node.ip("link", "set", tap.name, "up")
            port.open()
            proc = lab.spawn(sender, [sys.executable, "-c", SEND_UDP, str(count)])
            frames: list[bytes] = []
            deadline = time.monotonic() + 60
            quiet_since = None
            while time.monotonic() < deadline:
                if select.select([tap.fileno()], [], [], 0.05)[0]:
                    frames += tap.read_batch()  # read as they come: the TAP's queue is short
                    quiet_since = None
                elif proc.poll() is not None:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 0.5:
                        break
            assert proc.wait(5) == 0
            merged = [f for f in frames if f[1] == ethernet.GSO_UDP_L4]
            datagrams: list[bytes] = []
            for frame in frames:
                for piece in gro.segment(frame) if frame[1] == ethernet.GSO_UDP_L4 else [frame]:
                    ip = ethernet.OFFLOAD_HEADER_LEN + ethernet.ETH_HEADER_LEN
                    if len(piece) > ip + 28 and piece[ip + 9] == 17:  # UDP
                        datagrams.append(bytes(piece[ip + 28 :]))
            assert datagrams == [i.to_bytes(4, "big") * 350 for i in range(count)]
            # Most datagrams came in super-frames, of several datagrams each.
            alone = sum(1 for f in frames if f[1] == ethernet.GSO_NONE and len(f) > 1000)
            assert alone < count // 4
            assert 0 < len(merged) < (count - alone) // 4
        finally:
            port.close()
            tap.close()
