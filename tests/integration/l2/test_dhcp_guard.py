"""A DHCP server at a client's site cannot serve the exit's LAN until the operator trusts it.

Real nodes in the lab's namespaces (lan-a behind the client, lan-b on the exit's LAN), a
real DHCP server (dnsmasq) and a real DHCP client (busybox's udhcpc), both as a network
would run them:

1. dnsmasq on lan-b, the exit's own LAN, serves lan-a's host through the tunnel: the LAN
   may always answer.
2. A rogue dnsmasq on lan-a (the client's site) answers lan-b's DISCOVER: the exit drops its
   OFFERs (counted as ``dhcp_server``), so lan-b's host gets no lease and keeps its gateway.
3. The operator sets ``devices.client.dhcp_server: true`` and reloads: the client comes back
   under that policy and the same server now gives lan-b's host a lease, with its router.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hardware import netns
from hardware.netns import Lab, Namespace
from lab import topology
from tests.integration.l2 import helpers as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.timeout(180),
]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


# udhcpc runs this on each event; on "bound" it prints what the lease says.
SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && echo "lease $ip router $router"\nexit 0\n'


def dhcp_server(
    lab: Lab, ns: Namespace, tmp: Path, name: str, pool: tuple[str, str, str]
) -> subprocess.Popen[bytes]:
    """dnsmasq on ``ns``'s eth0 handing out ``pool`` (first, last, router)."""
    first, last, router = pool
    return lab.spawn(
        ns,
        [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--user=root", "--group=root", "--interface=eth0", "--bind-interfaces",
            f"--dhcp-range={first},{last},255.255.255.0,2m", f"--dhcp-option=3,{router}",
            f"--dhcp-leasefile={tmp / (name + '.leases')}", f"--pid-file={tmp / (name + '.pid')}",
        ],
    )  # fmt: skip


def lease(ns: Namespace, script: Path, tries: int = 4) -> str | None:
    """Ask for an address on eth0 (DISCOVER, one second per try); what was bound, or None."""
    done = subprocess.run(
        [*ns.prefix(), "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n",
         "-t", str(tries), "-T", "1", "-s", str(script)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("lease "):
            return line
    return None


def drops(topo: topology.Topology) -> dict[str, int]:
    found = h.status(topo.exit, h.EXIT_STATUS)["drops"]
    assert isinstance(found, dict)
    return found


def test_a_sites_dhcp_server_serves_the_exits_lan_only_once_trusted(
    lab: Lab, tmp_path: Path
) -> None:
    topo = topology.build(lab)
    files = h.start_pair(lab, topo, tmp_path / "nodes", "offload")
    script = tmp_path / "udhcpc.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)

    # 1. The exit's LAN answers a site's host.
    lan_server = dhcp_server(
        lab, topo.lan_b, tmp_path, "lan", ("10.77.0.200", "10.77.0.220", "10.77.0.254")
    )
    got = lease(topo.lan_a, script)
    assert got is not None and got.startswith("lease 10.77.0.2") and "router 10.77.0.254" in got
    lab.stop(lan_server)

    # 2. The site's server answers the exit's LAN: every OFFER is dropped at the exit.
    rogue = dhcp_server(
        lab, topo.lan_a, tmp_path, "rogue", ("10.77.0.100", "10.77.0.150", "10.77.0.66")
    )
    assert lease(topo.lan_b, script) is None
    assert drops(topo).get("dhcp_server", 0) >= 1

    # 3. Trusted by the operator: after a reload the site's server gives out its leases.
    exit_yaml = files.exit_config
    doc = yaml.safe_load(exit_yaml.read_text())
    doc["devices"] = {"client": {"dhcp_server": True}}
    exit_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))
    topo.exit.run([sys.executable, "-m", "l2bridge", "peers", "reload", "--config",
                   str(exit_yaml)], timeout=30)  # fmt: skip
    before = drops(topo).get("dhcp_server", 0)
    ok = netns.wait_for(lambda: topology.ping(topo.lan_a, topology.HOST_B, count=1) == 1, 30, 0.3)
    assert ok, "the client did not come back after the reload"
    got = lease(topo.lan_b, script)
    assert got is not None and got.startswith("lease 10.77.0.1") and "router 10.77.0.66" in got
    assert drops(topo).get("dhcp_server", 0) == before
    lab.stop(rogue)
