"""The multi-process exit's shared decisions, metrics and supervisor socket, in process.

The whole exit with worker processes, real nodes and a real bridge is tried in
``tests/integration/l2/test_exit_workers.py``; here each piece alone: what the supervisor
decides for every worker (replays, hellos, a device's tunnels), how its counters add up,
and the authenticated socket the workers ask it over, failing closed when it is gone.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from multiprocessing.connection import AuthenticationError, Client, Listener
from pathlib import Path
from typing import Any

import pytest

from exitnode import workers
from exitnode.errors import ExitConfigError
from exitnode.handoff import Dispatcher, channel_pair
from exitnode.worker import (
    RemoteDeviceLinks,
    RemoteHelloGuard,
    RemoteLedger,
    SupervisorLink,
    _evidence,
    worker_tap,
)
from exitnode.workers import Shared, Supervisor, WorkerFailed, WorkersMetrics, worker_count
from l2bridge.node.config import Config, Endpoints, Network
from l2bridge.protocol.handshake import EvidenceSince
from l2bridge.protocol.helloguard import REFUSED_DUPLICATE, REFUSED_QUOTA, HelloGuard
from l2bridge.transport.admission import AdmissionLedger
from l2bridge.transport.errors import TransportClosed

DEVICE, OTHER = b"\xd1" * 32, b"\xd2" * 32


def shared(tunnels: int = 1) -> Shared:
    return Shared(AdmissionLedger(), HelloGuard(quotes_per_minute=2), tunnels)


# -- names --------------------------------------------------------------------------------


def test_worker_taps_and_their_merging_ports_fit_linux_and_stay_distinct() -> None:
    for tap in ("sm0", "smx0", "shadowmesh0", "a" * 15):
        names = [worker_tap(tap, i) for i in range(64)]
        assert len(set(names)) == 64
        ports = {name + end for name in names for end in ("-out", "-in", "-br")}
        assert len(ports) == 3 * 64 and all(len(p) <= 15 for p in ports)


# -- what the supervisor decides for every worker --------------------------------------------


def test_a_token_admitted_at_one_worker_is_a_replay_at_another() -> None:
    s = shared()
    args = (7, b"n" * 16, DEVICE, "10.0.0.1")
    assert s.admit_token(*args, now=100.0, current=7) is None  # worker 0
    assert s.admit_token(*args, now=100.5, current=7) == "replay"  # worker 1, same token


def test_duplicate_hellos_and_the_quote_quota_count_over_every_worker() -> None:
    s = shared()
    assert s.judge_hello(b"r1", True, DEVICE, 0.0) is None
    assert s.judge_hello(b"r1", True, DEVICE, 0.1) == REFUSED_DUPLICATE
    assert s.judge_hello(b"r2", True, DEVICE, 0.2) is None
    assert s.judge_hello(b"r3", True, DEVICE, 0.3) == REFUSED_QUOTA  # 2 a minute, anywhere
    assert s.judge_hello(b"r4", True, OTHER, 0.4) is None  # another device's own quota


def test_a_devices_tunnels_are_counted_over_workers_the_oldest_elsewhere_ending() -> None:
    s = shared(tunnels=1)
    assert s.claim(DEVICE, 0, 11) == []
    assert s.claim(OTHER, 0, 12) == []
    assert s.claim(DEVICE, 1, 21) == [(0, 11)]  # back at worker 1: worker 0's ends
    assert s.tunnels == {DEVICE: [(1, 21)], OTHER: [(0, 12)]}
    # Its own older tunnel the claiming worker ends itself; never one twice.
    assert s.claim(DEVICE, 1, 22) == []
    s.release(DEVICE, 1, 21)
    s.release(DEVICE, 1, 21)  # twice: nothing
    assert s.tunnels[DEVICE] == [(1, 22)]
    s.forget_worker(0)
    assert OTHER not in s.tunnels
    s.release(DEVICE, 1, 22)
    assert s.tunnels == {}


def test_with_two_tunnels_per_device_the_third_ends_the_oldest() -> None:
    s = shared(tunnels=2)
    assert s.claim(DEVICE, 0, 1) == []
    assert s.claim(DEVICE, 1, 2) == []
    assert s.claim(DEVICE, 1, 3) == [(0, 1)]


# -- counters over the workers ---------------------------------------------------------------


def snap(
    frames: int, drops: dict[str, int], gauges: dict[str, float], admitted: int = 0
) -> dict[str, Any]:
    return {
        "frames": {"in": frames, "out": frames}, "bytes": {"in": 10 * frames, "out": 0},
        "rekeys": 1, "drops": drops, "gauges": gauges,
        "connections": {"admitted": admitted} if admitted else {},
    }  # fmt: skip


def test_counters_and_gauges_add_up_and_a_restarted_worker_keeps_its_count() -> None:
    m = WorkersMetrics()
    m.set_gauge("tpm_ok", lambda: 1.0)
    m.set_gauge("credentials", lambda: 3.0)
    m.counters.connections["over a connection cap"] = 1  # the supervisor's own refusal
    m.parts[0] = snap(5, {"mac_spoof": 2}, {"clients": 2.0, "credentials": 3.0}, admitted=2)
    gauges = {"clients": 1.0, "credentials": 3.0, "tunnel_listening": 1.0}
    m.parts[1] = snap(7, {"mac_spoof": 1, "dhcp_server": 4}, gauges, admitted=1)
    doc = m.snapshot()
    assert doc["frames"] == {"in": 12, "out": 12} and doc["rekeys"] == 2
    assert doc["drops"] == {"dhcp_server": 4, "mac_spoof": 3}
    assert doc["connections"] == {"admitted": 3, "over a connection cap": 1}
    assert doc["gauges"]["clients"] == 3.0
    assert doc["gauges"]["credentials"] == 3.0  # the same table everywhere: not tripled
    assert doc["gauges"]["tpm_ok"] == 1.0 and doc["gauges"]["tunnel_listening"] == 1.0
    m.retire(1)  # worker 1 died: what it counted stays
    m.parts[1] = snap(1, {}, {"clients": 0.0})
    assert m.snapshot()["frames"]["in"] == 13
    text = m.prometheus_text()
    assert b'shadowmesh_drops_total{reason="mac_spoof",role="exit"} 3.0' in text
    assert b'shadowmesh_connections_total{outcome="admitted",role="exit"} 3.0' in text


# -- the supervisor's refusals ----------------------------------------------------------------


def stub_node(config: Config) -> Any:
    return types.SimpleNamespace(
        config=config, metrics=WorkersMetrics(),
        verifier=types.SimpleNamespace(ledger=AdmissionLedger()),
        hello_guard=HelloGuard(), evidence_provider=None, evidence_since_provider=None,
        attested=None, clock=time.time,
    )  # fmt: skip


def test_workers_need_a_bridge_and_may_relay() -> None:
    bridged = Config(network=Network(bridge="br0", workers=2))
    with pytest.raises(ExitConfigError, match=r"network\.bridge"):
        Supervisor(stub_node(Config(network=Network(workers=2))), 2)
    relay = dataclasses.replace(bridged, endpoints=Endpoints(relay=True))
    assert len(Supervisor(stub_node(relay), 2).workers) == 2
    assert len(Supervisor(stub_node(bridged), 2).workers) == 2


def test_the_supervisor_reports_the_merging_its_workers_taps_get() -> None:
    # gro: auto is decided per worker TAP (<tap>-<n>, at most 11 characters), not by the
    # supervisor's own TAP name, which may be too long for the merging port.
    net = Network(bridge="br0", workers=2, tap="shadowmesh-lan")
    sup = Supervisor(stub_node(Config(network=net)), 2)
    assert sup.metrics.info["gro"] == "kernel"
    off = dataclasses.replace(net, vnet_hdr=False)
    assert Supervisor(stub_node(Config(network=off)), 2).metrics.info["gro"] == "software"


def test_the_supervisor_learns_the_merging_its_workers_have(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker whose merging port could not be built runs software GRO and says so in its
    # report: the exit's status must not go on claiming what the names planned for.
    import asyncio

    net = Network(bridge="br0", workers=2)
    sup = Supervisor(stub_node(Config(network=net)), 2)
    assert sup.metrics.info["gro"] == "kernel"
    monkeypatch.setattr(workers, "STATS_S", 0.01)
    reported = {0: "kernel", 1: "software"}
    for worker in sup.workers:
        worker.process = types.SimpleNamespace(is_alive=lambda: True, exitcode=None, pid=0)
        worker.started = time.monotonic()

    def command(index: int, op: str, *args: Any) -> Any:
        assert op == "report"
        return {**snap(0, {}, {}), "info": {"gro": reported[index]}}, []

    monkeypatch.setattr(sup, "command", command)

    async def watch_a_little() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        await sup._watch(stop)

    asyncio.run(watch_a_little())
    assert sup.metrics.info["gro"] == "kernel at worker 0; software at worker 1"
    assert sup.metrics.snapshot()["info"]["gro"] == "kernel at worker 0; software at worker 1"
    sup.metrics.retire(1)  # worker 1 died: what it reported is no longer in effect
    sup._note_gro()
    assert sup.metrics.info["gro"] == "kernel"
    reported[0] = reported[1] = "software"  # both restarted where the port could not be built
    asyncio.run(watch_a_little())
    assert sup.metrics.info["gro"] == "software"


def test_a_devices_circuit_links_are_bounded_over_every_worker() -> None:
    # A relaying exit (or a client using us as hop 1) holds at most the limit at once,
    # however the links were spread over the workers; another device is not affected.
    s = shared()
    s.circuit_links.limit = 3
    assert s.take_circuit_link(DEVICE, 0) and s.take_circuit_link(DEVICE, 1)
    assert s.take_circuit_link(DEVICE, 1)
    assert not s.take_circuit_link(DEVICE, 0)  # 3 held: 1 at worker 0, 2 at worker 1
    assert not s.take_circuit_link(DEVICE, 1)
    assert s.take_circuit_link(OTHER, 0)
    s.end_circuit_link(DEVICE, 1)
    assert s.take_circuit_link(DEVICE, 0)  # one ended: one more allowed
    assert not s.take_circuit_link(DEVICE, 0)
    s.end_circuit_link(DEVICE, 1)
    s.end_circuit_link(DEVICE, 1)  # more ends than takes at a worker: nothing below zero
    s.end_circuit_link(DEVICE, 7)
    assert s.take_circuit_link(DEVICE, 1) and not s.take_circuit_link(DEVICE, 1)
    s.forget_worker(0)  # worker 0 died: its two links went with it
    assert s.take_circuit_link(DEVICE, 1) and s.take_circuit_link(DEVICE, 1)
    assert not s.take_circuit_link(DEVICE, 0)
    assert s.take_circuit_link(OTHER, 1)  # OTHER's link at worker 0 is gone too
    # Every link ended: nothing kept for the devices a worker once served.
    t = shared()
    assert t.take_circuit_link(DEVICE, 0)
    t.end_circuit_link(DEVICE, 0)
    assert not any(t.circuit_links_at.values()) and not t.circuit_links.held


def test_auto_is_one_worker_per_core_where_an_exit_can_have_workers() -> None:
    bridged = Config(network=Network(bridge="br0", workers="auto"))
    assert worker_count(bridged, cores=4) == 4
    assert worker_count(bridged, cores=1) == 1  # one core: the single-process exit
    assert worker_count(bridged, cores=500) == 64
    assert worker_count(Config(network=Network(workers="auto")), cores=4) == 1  # no bridge
    relay = dataclasses.replace(bridged, endpoints=Endpoints(relay=True))
    assert worker_count(relay, cores=4) == 4  # a relay too
    assert worker_count(Config(network=Network(bridge="br0", workers=3)), cores=1) == 3
    assert 1 <= worker_count(bridged) <= 64  # this machine's own count


def test_a_worker_gets_connections_once_its_tunnel_server_is_up() -> None:
    sup = Supervisor(stub_node(Config(network=Network(bridge="br0", workers=2))), 2)
    sup.dispatcher = Dispatcher([], 2, hold_s=0.0)
    ends = [channel_pair() for _ in range(2)]
    try:
        for i, (mine, _) in enumerate(ends):
            sup.dispatcher.attach(i, mine)
        sup._serving(0, {"gauges": {"tunnel_listening": 0.0}})  # still starting
        sup._serving(1, {"gauges": {"tunnel_listening": 1.0}})
        assert not sup.dispatcher.is_ready(0) and sup.dispatcher.is_ready(1)
        a, b = socket.socketpair()
        with a, b:
            assert [sup.dispatcher.hand(a) for _ in range(2)] == [1, 1]
            sup._serving(0, {"gauges": {"tunnel_listening": 1.0}})
            assert [sup.dispatcher.hand(a) for _ in range(3)] == [0, 0, 1]
    finally:
        sup.dispatcher.close()
        for _, theirs in ends:
            theirs.close()


def test_the_port_listens_where_the_supervisor_accepts_whatever_the_workers_say() -> None:
    sup = Supervisor(stub_node(Config(network=Network(bridge="br0", workers=2))), 2)
    sup.metrics.parts[0] = snap(0, {}, {"tunnel_listening": 1.0})
    assert sup.metrics.snapshot()["gauges"]["tunnel_listening"] == 1.0  # not started: theirs
    sup.dispatcher = Dispatcher([], 2)
    assert sup.metrics.snapshot()["gauges"]["tunnel_listening"] == 0.0  # nothing accepts
    sup.dispatcher.start()
    try:
        assert sup.metrics.snapshot()["gauges"]["tunnel_listening"] == 1.0
    finally:
        sup.dispatcher.close()
    assert sup.metrics.snapshot()["gauges"]["tunnel_listening"] == 0.0


# -- the socket ---------------------------------------------------------------------------


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(stub_node(Config(network=Network(bridge="br0", workers=2))), 2)
    sup._dir = tempfile.mkdtemp()
    sup._listener = Listener(sup._address(), family="AF_UNIX", authkey=sup._authkey)
    threading.Thread(target=sup._accept, daemon=True).start()
    try:
        yield sup
    finally:
        sup._listener.close()
        Path(sup._address()).unlink(missing_ok=True)
        os.rmdir(sup._dir)


def link(sup: Supervisor, index: int = 0) -> SupervisorLink:
    return SupervisorLink(sup._address(), sup._authkey, index)


def test_workers_share_the_supervisors_ledger_and_guard_over_the_socket(
    supervisor: Supervisor,
) -> None:
    a, b = RemoteLedger(link(supervisor, 0)), RemoteLedger(link(supervisor, 1))
    assert a.admit(3, b"x" * 16, DEVICE, "s", now=1.0, current=3) is None
    assert b.admit(3, b"x" * 16, DEVICE, "s", now=1.0, current=3) == "replay"
    guard = RemoteHelloGuard(link(supervisor, 1), quotes_per_minute=2)
    assert guard.judge(b"r", False, DEVICE, 1.0) is None
    assert RemoteHelloGuard(link(supervisor, 0), 2).judge(b"r", False, DEVICE, 1.1) == (
        REFUSED_DUPLICATE
    )
    assert abs(float(link(supervisor).call("clock"))) < 1.0


def test_workers_circuit_links_are_counted_at_the_supervisor(supervisor: Supervisor) -> None:
    import asyncio

    supervisor.shared.circuit_links.limit = 2

    async def scenario() -> None:
        a, b = RemoteDeviceLinks(link(supervisor, 0)), RemoteDeviceLinks(link(supervisor, 1))
        assert await a.take(DEVICE) and await b.take(DEVICE)
        assert not await a.take(DEVICE) and not await b.take(DEVICE)
        assert await b.take(OTHER)
        a.give_back(DEVICE)  # sent off the loop: wait until the supervisor has it
        for _ in range(500):
            if supervisor.shared.circuit_links.held[DEVICE] == 1:
                break
            await asyncio.sleep(0.01)
        assert await b.take(DEVICE) and not await a.take(DEVICE)

    asyncio.run(scenario())


def test_evidence_comes_from_the_supervisor_and_busy_stays_busy(supervisor: Supervisor) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def provider(nonce: bytes, node_id: bytes) -> bytes:
        calls.append((nonce, node_id))
        if nonce == b"busy":
            raise TransportClosed("attestation busy")
        return b"evidence for " + nonce

    supervisor.node.evidence_provider = provider
    provide, provide_since = _evidence(link(supervisor))
    assert provide(b"n1", b"id") == b"evidence for n1"
    with pytest.raises(TransportClosed):
        provide(b"busy", b"id")
    # No since-provider at the supervisor: the whole evidence.
    assert provide_since(b"n2", b"id", EvidenceSince(1, 5)) == b"evidence for n2"
    assert calls == [(b"n1", b"id"), (b"busy", b"id"), (b"n2", b"id")]


def test_a_connection_without_the_key_gets_nothing(supervisor: Supervisor) -> None:
    with pytest.raises(AuthenticationError):
        Client(supervisor._address(), family="AF_UNIX", authkey=b"not the key" * 3)
    # The supervisor still serves its workers afterwards.
    assert RemoteLedger(link(supervisor)).admit(1, b"y" * 16, DEVICE, "", now=1, current=1) is None


def test_without_the_supervisor_a_worker_fails_closed(tmp_path: Path) -> None:
    gone = SupervisorLink(str(tmp_path / "nothing.sock"), b"k" * 32, 0)
    assert RemoteLedger(gone).admit(1, b"z" * 16, DEVICE, "", now=1.0, current=1) == "full"
    assert RemoteHelloGuard(gone, 2).judge(b"r", True, DEVICE, 1.0) == REFUSED_QUOTA
    provide, _ = _evidence(gone)
    with pytest.raises(TransportClosed):
        provide(b"n", b"id")
    import asyncio

    assert asyncio.run(RemoteDeviceLinks(gone).take(DEVICE)) is False  # no circuit link


def test_commands_reach_a_worker_and_a_silent_one_is_given_up(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = link(supervisor, 1).connect("commands")

    def answer() -> None:
        op, args = conn.recv()
        conn.send(("ok", [op, *args]))
        conn.recv()  # the next one is never answered

    threading.Thread(target=answer, daemon=True).start()
    deadline = time.monotonic() + 5
    while supervisor.workers[1].commands is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert supervisor.command(1, "peers", "x") == ["peers", "x"]
    monkeypatch.setattr(workers, "COMMAND_TIMEOUT_S", 0.2)
    with pytest.raises(WorkerFailed):
        supervisor.command(1, "snapshot")
    assert supervisor.workers[1].commands is None  # given up: started again by the watch
    with pytest.raises(WorkerFailed, match="not connected"):
        supervisor.command(0, "snapshot")
    conn.close()


def test_a_worker_that_keeps_dying_at_start_stops_the_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fault that does not pass (its TAP cannot be made, say) must not become a restart
    # loop for ever: after EARLY_DEATHS quick deaths in a row the exit stops, saying why.
    import asyncio

    sup = Supervisor(stub_node(Config(network=Network(bridge="br0", workers=2))), 2)
    monkeypatch.setattr(workers, "STATS_S", 0.01)
    monkeypatch.setattr(workers, "RESTART_S", 0.0)
    starts: list[int] = []

    def start(worker: Any) -> None:
        starts.append(worker.index)
        alive = worker.index == 0  # worker 1 dies at once, every time
        worker.process = types.SimpleNamespace(
            is_alive=lambda: alive, exitcode=None if alive else 1, pid=0
        )
        worker.started = time.monotonic()

    monkeypatch.setattr(sup, "_start", start)
    for worker in sup.workers:
        start(worker)
    with pytest.raises(workers.ExitError, match="worker 1 ended"):
        asyncio.run(asyncio.wait_for(sup._watch(asyncio.Event()), 10))
    assert starts.count(1) == workers.EARLY_DEATHS
    assert starts.count(0) == 1


def test_a_failing_request_is_answered_and_the_connection_stays_usable(
    supervisor: Supervisor,
) -> None:
    # A fault in the supervisor's answer must never leave a worker waiting on its socket
    # (the loop's connection carries the gate: a worker would stall).
    from exitnode.worker import SupervisorGone

    calls = link(supervisor)
    with pytest.raises(SupervisorGone):
        calls.call("no such request")
    with pytest.raises(SupervisorGone):
        calls.call("gate", "not", "enough")
    assert calls.call("clock") is not None
