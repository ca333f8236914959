"""Multi-hop circuits through attested exits chosen from the registry.

Real pieces: Anvil with the registry; six exits, each with its own swtpm (enrolment, fresh
quotes for every hop exchange) and the IMA harness's ``Kernel`` playing firmware and IMA on
it (boot log, PCRs 0-10, the IMA list), vouched for and registered on chain,
serving tunnels on loopback with the relay role (``exitnode.relay``); the client's data
path (``l2bridge.client.pump.Client`` over an in-memory TAP) with the registry-driven
``CircuitBuilder`` and the same evidence checker as a single-hop client.

One scenario, in order: a 5-hop circuit (one exit per operator) carries a blob with an
equal SHA-256. Then exits 0 and 1 (by nodeId) share an operator account; exit 2 runs
other software (a changed file, loaded after registering: its kernel measured it into the
IMA list and PCR 10). The first build therefore
skips exit 1 (same operator as exit 0), refuses exit 2 on its evidence and builds again
without it; a blob crosses the 3-hop circuit to the tail's LAN with an equal SHA-256; the
middle hop is killed, the circuit is rebuilt through the survivors and the transfer
completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from attestation import constants as ac
from attestation import evidence as ev
from attestation import release
from attestation.eventlog import BootPolicy
from attestation.policy import GoldenPolicy
from contracts.cli import enrolment_ak
from contracts.client import RegistryClient, connect
from contracts.constants import SOFTWARE_RELEASE
from contracts.voucher import Voucher
from exitnode.lifecycle import ENROLMENT_FILE, ExitLifecycle
from exitnode.relay import registry_endpoints
from exitnode.upkeep import RegistryUpkeep
from hardware.chain import Anvil
from hardware.tap import FakeTap
from hardware.tpm import Swtpm
from l2bridge.client.circuit import CircuitBuilder
from l2bridge.client.failover import DialSettings
from l2bridge.client.pump import Backoff, Client
from l2bridge.client.selection import SelectionPolicy
from l2bridge.identity.keys import AllowList, HybridSigningKey
from l2bridge.node.config import config_from_mapping
from l2bridge.node.metrics import Metrics
from lab.circuitlab import CLIENT, CLIENT_WALLET, RelayExit
from lab.imaharness import EVENT_LOG, IMA_LIST, Kernel
from tests.integration.measured import accounts, boot, load, pcr_digest_of

# About 15 s when it passes; a failing run used to hang in the event loop's close until
# pytest's 600 s default, which nearly doubled CI.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ETHER = 10**18
INTERVAL = 120  # the registry's attestation window (s)
EXITS = 6
ENROLLER_INDEX = EXITS + 1
# What each exit declares on chain (chain.region); exits 0 and 1 (one operator) also one place.
REGIONS = ("DE-BE", "DE-BE", "FR", "US-CA", "JP", "BR")


@dataclass
class Node:
    identity: HybridSigningKey
    swtpm: Swtpm
    lifecycle: ExitLifecycle
    kernel: Kernel
    voucher: Path
    relay: RelayExit | None = None

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id


def golden_from(lifecycle: ExitLifecycle, software: Path, config: Path) -> GoldenPolicy:
    """The client's policy: this exit's boot PCRs and the release (software and config)."""
    e = ev.decode(lifecycle.attest(secrets.token_bytes(32)))
    boot = BootPolicy(tuple(e.pcrs[: ac.BOOT_AGGREGATE_PCRS]), ac.DEFAULT_CMDLINE_REQUIRES)
    return GoldenPolicy(boot, release.merge([release.build([software]), release.build([config])]))


@contextlib.contextmanager
def attested_exits(base: Path, count: int, registry: RegistryClient, rotation: str):
    """``count`` exits, each on its own booted swtpm with the release's files loaded and its
    lifecycle started, their boot digest and the release approved on chain; yields the
    nodes (in creation order), the exits' software directory and the clients' policy."""
    software = base / "software" / "shadowmesh"
    software.mkdir(parents=True)
    (software / "exit.py").write_text("print('the exit software')\n")
    config = base / "exit-policy.yaml"
    config.write_text(
        f"security: {{key_rotation_interval: {rotation}, attestation_required: true}}\n"
    )
    registry.approve_release(SOFTWARE_RELEASE, hashlib.sha256(b"runtime policy").digest())
    nodes: list[Node] = []
    try:
        for i in range(count):
            swtpm = Swtpm(directory=base / f"tpm-{i}").start()
            try:
                logs = base / f"logs-{i}"
                kernel = boot(swtpm, logs)
            except BaseException:
                swtpm.stop()
                raise
            identity = HybridSigningKey.generate()
            life = ExitLifecycle(
                swtpm.tcti, identity.node_id, base / f"state-{i}",
                ima_list=logs / IMA_LIST, event_log=logs / EVENT_LOG,
                ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
            )  # fmt: skip
            node = Node(identity, swtpm, life, kernel, base / f"exit-{i}.voucher")
            nodes.append(node)
            for path in (software / "exit.py", config):
                load(node.kernel, path)
            life.start()
            digest = pcr_digest_of(life)  # fresh swtpms boot alike: approve once
            if not registry.digest_approved(digest):
                registry.approve_digest(digest)
        yield nodes, software, golden_from(nodes[0].lifecycle, software, config)
    finally:
        for n in nodes:
            n.lifecycle.close()
            n.kernel.tpm.close()
            n.swtpm.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("multihop")
    with Anvil(accounts=ENROLLER_INDEX + 1, balance_ether=1000) as chain:
        w3 = connect(chain.rpc_url)
        owner = accounts(1)[0]
        registry = RegistryClient.deploy(
            w3, owner, minimum_stake_wei=10 * ETHER, attestation_interval_s=INTERVAL
        )
        registry.set_enroller(accounts(ENROLLER_INDEX + 1)[ENROLLER_INDEX].address)
        with attested_exits(base, EXITS, registry, "1s") as (started, software, golden):
            nodes = sorted(started, key=lambda n: n.node_id)  # the registry ranks by nodeId
            yield registry, nodes, golden, chain.rpc_url, software


def register(
    registry: RegistryClient, node: Node, operator, url: str, region: str | None = None
) -> None:
    ak = enrolment_ak((node.lifecycle.state_dir / ENROLMENT_FILE).read_text())
    enroller = accounts(ENROLLER_INDEX + 1)[ENROLLER_INDEX]
    voucher = Voucher.make(
        enroller, registry.address, registry.chain_id(), node.node_id, ak,
        operator=operator.address,
    )  # fmt: skip
    node.voucher.write_text(voucher.dump())
    upkeep = RegistryUpkeep(
        lambda: registry.with_account(operator), node.lifecycle, url, interval=INTERVAL,
        voucher=node.voucher, region=region,
    )  # fmt: skip
    assert upkeep.step() == "registered", upkeep.detail


def tunnel_frames(blob: bytes, tag: bytes) -> list[bytes]:
    """Raw Ethernet frames (broadcast, experimental EtherType) carrying ``blob`` in order."""
    head = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + tag
    return [head + blob[i : i + 1400] for i in range(0, len(blob), 1400)]


def test_three_hop_circuit_skips_bad_evidence_and_shared_operators_and_survives_a_dead_hop(
    world,
):
    registry, nodes, golden, rpc_url, software = world

    async def scenario() -> None:
        allow = AllowList().add(CLIENT.node_id, "client")
        for i, n in enumerate(nodes):
            allow = allow.add(n.node_id, f"relay-{i}")
        for n in nodes:
            n.relay = await RelayExit(n.identity, allow, provider=n.lifecycle.evidence).start()
        ops = accounts(EXITS + 1)[1:]
        operator_of = [ops[0], ops[0], *ops[2:EXITS]]  # exits 0 and 1: one operator
        for n, op, region in zip(nodes, operator_of, REGIONS, strict=True):
            await asyncio.to_thread(register, registry, n, op, n.relay.url, region)
        # Each exit extends circuits only to the endpoint the registry lists for a nodeId.
        chain = config_from_mapping(
            {"chain": {"rpc_url": rpc_url, "contract_address": registry.address}}, env={}
        )
        for n in nodes:
            n.relay.relay.endpoint_of = registry_endpoints(chain)
        reader = RegistryClient(registry.w3, registry.address)
        ids = [n.node_id for n in nodes]

        # Five hops (the ultra-secure configuration's): one per operator.
        five = CircuitBuilder(
            reader,
            DialSettings(identity=CLIENT, credentials=CLIENT_WALLET, policy=golden),
            SelectionPolicy(min_reputation=0, max_attestation_age=INTERVAL),
            hops=5,
        )
        circuit = await five.connect()
        assert [h.candidate.node_id for h in five.path] == [ids[0], *ids[2:]]
        # The regions the exits declared at registration reached the hop choice.
        assert [h.region for h in five.path] == [REGIONS[0], *REGIONS[2:]]
        blob5 = os.urandom(100_000)
        frames5 = tunnel_frames(blob5, b"T5")
        for f in frames5:
            await circuit.send_frames([bytes(10) + f])  # tunnel frames: virtio-net header
        got5: list[bytes] = []
        for _ in range(400):
            got5.extend(nodes[5].relay.lan_frames())
            if len(got5) >= len(frames5):
                break
            await asyncio.sleep(0.02)
        assert hashlib.sha256(b"".join(f[16:] for f in got5)).digest() == (
            hashlib.sha256(blob5).digest()
        )
        await circuit.close()

        # Exit 2 now runs other software: someone changed a file and the exit loaded it, so
        # its kernel measured it; its fresh evidence no longer passes the policy.
        changed = software / "exit.py"
        changed.write_text("print('the exit software, logging every frame')\n")
        load(nodes[2].kernel, changed)
        metrics = Metrics("client")
        builder = CircuitBuilder(
            reader,
            DialSettings(identity=CLIENT, credentials=CLIENT_WALLET, policy=golden),
            SelectionPolicy(min_reputation=0, max_attestation_age=INTERVAL),
            hops=3,
            metrics=metrics,
        )
        tap = FakeTap()
        client = Client(tap, builder.connect, metrics, backoff=Backoff(initial=0.05, maximum=0.2))
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        paths: list[list[bytes]] = []
        try:
            await asyncio.wait_for(client.connected.wait(), 60)
            paths.append([h.candidate.node_id for h in builder.path])
            # Exit 1 shares exit 0's operator; exit 2's evidence failed: neither is used.
            assert paths[0] == [ids[0], ids[3], ids[4]]
            refusal = builder.refusals.refusal(ids[2])
            assert refusal is not None and refusal.reason.startswith("runtime: ")
            assert f"{changed} has digest" in refusal.reason
            assert builder.builds == 1 and builder.rebuilds == 0

            tail = nodes[4].relay
            blob = os.urandom(300_000)
            frames = tunnel_frames(blob, b"T1")
            half = len(frames) // 2
            got: list[bytes] = []

            async def deliver(batch: list[bytes], at: RelayExit) -> None:
                for f in batch:
                    tap.inject(f)
                    await asyncio.sleep(0.001)
                for _ in range(400):
                    got.extend(f for f in at.lan_frames() if f[14:16] == b"T1")
                    if len(got) >= len(batch):
                        return
                    await asyncio.sleep(0.02)

            await deliver(frames[:half], tail)
            assert got == frames[:half]

            # The middle hop dies: its neighbours tear the circuit down, the client builds
            # a new one through the survivors, and the rest of the transfer goes through.
            await nodes[3].relay.kill()
            for _ in range(600):
                if builder.rebuilds >= 1 and client.connected.is_set():
                    break
                await asyncio.sleep(0.05)
            assert builder.rebuilds == 1
            paths.append([h.candidate.node_id for h in builder.path])
            assert paths[1] == [ids[0], ids[4], ids[5]]
            got.clear()
            await deliver(frames[half:], nodes[5].relay)
            assert got == frames[half:]
            received = b"".join(f[16:] for f in frames[:half] + got)
            assert hashlib.sha256(received).digest() == hashlib.sha256(blob).digest()
            # Two hops of one operator were never chosen together.
            for path in paths:
                assert not (ids[0] in path and ids[1] in path)
            snapshot = metrics.snapshot()
            assert snapshot["gauges"]["circuit_length"] == 3.0
            assert snapshot["gauges"]["circuit_rebuilds"] == 1.0
            assert len(snapshot["info"]["circuit_hop_ms"]) == 3
            assert nodes[0].relay.relay is not None
            assert nodes[0].relay.relay.relayed_bytes > 0
            assert not any(n.relay.metrics.counters.drops["extend_not_in_registry"] for n in nodes)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)
            tap.close()
            for i, n in enumerate(nodes):
                if i != 3 and n.relay is not None:
                    await n.relay.kill()

    asyncio.run(asyncio.wait_for(scenario(), 240))
