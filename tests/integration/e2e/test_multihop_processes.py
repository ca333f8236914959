"""Real ``shadowmesh exit`` and ``shadowmesh client`` processes bridge two LANs through
3-hop and 5-hop circuits, in network namespaces.

The full demo's world (``lab.demo_steps``: WAN, Anvil with the registry, one swtpm per exit
booted by the IMA harness, simulated GPSDOs, enrolment ceremony, golden policy, approvals,
vouchers), with three exits instead of two, each started as the demo starts it (``shadowmesh
exit`` under the IMA harness, registering and attesting on chain) and with the relay role
(``endpoints.relay: true``, a relay certificate from the admin). Both clients are
``shadowmesh client`` processes with ``exit_nodes.multi_hop: true, hops: 3``: each builds a
circuit through all three exits from the registry (distinct operators, each hop's evidence
checked against the golden policy), and the two circuits end at the same tail, where lan-a and
lan-b meet in its switch. A file crosses lan-a -> lan-b with an equal SHA-256. In the 3-hop
case every exit runs in two worker processes (``network.workers: 2``), in the 5-hop case in
one.

The 5-hop case runs the spec's ultra-secure client configuration (``security``,
``exit_nodes`` and ``obfuscation`` of ``l2bridge/examples/ultra-secure.yaml``: pqc_only,
10 s rotation, 5 hops, geographic and jurisdictional diversity, aggressive cover traffic,
MTU 9000) with the overrides the node-level test makes too: no SGX (refused: not
supported), the demo's simulated GPSDO instead of cesium/rubidium, min_reputation 500 (fresh
registrations start there). Its five exits are pqc_only and declare five countries on chain
(``chain.region``), which the registry then shows.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import l2bridge
from hardware.chain import Anvil
from hardware.netns import Lab
from l2bridge.identity.keyfiles import load_certificate, save_certificate
from l2bridge.identity.keys import KIND_ADMIN, AdminKey, HybridSigningKey
from l2bridge.node.config import parse_duration
from l2bridge.node.credfiles import load_master_key, load_table, save_table
from l2bridge.transport.token import Credential
from lab import demo_net, demo_steps, demo_world, topology
from lab.credlab import write_device
from lab.demo_world import Settings, StepFailed, World

pytestmark = pytest.mark.integration

REGIONS = ("DE", "FR", "NL", "CH", "IS")
ULTRA = Path(l2bridge.__file__).parent / "examples" / "ultra-secure.yaml"


def hops(w: World) -> int:
    return len(w.exit_names)


def step_network(w: World) -> str:
    n = int(w.facts["hops"])
    w.mesh = demo_net.build(w.lab, w.settings.mtu, exits=tuple(f"exit-{i + 1}" for i in range(n)))
    return f"wan, {n} exits, two clients, lan-a, lan-b"


def step_chain(w: World) -> str:
    """As the demo's, with an operator account for each of the exits."""
    chain = Anvil(
        accounts=hops(w) + 1, balance_ether=1000, netns=w.ns("wan").name, host=demo_net.CHAIN_IP
    )
    chain.start()
    w.cleanups.append(chain.stop)
    w.rpc_url = chain.rpc_url
    out = w.shadowmesh(
        w.ns("wan"), "registry", "deploy", "--rpc", w.rpc_url,
        "--interval", str(w.settings.window_s), "--minimum-stake", "10",
        key=demo_world.chain_key(0),
    )  # fmt: skip
    w.contract = json.loads(out)["address"]
    return f"Anvil at {w.rpc_url}, registry {w.contract}"


def step_relay_configs(w: World) -> str:
    """Before the golden policy is taken (it covers the exits' configuration files): the
    exits get the relay role and a relay certificate, the clients 3-hop circuits."""
    assert w.keys is not None
    keys = w.keys.directory
    admin = AdminKey(HybridSigningKey.load(keys / "admin.key", kind=KIND_ADMIN))
    now = int(time.time())
    for name in w.exit_names:
        identity = HybridSigningKey.load(keys / f"{name}.identity")
        cert = admin.issue(identity.public, name, "lab", now - 60, now + 3600)
        save_certificate(cert, keys / f"{name}.relay.cert")
        identity.wipe()
        doc = yaml.safe_load(w.configs[name].read_text())
        doc["endpoints"]["relay"] = True
        doc["keys"]["relay_certificate"] = f"{name}.relay.cert"
        if hops(w) == 5:
            doc["security"]["post_quantum_mode"] = "pqc_only"
            doc["chain"]["region"] = REGIONS[w.exit_names.index(name)]
        w.configs[name].write_text(yaml.safe_dump(doc, sort_keys=False))
    admin.key.wipe()
    # Each relaying exit mints the next hop's token from a credential of its own, issued by
    # that hop (the client's credential never leaves hop 1).
    relays: dict[str, list[Credential]] = {name: [] for name in w.exit_names}
    for hop in w.exit_names:
        master = load_master_key(keys / f"{hop}.access.key")
        table_path = keys / f"{hop}.credential-table.json"
        table = load_table(table_path)
        for name in w.exit_names:
            if name != hop:
                serial = load_certificate(keys / f"{name}.relay.cert").serial
                ids = w.keys.exit_ids
                _, credential = table.issue(master, ids[hop], ids[name], name, time.time(),
                                            serial=serial)  # fmt: skip
                relays[name].append(credential)
        save_table(table, table_path)
    for name, credentials in relays.items():
        write_device(keys / f"{name}.relay-credentials.json", *credentials)
        doc = yaml.safe_load(w.configs[name].read_text())
        doc["endpoints"]["credential_file"] = f"{name}.relay-credentials.json"
        w.configs[name].write_text(yaml.safe_dump(doc, sort_keys=False))
    ultra = yaml.safe_load(ULTRA.read_text())
    for name in w.client_names:
        doc = yaml.safe_load(w.configs[name].read_text())
        if hops(w) == 5:  # the spec's ultra-secure client, with the overrides said above
            doc["security"] = {**ultra["security"], "sgx_enclave": False}
            doc["obfuscation"] = ultra["obfuscation"]
            doc["exit_nodes"] = {**ultra["exit_nodes"], "min_reputation": 500}
            assert ultra["network"]["mtu"] == doc["network"]["mtu"] == 9000
        else:  # freshly registered exits start at reputation 500
            doc["exit_nodes"] = {"multi_hop": True, "hops": 3, "min_reputation": 500}
        w.configs[name].write_text(yaml.safe_dump(doc, sort_keys=False))
    return (
        "exits relay (certificate from the admin, a credential from every other exit); "
        f"clients build {hops(w)}-hop circuits"
    )


def _gauge(doc: dict[str, Any], key: str) -> float:
    value = doc.get("gauges", {}).get(key)
    return float(value) if isinstance(value, int | float) else -1.0


def _brief(doc: dict[str, Any] | None) -> object:
    """What a failure message shows of a node: its counters, drops and circuit gauges."""
    if doc is None:
        return None
    gauges = {k: v for k, v in doc.get("gauges", {}).items() if "circuit" in k}
    return {"counters": doc.get("counters"), "gauges": gauges, "info": doc.get("info")}


def step_clients(w: World) -> str:
    for name in w.client_names:
        w.node(name, "client")
    lan_a = w.ns("lan-a")
    deadline = time.monotonic() + 90
    while topology.ping(lan_a, topology.HOST_B, count=1) != 1:
        w.check_alive()
        if time.monotonic() > deadline:
            seen = {n: _brief(w.status(n)) for n in (*w.exit_names, *w.client_names)}
            raise StepFailed(f"lan-a cannot reach lan-b through the circuits: {seen}")
        time.sleep(0.3)
    paths = {}
    n = hops(w)
    for name in w.client_names:
        doc = w.wait_status(name, lambda d: _gauge(d, "circuit_length") == n, 20, "a circuit")
        paths[name] = doc["info"]["circuit"]
    a, b = paths.values()
    if len(set(a)) != hops(w) or a[-1] != b[-1]:
        raise StepFailed(f"circuits {paths}: expected {hops(w)} distinct hops and one tail")
    w.facts["paths"] = paths
    return f"circuits {paths}; lan-a <-> lan-b up"


def step_relayed(w: World) -> str:
    """Hop 1 and the middle hop relayed circuit traffic; both circuits end at the tail."""
    tail = w.facts["paths"]["client-a"][-1]
    relayed, circuits = {}, {}
    for name in w.exit_names:
        doc = w.status(name)
        if doc is None:
            raise StepFailed(f"{name}: no status")
        if doc["info"].get("workers", 1) != w.settings.exit_workers:
            raise StepFailed(f"{name} runs {doc['info'].get('workers', 1)} worker processes")
        relayed[name] = _gauge(doc, "circuit_relayed_bytes")
        circuits[name] = _gauge(doc, "circuits")
        if doc["info"]["node_id"].startswith(tail):
            if circuits[name] != 2:
                raise StepFailed(f"the tail {name} holds {circuits[name]} circuits, not 2")
        elif relayed[name] <= 0:
            raise StepFailed(f"{name} relayed nothing ({relayed})")
    return f"relayed bytes per exit {relayed}; circuits per exit {circuits}"


def step_regions(w: World) -> str:
    """The regions the exits' configurations declare are on chain (5-hop case)."""
    if hops(w) != 5:
        return "no regions declared (3-hop case)"
    assert w.keys is not None
    seen = {}
    for name, node_id in w.keys.exit_ids.items():
        out = w.shadowmesh(
            w.ns("wan"), "registry", "show", "--node-id", node_id.hex(),
            "--rpc", w.rpc_url, "--registry", w.contract,
        )  # fmt: skip
        seen[name] = json.loads(out)["region"]
    if seen != {n: REGIONS[i] for i, n in enumerate(w.exit_names)}:
        raise StepFailed(f"regions on chain: {seen}")
    return f"regions on chain: {seen}"


STEPS: list[tuple[str, Callable[[World], str]]] = [
    ("network", step_network),
    ("clocks", demo_steps.step_clocks),
    ("chain", step_chain),
    ("TPMs", demo_steps.step_tpms),
    ("keys", demo_steps.step_keys),
    ("relay configs", step_relay_configs),
    ("enrol + golden", demo_steps.step_enrol),
    ("approve", demo_steps.step_approve),
    ("vouch", demo_steps.step_vouch),
    ("exits", demo_steps.step_exits),
    ("clients", step_clients),
    ("file transfer", demo_steps.step_transfer),
    ("relayed", step_relayed),
    ("regions", step_regions),
]


@pytest.mark.parametrize(
    ("n", "workers"),
    [(3, 2), (5, 1)],
    ids=["3-hops-two-worker-exits", "5-hops-ultra-secure"],
)
def test_real_processes_bridge_two_lans_through_circuits(
    tmp_path: Path, n: int, workers: int
) -> None:
    # The ultra-secure configuration asks for MTU 9000: the demo's jumbo mode gives every
    # node and LAN that MTU (without offloads).
    mode = "jumbo" if n == 5 else "offload"
    # The 5-hop clients rotate every 10 s (ultra-secure), the exits every 3 s: each end keeps
    # its own interval (a rekey states the client's, and the exit counts in it).
    ultra = yaml.safe_load(ULTRA.read_text())["security"]["key_rotation_interval"]
    assert parse_duration(ultra, "security.key_rotation_interval") != 3.0
    # workers: every exit relays in network.workers processes (the supervisor quotes for
    # them and bounds each device's circuit links over all of them).
    settings = Settings(rotation_s=3.0, window_s=30, size_mib=8, mode=mode, exit_workers=workers)
    done: list[str] = []
    with Lab() as lab:
        world = World(lab, tmp_path, settings)
        world.facts["hops"] = n
        try:
            for name, step in STEPS:
                try:
                    shown = step(world)
                except Exception as exc:
                    raise AssertionError(
                        f"step {name}: {type(exc).__name__}: {exc}\n{world.tails()}"
                    ) from None
                done.append(f"{name}: {shown}")
                print(f"[ok] {name}: {shown}", flush=True)
        finally:
            for node in list(world.nodes):
                world.stop_node(node)
            for cleanup in reversed(world.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
    assert world.facts["transfer"]["bytes"] == settings.size_mib << 20  # SHA-256 checked
