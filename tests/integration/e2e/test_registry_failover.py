"""Attested exits from the registry serve a client; a changed file makes the client fail over.

Real pieces: Anvil with the registry, one swtpm per exit (enrolment against its local EK
CA, quotes; an appointed enroller vouches for the enrolment record the exit wrote, and the
exit registers with that voucher), the IMA harness's ``Kernel`` playing firmware and IMA on
each swtpm (boot log, PCRs 0-10, the IMA list), both exits serving tunnels on loopback,
the client's data
path (``l2bridge.client.pump.Client`` over an in-memory TAP) with the registry-driven
``ExitFinder`` and rotation on clock epochs. The failure modes (unreachable chain, stopped
TPM) run against the same real components.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from attestation import constants as ac
from attestation import evidence as ev
from attestation import release
from attestation import runtime_policy as rp
from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused
from attestation.eventlog import BootPolicy
from attestation.policy import GoldenPolicy
from contracts.cli import enrolment_ak
from contracts.client import RegistryClient, connect
from contracts.constants import SOFTWARE_RELEASE
from contracts.voucher import Voucher
from exitnode.errors import AttestationUnavailable
from exitnode.lifecycle import ENROLMENT_FILE, STATE_TPM_UNAVAILABLE, ExitLifecycle
from exitnode.upkeep import RegistryUpkeep
from hardware.chain import Anvil, free_port
from hardware.tap import FakeTap
from hardware.tpm import Swtpm
from l2bridge.client.failover import DialSettings, ExitFinder
from l2bridge.client.pump import Backoff, Client
from l2bridge.client.selection import SelectionPolicy
from l2bridge.errors import AuthenticationFailed, NoExitAvailable
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node import link as tunnel
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import RotationDriver, TunnelClock, exit_session_config
from l2bridge.protocol.handshake import ClientHandshake, EvidenceSince, ServerHandshake
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from lab.credlab import LabWallet, lab_exit
from lab.imaharness import EVENT_LOG, IMA_LIST, Kernel
from tests.integration.measured import accounts, boot, load, pcr_digest_of
from timing.clock import DisciplinedClock
from timing.sources import SystemClockSource

pytestmark = pytest.mark.integration

ETHER = 10**18
INTERVAL = 60  # the registry's attestation window (s)
ROTATION_S = 1.0
CHECK_S = 1.0  # the client re-checks its exit this often (well inside one interval)
CLIENT = HybridSigningKey.generate()
CLIENT_WALLET = LabWallet(CLIENT.node_id, "client-a")  # issued by each exit it dials
ENROLLER_INDEX = 3  # a dev account the owner appoints; it only signs vouchers


@dataclass
class Exit:
    name: str
    identity: HybridSigningKey
    swtpm: Swtpm
    lifecycle: ExitLifecycle
    kernel: Kernel
    upkeep: RegistryUpkeep | None = None
    url: str = ""
    served: int = 0
    voucher: Path | None = None  # chain.enrolment_voucher: written once an enroller vouched
    cut_lists: int = 0  # evidence sent from where a returning client's replay stopped

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id


def vouch(registry: RegistryClient, x: Exit, operator: str) -> None:
    """The enroller's side, shortened: vouch for the enrolment record this exit's lifecycle
    wrote (EK chain checked, credential activated), for the account ``operator`` that
    registers it. The full ceremony (identity signature too) is `shadowmesh enrol`, tested
    in tests/integration/contracts/test_attacks.py."""
    assert x.voucher is not None
    ak = enrolment_ak((x.lifecycle.state_dir / ENROLMENT_FILE).read_text())
    enroller = accounts(ENROLLER_INDEX + 1)[ENROLLER_INDEX]
    chain_id = registry.chain_id()
    voucher = Voucher.make(enroller, registry.address, chain_id, x.node_id, ak, operator=operator)
    x.voucher.write_text(voucher.dump())


def golden_from(lifecycle: ExitLifecycle, software: Path) -> GoldenPolicy:
    e = ev.decode(lifecycle.attest(secrets.token_bytes(32)))
    boot = BootPolicy(tuple(e.pcrs[: ac.BOOT_AGGREGATE_PCRS]), ac.DEFAULT_CMDLINE_REQUIRES)
    return GoldenPolicy(boot, release.build([software]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    software = base / "software" / "shadowmesh"
    software.mkdir(parents=True)
    (software / "exit.py").write_text("print('the exit software')\n")
    config = base / "exit-policy.yaml"
    config.write_text("security: {key_rotation_interval: 1s, attestation_required: true}\n")
    with Anvil(accounts=4, balance_ether=1000) as chain:
        w3 = connect(chain.rpc_url)
        owner, *operators = accounts(3)
        registry = RegistryClient.deploy(
            w3, owner, minimum_stake_wei=10 * ETHER, attestation_interval_s=INTERVAL
        )
        registry.set_enroller(accounts(ENROLLER_INDEX + 1)[ENROLLER_INDEX].address)
        registry.approve_release(SOFTWARE_RELEASE, hashlib.sha256(b"runtime policy").digest())
        exits: list[Exit] = []
        try:
            for i, name in enumerate(("exit-a", "exit-b")):
                swtpm = Swtpm(directory=base / f"tpm-{name}").start()
                logs = base / f"logs-{name}"
                kernel = boot(swtpm, logs)
                identity = HybridSigningKey.generate()
                life = ExitLifecycle(
                    swtpm.tcti,
                    identity.node_id,
                    base / f"state-{name}",
                    ima_list=logs / IMA_LIST,
                    event_log=logs / EVENT_LOG,
                    ek_anchors=[swtpm.root_ca],
                    ek_intermediates=[swtpm.intermediate_ca],
                )
                x = Exit(name, identity, swtpm, life, kernel, voucher=base / f"{name}.voucher")
                exits.append(x)
                for path in (software / "exit.py", config):
                    load(x.kernel, path)
                life.start()
                digest = pcr_digest_of(life)  # two fresh swtpms boot alike: approve once
                if not registry.digest_approved(digest):
                    registry.approve_digest(digest)
                exits[i].upkeep = None
            golden = golden_from(exits[0].lifecycle, software)
            golden = GoldenPolicy(golden.boot, release.merge([golden.runtime,
                                  release.build([config])]))  # fmt: skip
            yield chain, registry, operators, exits, golden
        finally:
            for x in exits:
                x.lifecycle.close()
                x.kernel.tpm.close()
                x.swtpm.stop()


async def serve_exit(x: Exit) -> tunnel.Server:
    allow = AllowList().add(CLIENT.node_id, "client-a")

    async def on_link(link: tunnel.Link) -> None:
        try:
            while True:
                frames = await link.recv_frames()
                x.served += len(frames)
                await link.send_frames(frames)
        except TransportClosed:
            return

    settings = ServerSettings(
        DecoySite.builtin(), "/ws", lab_exit(x.node_id).verifier(), header_timeout=2.0
    )

    def evidence_since(nonce: bytes, node_id: bytes, since: EvidenceSince) -> bytes:
        data = x.lifecycle.evidence(nonce, node_id, ev.Since(since.reset_count, since.ima_count))
        x.cut_lists += ev.decode(data).ima_first > 0
        return data

    server = await tunnel.serve(
        on_link,
        settings,
        lambda: ServerHandshake(
            x.identity,
            Authorizer(allow_list=allow),
            evidence_provider=x.lifecycle.evidence,
            evidence_since_provider=evidence_since,
            config=exit_session_config(ROTATION_S),
        ),
        host="127.0.0.1",
        port=0,
    )
    x.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    return server


def frame(tag: int) -> bytes:
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + tag.to_bytes(4, "big") * 20


async def echoed(tap: FakeTap, tag: int, attempts: int = 40) -> bool:
    """Send one frame with ``tag``; True if the exit's echo comes back (bounded wait)."""
    tap.inject(frame(tag))
    for _ in range(attempts):
        await asyncio.sleep(0.05)
        if any(f == frame(tag) for f in tap.delivered()):
            return True
    return False


def test_client_picks_registry_exit_and_fails_over_on_pcr_change(world):
    _chain, registry, operators, exits, golden = world

    async def scenario() -> None:
        servers: list[tunnel.Server] = []
        for x in exits:
            servers.append(await serve_exit(x))
        for x, operator in zip(exits, operators, strict=True):
            x.upkeep = RegistryUpkeep(
                lambda op=operator: registry.with_account(op), x.lifecycle, x.url,
                interval=INTERVAL, voucher=x.voucher,
            )  # fmt: skip
            # Not vouched for yet: the exit says so and what to run, and keeps retrying.
            assert await asyncio.to_thread(x.upkeep.step) == "no-voucher"
            assert "shadowmesh enrol request" in x.upkeep.detail
            assert f"--operator {operator.address}" in x.upkeep.detail
            assert x.upkeep.next_wait() < INTERVAL
            vouch(registry, x, operator.address)
            assert await asyncio.to_thread(x.upkeep.step) == "registered"
            # a second round answers a newer block: an ordinary on-chain attestation
            assert await asyncio.to_thread(x.upkeep.step) == "attested"
        reader = RegistryClient(registry.w3, registry.address)
        metrics = Metrics("client")
        finder = ExitFinder(
            reader,
            DialSettings(identity=CLIENT, credentials=CLIENT_WALLET, policy=golden),
            SelectionPolicy(min_reputation=500, max_attestation_age=INTERVAL),
            metrics=metrics,
            check_interval=CHECK_S,
        )
        expected_first = (await finder.ranking()).best
        assert expected_first is not None
        clock = DisciplinedClock()
        source = SystemClockSource("system", clock, interval=0.2)
        source.start()
        tap = FakeTap()
        client = Client(tap, finder.connect, metrics, backoff=Backoff(initial=0.05, maximum=0.2))
        rotation = RotationDriver(TunnelClock(clock), ROTATION_S, lambda: finder.link, metrics)
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(client.run(stop)),
            asyncio.ensure_future(finder.watch(stop)),
            asyncio.ensure_future(rotation.run(stop)),
        ]
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            first = next(x for x in exits if x.node_id == finder.current.node_id)
            other = next(x for x in exits if x is not first)
            assert first.node_id == expected_first.node_id
            assert await echoed(tap, 1)
            assert first.served >= 1 and other.served == 0
            # rotations on the clock's epoch boundaries complete in-band
            for _ in range(60):
                if finder.link is not None and finder.link.rekeys_completed >= 1:
                    break
                await asyncio.sleep(0.1)
            assert finder.link.rekeys_completed >= 1
            assert await echoed(tap, 2)

            # The watch's re-checks asked only for what the exit measured since.
            for _ in range(100):
                if first.cut_lists >= 1:
                    break
                await asyncio.sleep(0.1)
            assert first.cut_lists >= 1
            # Someone changes the exit's software and it is loaded: its kernel measures it.
            # The next re-check gets just that entry, and refuses it.
            changed = first.kernel.log_path.parent.parent / "software" / "shadowmesh" / "exit.py"
            changed.write_text("print('the exit software, logging every frame')\n")
            load(first.kernel, changed)
            for _ in range(100):  # the watch probes every CHECK_S
                if finder.current.node_id == other.node_id and client.connected.is_set():
                    break
                await asyncio.sleep(0.1)
            assert finder.current.node_id == other.node_id
            refusal = finder.refusals.refusal(first.node_id)
            assert refusal is not None and f"{changed} has digest" in refusal.reason
            assert finder.failovers == 1
            assert await echoed(tap, 3)
            assert other.served >= 1

            # The registry trusts no resettable PCR: its quotes cover the boot PCRs 0-9, which
            # did not change, so the exit still attests on chain; the clients, which replay its
            # IMA list, keep refusing it (the list keeps the changed file).
            state = await asyncio.to_thread(first.upkeep.step)
            assert state == "attested"
            assert first.lifecycle.check_measurement() is True  # the list still replays
            assert finder.refusals.refusal(first.node_id) is not None  # refused off chain
            assert finder.current.node_id == other.node_id
            assert metrics.counters.rekeys >= 1
            snapshot = metrics.snapshot()
            assert snapshot["gauges"]["registry_reachable"] == 1.0
            assert snapshot["info"]["exit_node_id"] == other.node_id.hex()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            source.stop()
            tap.close()
            for server in servers:
                server.close()
                await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_unreachable_chain_keeps_local_attestation_and_says_so(world):
    _chain, _registry, _operators, exits, golden = world
    x = min(exits, key=lambda x: x.kernel.measured)  # the one whose software is unchanged
    dead = f"http://127.0.0.1:{free_port()}"
    upkeep = RegistryUpkeep(
        lambda: RegistryClient(connect(dead), "0x" + "11" * 20),
        x.lifecycle,
        "ws://127.0.0.1:1/ws",
        interval=INTERVAL,
        retry_s=1.0,
    )
    assert upkeep.step() == "unreachable"
    assert upkeep.step() == "unreachable"
    assert upkeep.next_wait() == 2.0  # backing off, bounded by the interval
    # The exit still proves itself to clients in the handshake.
    nonce = secrets.token_bytes(32)
    checker = EvidenceChecker(golden, {x.node_id: x.lifecycle.ak_public})
    checker(x.lifecycle.evidence(nonce, x.node_id), nonce, x.node_id)

    class DeadRegistry:
        def healthy_nodes(self, min_reputation: int = 0):
            connect(dead)
            return []

        def node(self, node_id: bytes):
            raise AssertionError("not reached")

    finder = ExitFinder(
        DeadRegistry(),
        DialSettings(identity=CLIENT, credentials=CLIENT_WALLET, policy=golden),
        SelectionPolicy(max_attestation_age=INTERVAL),
    )
    with pytest.raises(NoExitAvailable, match="registry unreachable"):
        asyncio.run(finder.connect())
    assert finder.registry_state == "unreachable"


def test_stopped_tpm_refuses_clean(tmp_path, world):
    _chain, _registry, _operators, _exits, _golden = world
    swtpm = Swtpm(directory=tmp_path / "tpm").start()
    nowhere = f"swtpm:host=127.0.0.1,port={free_port()}"
    with pytest.raises(AttestationUnavailable, match=r"^TPM at swtpm:host=127.0.0.1"):
        ExitLifecycle(nowhere, os.urandom(32), tmp_path / "x", ek_anchors=[swtpm.root_ca]).start()
    with pytest.raises(AttestationUnavailable, match=r"no AK at .* and no EK CA"):
        ExitLifecycle(nowhere, os.urandom(32), tmp_path / "x").start()
    identity = HybridSigningKey.generate()
    # No kernel logs: a machine without IMA cannot attest, and says so at start.
    without_ima = ExitLifecycle(swtpm.tcti, identity.node_id, tmp_path / "state",
                                ima_list=tmp_path / "absent", event_log=tmp_path / "absent",
                                ek_anchors=[swtpm.root_ca],
                                ek_intermediates=[swtpm.intermediate_ca])  # fmt: skip
    with pytest.raises(AttestationUnavailable, match="no runtime measurements: cannot read"):
        without_ima.start()
    kernel = boot(swtpm, tmp_path / "logs")
    kernel.tpm.close()
    life = ExitLifecycle(swtpm.tcti, identity.node_id, tmp_path / "state",
                         ima_list=tmp_path / "logs" / IMA_LIST,
                         event_log=tmp_path / "logs" / EVENT_LOG,
                         ek_anchors=[swtpm.root_ca],
                         ek_intermediates=[swtpm.intermediate_ca])  # fmt: skip
    try:
        life.start()
        assert (tmp_path / "state" / "ak.json").exists()
        swtpm.stop()  # the TPM goes away under a running exit
        assert life.evidence(secrets.token_bytes(32), identity.node_id) == b""
        assert life.state == STATE_TPM_UNAVAILABLE
        # A client that asks for evidence refuses the exit; the exit does not crash.
        policy = GoldenPolicy(BootPolicy((), ()), rp.RuntimePolicy({}, ()))
        client = ClientHandshake(
            CLIENT,
            pinned_node_id=identity.node_id,
            attestation_nonce=secrets.token_bytes(32),
            evidence_checker=EvidenceChecker(policy, {identity.node_id: life.ak_public}),
        )
        server = ServerHandshake(
            identity,
            Authorizer(allow_list=AllowList().add(CLIENT.node_id, "c")),
            evidence_provider=life.evidence,
        )
        _session, reply = server.receive(client.hello(), 0.0)
        with pytest.raises(AuthenticationFailed):
            client.receive(reply, 0.0)
        checker = EvidenceChecker(policy, {identity.node_id: life.ak_public})
        with pytest.raises(AttestationRefused):
            checker(b"", b"\0" * 32, identity.node_id)
    finally:
        life.close()
        swtpm.stop()
