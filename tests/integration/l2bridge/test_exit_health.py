"""What an exit exposes for a status page: its tunnel port and (when it attests) its TPM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from l2bridge.client.node import ClientNode
from tests.integration.l2bridge import nodes
from tests.integration.l2bridge.test_transport_probes import probe, upgrade_request

pytestmark = pytest.mark.integration


def test_tunnel_health_counts_devices_and_screening(tmp_path: Path, fake_host: None) -> None:
    lab, port = nodes.make_lab(tmp_path)

    async def scenario() -> None:
        async with nodes.running_exit(nodes.config(lab.exit_config)) as node:
            assert node.tpm_health() is None  # this exit does not attest
            client = ClientNode(nodes.config(lab.client_configs["client"]), status=False)
            link = await client.connect()
            await probe(port, [upgrade_request("A" * 43)])  # a stranger: the decoy answers
            for _ in range(100):
                if node.tunnel_health()["devices"] == 1:
                    break
                await asyncio.sleep(0.05)
            health = node.tunnel_health()
            assert health["ok"] is True and health["devices"] == 1
            assert health["screened"] == {"admitted": 1, "answered as the decoy": 1}
            # The same counts reach the metrics an operator scrapes.
            assert node.metrics.snapshot()["connections"] == health["screened"]
            text = node.metrics.prometheus_text()
            assert (
                b'shadowmesh_connections_total{outcome="answered as the decoy",role="exit"} 1.0'
                in text
            )
            await link.close()
        assert node.tunnel_health()["ok"] is False  # stopped

    asyncio.run(scenario())
