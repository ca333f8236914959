"""The bench's Python floor tunnel (bench/l2_floor.py) carries a LAN's traffic between
two namespaces' bridges: its latency and throughput figures are a tunnel's, not a
broken path's. It also exercises ``lab.topology.join_taps``, which the OpenVPN runs use."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bench import l2_floor
from hardware import netns
from hardware.netns import Lab
from lab import topology

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def test_floor_tunnel_bridges_the_two_lans() -> None:
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        topo = topology.build(lab, 1500)
        assert topology.ping(topo.lan_a, topology.HOST_B, count=1) == 0  # nothing joins them yet
        with l2_floor.tunnel(lab, topo, Path(tmp)) as pids:
            assert len(pids) == 2
            assert netns.wait_for(
                lambda: topology.ping(topo.lan_a, topology.HOST_B, count=1) == 1, 20.0, 0.2
            )
            # Full-size frames too (1472 + 28 = a 1500-byte IP packet), every one of them.
            out = topo.lan_a.run(
                ["ping", "-c", "20", "-i", "0.01", "-s", "1472", "-M", "do", topology.HOST_B]
            )
            assert " 0% packet loss" in out
        # Stopped: both ends gone, so the LANs are apart again.
        assert topology.ping(topo.lan_a, topology.HOST_B, count=1) == 0
