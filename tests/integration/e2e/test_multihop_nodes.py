"""The spec's ultra-secure client configuration bridges a LAN through 5 attested hops.

Real ``ExitNode`` and ``ClientNode`` objects built from YAML configuration files: five exits
with ``endpoints.relay: true`` and a relay certificate from the admin, each with its own
swtpm for evidence (booted and measured by the IMA harness's ``Kernel``: boot log, PCRs
0-10, the IMA list), vouched and registered on Anvil; the client's configuration is
``l2bridge/examples/ultra-secure.yaml`` as written (pqc_only, 10 s rotation, 5 hops,
aggressive cover traffic) plus what a runnable node needs (keys, registry, golden policy),
with three test overrides said below. The exits' TAPs and the client's TAP are in-memory
(FakeTap); everything else is the nodes' own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from pathlib import Path

import pytest
import yaml

import l2bridge
from attestation import policy as golden_policy
from contracts.client import RegistryClient, connect
from exitnode.server import ExitNode
from hardware.chain import Anvil, free_port
from hardware.tap import FakeTap
from l2bridge.client import node as client_node
from l2bridge.client.node import ClientNode
from l2bridge.identity.keyfiles import save_certificate
from l2bridge.identity.keys import AdminKey, HybridSigningKey, save_public
from l2bridge.node.config import ensure_startable, load_config
from lab.credlab import ExitCredentials, write_device
from tests.integration.e2e.test_multihop_registry import (
    ENROLLER_INDEX,
    ETHER,
    INTERVAL,
    accounts,
    attested_exits,
    register,
)
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration

EXITS = 5


def test_ultra_secure_client_bridges_through_five_hops(world5, tmp_path, monkeypatch):
    registry, hops, golden, rpc_url = world5
    nodes.use_fake_host(monkeypatch)
    taps: list[FakeTap] = []

    def fake_open_tap(config):
        taps.append(FakeTap())
        return taps[-1]

    monkeypatch.setattr(client_node, "open_tap", fake_open_tap)

    now = int(time.time())
    admin = AdminKey(HybridSigningKey.generate())
    save_public(admin.public, tmp_path / "admin.pub")
    (tmp_path / "golden.yaml").write_text(golden_policy.dump(golden))
    chain = {"rpc_url": rpc_url, "contract_address": registry.address}
    exit_configs = []
    client_key = HybridSigningKey.generate()
    client_key.save(tmp_path / "client.identity")
    # Each exit: its own master key and table; the client holds a credential for every
    # exit (any may be hop 1), and each exit one for every other exit (the hops it extends to).
    tables = [ExitCredentials(hop.identity.node_id) for hop in hops]
    write_device(tmp_path / "client.credentials.json",
                 *(t.issue(client_key.node_id, "laptop") for t in tables))  # fmt: skip
    for i, hop in enumerate(hops):
        write_device(tmp_path / f"exit{i}.credentials.json", *(
            t.issue(hop.identity.node_id, f"exit{i}") for j, t in enumerate(tables) if j != i
        ))  # fmt: skip
    for i, t in enumerate(tables):
        t.write_exit(tmp_path / f"exit{i}.access.key", tmp_path / f"exit{i}.table.json")
    for i, hop in enumerate(hops):
        hop.identity.save(tmp_path / f"exit{i}.identity")
        cert = admin.issue(hop.identity.public, f"exit{i}", "lab", now - 60, now + 3600)
        save_certificate(cert, tmp_path / f"exit{i}.cert")
        port = free_port()
        cfg = {
            "security": {"post_quantum_mode": "pqc_only", "key_rotation_interval": "10s"},
            "network": {"tap": f"smx{i}", "vnet_hdr": False},
            "endpoints": {
                "listen": f"127.0.0.1:{port}",
                "access_key_file": f"exit{i}.access.key",
                "credential_file": f"exit{i}.credentials.json",
                "relay": True,
            },
            "keys": {
                "identity": f"exit{i}.identity",
                "admin_public": "admin.pub",
                "relay_certificate": f"exit{i}.cert",
                "credentials": f"exit{i}.table.json",
            },
            "chain": chain,
        }
        path = tmp_path / f"exit{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        exit_configs.append((path, f"ws://127.0.0.1:{port}/ws"))

    cert = admin.issue(client_key.public, "laptop", "lab", now - 60, now + 3600)
    save_certificate(cert, tmp_path / "client.cert")
    doc = yaml.safe_load(
        (Path(l2bridge.__file__).parent / "examples/ultra-secure.yaml").read_text()
    )
    assert doc["exit_nodes"]["hops"] == 5 and doc["security"]["post_quantum_mode"] == "pqc_only"
    # Test overrides: no SGX here (the one refusal left, kept on purpose); no cesium or
    # rubidium on this machine; freshly registered exits start at reputation 500, under 950.
    doc["security"]["sgx_enclave"] = False
    doc["atomic_time"]["enabled"] = False
    doc["exit_nodes"]["min_reputation"] = 500
    doc["network"].update({"tap": "smc0", "vnet_hdr": False})
    doc["endpoints"] = {"credential_file": "client.credentials.json"}
    doc["keys"] = {"identity": "client.identity", "certificate": "client.cert"}
    doc["chain"] = {**chain, "attestation_interval": f"{INTERVAL}s"}
    doc["tpm"] = {"golden_policy": "golden.yaml"}
    doc["status"] = {"listen": f"127.0.0.1:{free_port()}"}
    client_path = tmp_path / "client.yaml"
    client_path.write_text(yaml.safe_dump(doc))
    client_cfg = load_config(client_path, env={})
    ensure_startable(client_cfg)  # raises on any refusal

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            exits: list[ExitNode] = []
            for hop, (path, _url) in zip(hops, exit_configs, strict=True):
                exits.append(
                    await stack.enter_async_context(
                        nodes.running_exit(
                            nodes.config(path), evidence_provider=hop.lifecycle.evidence
                        )
                    )
                )
            ops = accounts(EXITS + 1)[1:]
            for hop, (_path, url), op in zip(hops, exit_configs, ops, strict=True):
                await asyncio.to_thread(register, registry, hop, op, url)

            client = ClientNode(client_cfg, status=False)
            assert client.circuits is not None and client.circuits.hops == 5
            stop = asyncio.Event()
            task = asyncio.ensure_future(client.run(stop))
            try:
                for _ in range(600):
                    if client.client is not None and client.client.connected.is_set():
                        break
                    await asyncio.sleep(0.05)
                assert client.client is not None and client.client.connected.is_set()
                path = [h.candidate.node_id for h in client.circuits.path]
                assert sorted(path) == sorted(h.node_id for h in hops)
                tail = next(x for x in exits if x.identity.node_id == path[-1])
                assert tail.board is not None and tail.board.local is not None
                blob = os.urandom(120_000)
                head = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x07" + b"\x88\xb5"
                frames = [head + blob[i : i + 1400] for i in range(0, len(blob), 1400)]
                got: list[bytes] = []
                for f in frames:
                    taps[0].inject(f)
                    await asyncio.sleep(0.002)
                for _ in range(500):
                    got.extend(f for f in tail.board.local.delivered() if f.startswith(head))
                    if len(got) >= len(frames):
                        break
                    await asyncio.sleep(0.02)
                received = b"".join(f[len(head) :] for f in got)
                assert hashlib.sha256(received).digest() == hashlib.sha256(blob).digest()
                # ... and the tail's LAN answers through all five hops.
                reply = b"\x02\x00\x00\x00\x00\x07" + b"\x02\x00\x00\x00\x00\x99" + b"\x88\xb5"
                tail.board.local.inject(reply + b"pong" * 100)
                for _ in range(300):
                    if any(f == reply + b"pong" * 100 for f in taps[0].delivered()):
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("no answer through the circuit")
                # Middle hops relayed without switching anything into their LANs.
                for x in exits:
                    if x is not tail:
                        assert x.relay is not None and x.relay.relayed_bytes > 0
                        assert x.board is not None and x.board.local is not None
                        assert not [f for f in x.board.local.delivered() if f.startswith(head)]
                snap = client.metrics.snapshot()
                assert snap["gauges"]["circuit_length"] == 5.0
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)

    asyncio.run(asyncio.wait_for(scenario(), 240))


@pytest.fixture(scope="module")
def world5(tmp_path_factory):
    base = tmp_path_factory.mktemp("multihop-nodes")
    with Anvil(accounts=ENROLLER_INDEX + 1, balance_ether=1000) as chain:
        w3 = connect(chain.rpc_url)
        registry = RegistryClient.deploy(
            w3, accounts(1)[0], minimum_stake_wei=10 * ETHER, attestation_interval_s=INTERVAL
        )
        registry.set_enroller(accounts(ENROLLER_INDEX + 1)[ENROLLER_INDEX].address)
        with attested_exits(base, EXITS, registry, "10s") as (hops, _software, golden):
            yield registry, hops, golden, chain.rpc_url
