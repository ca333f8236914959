"""Two LANs bridged through a real exit and client in network namespaces (root)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from hardware import ethernet, netns
from hardware.netns import Lab, Namespace
from lab import provision, topology
from tests.integration.l2 import helpers as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

SIZE_200MB = 200 * 1000 * 1000
SRC = "02:00:00:00:aa:01"  # the crafted frames' source MAC in lan-a


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["offload", "plain", "jumbo"])
def test_ping_and_200mb_transfer_arrive_intact(lab: Lab, tmp_path: Path, mode: str) -> None:
    topo = topology.build(lab, 9000 if mode == "jumbo" else 1500)
    h.start_pair(lab, topo, tmp_path, mode)
    assert topology.ping(topo.lan_a, topology.HOST_B, count=3, interval=0.1) == 3
    sent, received = h.transfer(lab, topo.lan_a, topo.lan_b, topology.HOST_B, SIZE_200MB)
    assert sent == received


def crafted() -> dict[str, bytes]:
    ip = IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=4000, dport=4001)
    return {
        "arp": bytes(
            Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(hwsrc=SRC, psrc="10.77.0.1", pdst="10.77.0.9")
        ),
        "broadcast": bytes(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff") / ip / b"hello all"),
        "multicast": bytes(
            Ether(src=SRC, dst="01:00:5e:01:02:03") / IP(src="10.77.0.1", dst="239.1.2.3")
            / UDP(sport=4000, dport=4001) / b"group"
        ),
        "vlan10": bytes(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ip / b"v10"),
        "vlan20": bytes(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=20) / ip / b"v20"),
        "vid4095": bytes(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=4095) / ip / b"x"),
        "qinq": bytes(
            Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff") / Dot1AD(vlan=10) / Dot1Q(vlan=10) / ip / b"q"
        ),
    }  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("gro", ["software", "kernel"])
def test_crafted_frames_cross_byte_for_byte_only_when_allowed(
    lab: Lab, tmp_path: Path, gro: str
) -> None:
    topo = topology.build(lab)
    # The client may use untagged frames and VLAN 10, nothing else. With gro "kernel" every
    # frame also crosses each node's merging port (hardware.gro_port): it must change none.
    h.start_pair(lab, topo, tmp_path, "offload", "--device-vlans", "client=0,10", gro=gro)
    frames = crafted()
    capture = h.Capture(lab, topo.lan_b, "eth0", 4.0)
    h.inject(topo.lan_a, "eth0", list(frames.values()))
    seen = [f for f in capture.frames() if f[6:12] == bytes.fromhex(SRC.replace(":", ""))]
    expected = [frames[k] for k in ("arp", "broadcast", "multicast", "vlan10")]
    assert seen == expected
    drops = h.status(topo.exit, h.EXIT_STATUS)["drops"]
    assert isinstance(drops, dict)
    assert drops.get("vlan_denied") == 1  # VLAN 20
    assert drops.get("bad_vlan") == 1  # VID 4095
    assert drops.get("unknown_tpid") == 1  # the S-tag: 802.1ad is not configured


@pytest.mark.timeout(180)
def _pair_bytes(ns: Namespace, tap: str) -> int:
    """Bytes the merging port's inner end received: what crossed the pair toward the TAP."""
    doc = json.loads(ns.ip("-s", "-j", "link", "show", "dev", f"{tap}-in"))[0]
    return int(doc["stats64"]["rx"]["bytes"])


def test_by_default_plain_frames_are_merged_by_linux_super_frames_skip_the_pair(
    lab: Lab, tmp_path: Path
) -> None:
    # The default config (network.gro: auto) on hosts that can build the merging port:
    # each TAP is behind one (gro: kernel).
    topo = topology.build(lab)
    topology.plain_senders(topo, True)  # 1500-byte frames, as from a NIC without GRO
    files = provision.provision(tmp_path, exit_host=topology.EXIT_WAN)
    assert "gro" not in yaml.safe_load(files.exit_config.read_text())["network"]
    exit_proc = h.node(lab, topo.exit, "exit", files.exit_config)
    client = h.node(lab, topo.client, "client", files.client_configs["client"])
    h.wait_up(topo)
    for ns, tap in ((topo.client, "smc0"), (topo.exit, "smx0")):
        lan_side = json.loads(ns.ip("-j", "link", "show", "master", topology.BRIDGE))
        assert f"{tap}-out" in {p["ifname"] for p in lan_side}
        assert tap not in {p["ifname"] for p in lan_side}
    size = 40 * 1000 * 1000
    sent, received = h.transfer(lab, topo.lan_a, topo.lan_b, topology.HOST_B, size)
    assert sent == received
    doc = h.status(topo.client, h.CLIENT_STATUS)
    exit_info = h.status(topo.exit, h.EXIT_STATUS)["info"]
    assert isinstance(doc["info"], dict) and isinstance(exit_info, dict)
    assert doc["info"]["gro"] == exit_info["gro"] == "kernel"  # what status tells operators
    frames, sent_bytes, gauges = doc["frames"], doc["bytes"], doc["gauges"]
    assert isinstance(frames, dict) and isinstance(sent_bytes, dict) and isinstance(gauges, dict)
    segments = size // 1448
    # The client's frames out were super-frames Linux merged before its TAP: few frames, and
    # next to nothing left for the client's own merging to do.
    assert frames["out"] < segments // 4
    assert sent_bytes["out"] / frames["out"] > 6000
    assert gauges["tap_frames_coalesced"] < segments // 10
    # Those plain frames crossed the pair (to be merged at its inner end)...
    assert _pair_bytes(topo.client, "smc0") > size * 0.9
    # ...but TSO super-frames from the bridge (hosts that segment late: the usual case) go
    # around it straight to the TAP, whole: the pair carries next to nothing of them (with
    # every frame through the pair, the kernel would cut each at the outer end and merge
    # it again at the inner one).
    topology.plain_senders(topo, False)
    before = _pair_bytes(topo.client, "smc0")
    sent, received = h.transfer(lab, topo.lan_a, topo.lan_b, topology.HOST_B, size)
    assert sent == received
    assert _pair_bytes(topo.client, "smc0") - before < size * 0.2
    for proc in (client, exit_proc):
        lab.stop(proc, signal.SIGTERM)
    for ns, tap in ((topo.client, "smc0"), (topo.exit, "smx0")):
        for dev in (tap, f"{tap}-out", f"{tap}-in"):
            assert not netns.link_exists(ns, dev)


@pytest.mark.timeout(120)
def test_where_the_merging_port_cannot_be_built_the_default_runs_without_it(
    lab: Lab, tmp_path: Path
) -> None:
    # An operator's device already bears the exit's port's name: gro: auto leaves it alone,
    # says so, joins the TAP directly with software merging, and the tunnel works.
    topo = topology.build(lab)
    topo.exit.ip("link", "add", "smx0-in", "type", "bridge")
    files = provision.provision(tmp_path, exit_host=topology.EXIT_WAN)
    exit_proc = h.node(lab, topo.exit, "exit", files.exit_config)
    h.node(lab, topo.client, "client", files.client_configs["client"])
    h.wait_up(topo)
    sent, received = h.transfer(lab, topo.lan_a, topo.lan_b, topology.HOST_B, 4_000_000)
    assert sent == received
    exit_info = h.status(topo.exit, h.EXIT_STATUS)["info"]
    client_info = h.status(topo.client, h.CLIENT_STATUS)["info"]
    assert isinstance(exit_info, dict) and isinstance(client_info, dict)
    assert (exit_info["gro"], client_info["gro"]) == ("software", "kernel")
    lan_side = json.loads(topo.exit.ip("-j", "link", "show", "master", topology.BRIDGE))
    assert "smx0" in {p["ifname"] for p in lan_side}
    assert not netns.link_exists(topo.exit, "smx0-out")
    lab.stop(exit_proc, signal.SIGTERM)
    assert netns.link_exists(topo.exit, "smx0-in")  # not ours: never deleted


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_with_rps_both_taps_spread_their_receive_work_and_carry_everything(
    lab: Lab, tmp_path: Path
) -> None:
    # network.rps: true on both nodes: each one's TAP steers the kernel's work on the frames
    # the node writes over every CPU, and a transfer both ways still arrives whole.
    topo = topology.build(lab)
    h.start_pair(lab, topo, tmp_path, "offload", rps=True)
    allowed = 0
    for cpu in os.sched_getaffinity(0):
        allowed |= 1 << cpu
    for ns, tap in ((topo.client, "smc0"), (topo.exit, "smx0")):
        mask = ns.run(["cat", f"/sys/class/net/{tap}/queues/rx-0/rps_cpus"]).strip()
        assert int(mask.replace(",", ""), 16) == allowed
    for src, dst, host in ((topo.lan_a, topo.lan_b, topology.HOST_B),
                           (topo.lan_b, topo.lan_a, topology.HOST_A)):  # fmt: skip
        sent, received = h.transfer(lab, src, dst, host, 8_000_000)
        assert sent == received


@pytest.mark.timeout(120)
def test_two_clients_bridge_two_lans_through_one_exit(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    client2, lan_c = lab.namespace("client2"), lab.namespace("lan-c")
    for ns in (client2, lan_c):
        topology.quiet(ns)
    lab.veth(lan_c, "eth0", client2, "lan0")
    lab.veth(client2, "wan0", topo.exit, "wan1")
    netns.bridge(client2, topology.BRIDGE)
    netns.attach(client2, "lan0", topology.BRIDGE)
    lan_c.ip("addr", "add", "10.77.0.3/24", "dev", "eth0")
    # The exit is reached from client2 over a second underlay link.
    topo.exit.ip("addr", "add", "172.31.1.1/30", "dev", "wan1")
    client2.ip("addr", "add", "172.31.1.2/30", "dev", "wan0")
    files = provision.provision(
        tmp_path,
        exit_host="0.0.0.0",
        clients=("client", "client2"),
    )
    for name, host in (("client", topology.EXIT_WAN), ("client2", "172.31.1.1")):
        path = files.client_configs[name]
        path.write_text(path.read_text().replace("ws://0.0.0.0:", f"ws://{host}:"))
    h.node(lab, topo.exit, "exit", files.exit_config)
    h.node(lab, topo.client, "client", files.client_configs["client"])
    h.node(lab, client2, "client", files.client_configs["client2"])
    h.wait_up(topo, topo.lan_a, "10.77.0.3")  # lan-a <-> lan-c, client to client
    h.wait_up(topo, lan_c, topology.HOST_B)  # lan-c <-> the exit's own LAN
    gauges = h.status(topo.exit, h.EXIT_STATUS)["gauges"]
    assert isinstance(gauges, dict) and gauges["clients"] == 2


@pytest.mark.timeout(120)
def test_mac_entries_age_out(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    h.start_pair(lab, topo, tmp_path, "offload", "--mac-ageing", "2")

    def entries() -> float:
        gauges = h.status(topo.exit, h.EXIT_STATUS)["gauges"]
        assert isinstance(gauges, dict)
        return float(gauges["mac_entries"])

    assert topology.ping(topo.lan_a, topology.HOST_B, count=2, interval=0.1) == 2
    assert entries() >= 2  # lan-a's host behind the client, lan-b's behind the local TAP
    assert netns.wait_for(lambda: entries() == 0, 15.0, 0.5)
    assert topology.ping(topo.lan_a, topology.HOST_B, count=2, interval=0.1) == 2  # relearned


@pytest.mark.timeout(120)
def test_device_without_valid_certificate_gets_no_frame_in(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    files = provision.provision(
        tmp_path, exit_host=topology.EXIT_WAN, clients=("client", "rogue"), certify=("client",)
    )
    h.node(lab, topo.exit, "exit", files.exit_config)
    rogue = h.node(lab, topo.client, "client", files.client_configs["rogue"])
    capture = h.Capture(lab, topo.lan_b, "eth0", 5.0)
    time.sleep(1.0)
    h.inject(topo.lan_a, "eth0", [crafted()["arp"], crafted()["broadcast"]] * 5)
    assert topology.ping(topo.lan_a, topology.HOST_B, count=3, interval=0.3) == 0
    a_mac = topo.lan_a.run(["cat", "/sys/class/net/eth0/address"]).strip()
    srcs = {f[6:12].hex(":") for f in capture.frames()}
    assert SRC not in srcs and a_mac not in srcs
    status = h.status(topo.exit, h.EXIT_STATUS)
    assert status["frames"] == {"in": 0, "out": 0}
    assert rogue.poll() is None  # it keeps retrying; it does not crash


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(180)
def test_exit_killed_mid_transfer_and_restarted(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    files = h.start_pair(lab, topo, tmp_path, "plain")
    client = lab.processes[-1]
    rss_before = rss_kib(client.pid)
    exit_proc = lab.processes[0]
    recv = lab.spawn(topo.lan_b, ["python3", "-c", h.STREAM_RECV, "5601"], stdout=h.subprocess.PIPE)
    assert recv.stdout is not None and recv.stdout.readline().strip() == b"ready"
    sender = lab.spawn(
        topo.lan_a,
        ["python3", "-c", h.STREAM_SEND, topology.HOST_B, "5601", str(SIZE_200MB), "7"],
        stdout=h.subprocess.PIPE,
    )
    time.sleep(1.0)
    lab.stop(exit_proc, signal.SIGKILL)  # mid-transfer
    lab.processes.remove(exit_proc)
    # While the exit is gone the client drops what its TAP hands over, and stays up.
    assert netns.wait_for(
        lambda: h.status(topo.client, h.CLIENT_STATUS)["gauges"]["connected"] == 0,
        10,
        0.2,  # type: ignore[index]
    )
    topology.ping(topo.lan_a, topology.HOST_B, count=3, interval=0.2)
    time.sleep(1.0)
    h.node(lab, topo.exit, "exit", files.exit_config)
    h.wait_up(topo)
    sent_out, _ = sender.communicate(timeout=150)
    recv_out, _ = recv.communicate(timeout=30)
    total, digest = recv_out.decode().split()
    assert int(total) == SIZE_200MB and digest == sent_out.decode().strip()
    status = h.status(topo.client, h.CLIENT_STATUS)
    assert status["gauges"]["connections"] >= 2  # type: ignore[index]
    assert status["drops"]["link_down"] > 0  # type: ignore[index]
    assert client.poll() is None
    assert rss_kib(client.pid) < rss_before + 64 * 1024


@pytest.mark.timeout(120)
def test_malformed_frames_from_a_device_are_dropped_and_counted(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    files = provision.provision(tmp_path, exit_host=topology.EXIT_WAN, offload=False)
    h.node(lab, topo.exit, "exit", files.exit_config)
    assert netns.wait_for(lambda: netns.link_exists(topo.exit, "smx0"), 20, 0.1)
    time.sleep(0.5)
    capture = h.Capture(lab, topo.lan_b, "eth0", 4.0)
    good = crafted()["broadcast"]
    nohdr = ethernet.NO_OFFLOAD
    h.raw_client(
        topo.client,
        files.client_configs["client"],
        [
            nohdr + good[:10],  # short: not even an Ethernet header
            b"\x00\x00\x00",  # shorter than the offload header
            nohdr + good[:12] + b"\x81\x00\x00",  # 802.1Q tag cut off
            nohdr + good[:12] + b"\x81\x00\x0f\xff" + good[12:],  # VID 4095
            nohdr + good + b"\x00" * 1600,  # oversized for MTU 1500, not a GSO frame
            ethernet.offload_header(gso_type=0x42) + good,  # unknown offload type
            nohdr + good,  # and one good frame, which crosses
        ],
    )
    seen = [f for f in capture.frames() if f[6:12] == bytes.fromhex(SRC.replace(":", ""))]
    assert seen == [good]
    drops = h.status(topo.exit, h.EXIT_STATUS)["drops"]
    assert isinstance(drops, dict)
    # (A flood from the exit's own LAN before the device attached counts as no_egress.)
    malformed = {k: v for k, v in drops.items() if k != "no_egress"}
    assert malformed == {"short": 2, "bad_vlan": 2, "oversized": 1, "bad_offload": 1}


@pytest.mark.timeout(120)
def test_internet_exit_masquerades_the_bridged_lan(lab: Lab, tmp_path: Path) -> None:
    topo = topology.build(lab)
    h.start_pair(lab, topo, tmp_path, "offload", "--masquerade", "10.77.0.254/24")
    # lan-a's host leaves through the exit's bridge address; the exit's kernel is the only
    # IP stack on the way and rewrites the source to its own underlay address.
    topo.lan_a.ip("route", "add", "default", "via", "10.77.0.254")
    assert topology.ping(topo.lan_a, topology.CLIENT_WAN, count=2, interval=0.1) == 2
    rules = topo.exit.run(["nft", "list", "table", "ip", "shadowmesh"])
    assert "masquerade" in rules and "10.77.0.0/24" in rules
