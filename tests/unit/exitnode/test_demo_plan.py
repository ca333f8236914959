"""The demo's expectations match what the clients really do.

``best_exit`` is the demo's statement of which exit every client must pick; it must agree
with the clients' ranking (``l2bridge.client.selection.rank``) for fresh, healthy exits, and the
lab's configurations must load, and both exits must measure the same configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from exitnode.attested import measured_config
from l2bridge.client.selection import Refusals, SelectionPolicy, rank
from l2bridge.node.config import load_config
from lab import demo_config
from lab.demo_steps import best_exit
from lab.demo_world import Settings

NOW = 1_000_000


@dataclass(frozen=True, slots=True)
class Point:
    x: bytes
    y: bytes


@dataclass(frozen=True, slots=True)
class Record:
    node_id: bytes
    reputation: int
    last_attestation: int
    endpoint: str = "ws://172.31.0.1:8443/ws"
    ak: Point = Point(b"\1" * 32, b"\2" * 32)
    status: str = "active"
    healthy: bool = True


@given(
    reps=st.lists(st.integers(500, 1000), min_size=2, max_size=2),
    ids=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=2, unique=True),
    ages=st.lists(st.integers(0, 2), min_size=2, max_size=2),
)
def test_best_exit_is_what_the_clients_rank_first(reps, ids, ages):
    settings = Settings()
    names = ("exit-1", "exit-2")
    records = [Record(i, r, NOW - a) for i, r, a in zip(ids, reps, ages, strict=True)]
    policy = SelectionPolicy(min_reputation=500, max_attestation_age=settings.window_s)
    ranked = rank(records, policy, Refusals(), NOW)
    assert ranked.best is not None
    chosen = best_exit(dict(zip(names, reps, strict=True)), dict(zip(names, ids, strict=True)))
    assert ids[names.index(chosen)] == ranked.best.node_id


def test_lab_configs_load_and_both_exits_measure_the_same_configuration(tmp_path):
    """One golden policy covers both exits only if their measured configuration is equal:
    they differ in address, TPM, clock device and voucher, never in behaviour."""
    settings = Settings(window_s=6)
    keys = demo_config.make_keys(tmp_path, ("exit-1", "exit-2"), ("client-a",))
    measured = []
    for i, name in enumerate(("exit-1", "exit-2")):
        path = demo_config.exit_config(
            keys, name, listen_ip=f"172.31.0.{i + 1}", tcti=f"swtpm:port={2321 + i}",
            rpc_url="http://172.31.0.254:8545", contract="0x" + "ab" * 20,
            clock_device=tmp_path / f"clock-{name}", voucher=tmp_path / f"v-{name}.json",
            timers=settings.timers(),
        )  # fmt: skip
        config = load_config(path)
        assert config.chain.attestation_interval == settings.upkeep_s
        assert config.security.attestation_required
        measured.append(measured_config(config, tmp_path / f"state-{name}").read_bytes())
    assert measured[0] == measured[1]
    client = load_config(
        demo_config.client_config(
            keys, "client-a", rpc_url="http://172.31.0.254:8545", contract="0x" + "ab" * 20,
            golden_policy=tmp_path / "golden.json", clock_device=tmp_path / "clock-client-a",
            timers=settings.timers(),
        )
    )  # fmt: skip
    # the clients re-check their exit once per registry window, which the exits attest
    # in four times over: never stale, always younger than half a window
    assert client.chain.attestation_interval == settings.window_s == 4 * settings.upkeep_s
    assert client.endpoints.exit_node_id is None  # registry mode
