"""The demo's path end to end, with short timers, in network namespaces; and how the real
``shadowmesh exit`` / ``shadowmesh client`` processes behave without chain, TPM or clock.

The first group runs the full demo once (``lab.demo.run_full``: real swtpm per exit,
Anvil, clock simulators on ptys, the CLI processes) and checks what it recorded, not just
that it passed: both clients start on the registry's best exit, rotations complete on both
ends, after a file of the used exit's installed release is changed and loaded both clients
refuse it naming the file and sit on the other exit within one attestation window, and a
TCP transfer running through that move arrives with the right SHA-256.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from attestation import runtime_policy
from hardware import netns
from hardware.netns import Lab, Namespace
from hardware.tpm import Swtpm
from l2bridge.client.selection import REPUTATION_BAND
from lab import demo_steps, provision, topology
from lab.demo import run_full
from lab.demo_world import REPO, Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

SHORT = Settings(rotation_s=2.0, window_s=6, size_mib=8)
DIAL_ALLOWANCE_S = 3.0  # after the re-check that refuses: one probe, one refused dial, one dial


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    results, facts = run_full(SHORT, tmp_path_factory.mktemp("demo"))
    return results, facts


def test_every_step_passes_and_everything_is_removed(demo):
    results, _facts = demo
    names = [name for name, _ok, _shown, _secs in results]
    assert names == [name for name, _ in demo_steps.STEPS] + ["teardown"]
    failed = [(name, shown) for name, ok, shown, _ in results if not ok]
    assert failed == []


def test_both_clients_first_choose_the_best_exit(demo):
    _results, facts = demo
    best = facts["best_exit"]
    assert set(facts["first_exits"].values()) == {best}
    reps = facts["reputations_at_connect"]
    ids = {name: bytes.fromhex(node_id) for name, node_id in facts["exit_ids"].items()}
    # the clients' ranking: highest reputation band first, then the lowest nodeId
    assert best == min(reps, key=lambda n: (-(reps[n] // REPUTATION_BAND), ids[n]))


def test_rotations_complete_on_both_ends_on_disciplined_clocks(demo):
    _results, facts = demo
    rekeys = facts["rekeys"]
    assert rekeys["client-a"] >= 2 and rekeys["client-b"] >= 2
    assert rekeys[facts["best_exit"]] >= 4  # the exit counts both clients' rekeys
    # disciplined by the simulated GPSDOs: synced (0), or holding over between late
    # samples (1) on a busy machine; never fallen back to the system clock (2)
    assert set(facts["clock_modes"].values()) <= {0.0, 1.0}


def test_the_whole_demo_passes_with_each_exit_in_two_worker_processes(tmp_path):
    # network.workers: 2 on both exits. Every quote (enrolment, handshakes, upkeep) is the
    # supervisor's TPM's, the clients' evidence checks and the failover after the changed
    # file work as with one process, and the workers rotate keys on the supervisor's
    # disciplined clock and count the rekeys it reports.
    settings = dataclasses.replace(SHORT, exit_workers=2)
    results, facts = run_full(settings, tmp_path / "demo")
    failed = [(name, shown) for name, ok, shown, _ in results if not ok]
    assert failed == []
    assert facts["rekeys"][facts["best_exit"]] >= 4
    assert set(facts["clock_modes"].values()) <= {0.0, 1.0}


def test_changed_file_moves_both_clients_to_one_healthy_exit_within_a_window(demo):
    _results, facts = demo
    moved = facts["failover_s"]
    assert set(moved) == {"client-a", "client-b"}
    assert max(moved.values()) <= SHORT.window_s + DIAL_ALLOWANCE_S
    # each client refused the changed exit on its fresh evidence: the runtime policy check
    # of the IMA list names the changed file
    for why in facts["refusals"].values():
        assert why.startswith("runtime: ") and "exitnode/switch.py has digest" in why, why
    # the registry sees boot PCRs only: the changed exit still attests there
    assert facts["changed_exit_registry_state"].startswith(("attested", "registered"))


def test_tcp_transfer_through_the_failover_arrives_intact(demo):
    _results, facts = demo
    transfer = facts["failover_transfer"]
    assert transfer["started_before_pcr_change_s"] > 0
    assert transfer["stopped_after_clients_moved_s"] > 0
    assert transfer["bytes"] > 1 << 20
    assert transfer["received_sha256"] == transfer["sent_sha256"]
    assert len(transfer["sent_sha256"]) == 64


# --- without chain, TPM or clock: the real processes ----------------------------------------


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def status(ns: Namespace, port: int) -> dict | None:
    out = subprocess.run(
        [*ns.prefix(), sys.executable, "-m", "l2bridge", "status", "--json",
         "--url", f"http://127.0.0.1:{port}", "--timeout", "2"],
        capture_output=True, text=True, env=env(), timeout=15, check=False,
    )  # fmt: skip
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_status(ns: Namespace, port: int, ok, proc: subprocess.Popen, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    doc = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the node exited with status {proc.returncode}"
        doc = status(ns, port)
        if doc is not None and ok(doc):
            return doc
        time.sleep(0.3)
    raise AssertionError(f"status not reached; last: {doc}")


def edit(path: Path, **sections: dict) -> Path:
    doc = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start(lab: Lab, ns: Namespace, log: Path, *args: str) -> subprocess.Popen:
    with log.open("ab") as out:
        return lab.spawn(ns, [sys.executable, "-m", "l2bridge", *args],
                         stdout=out.fileno(), stderr=out.fileno(), env=env())  # fmt: skip


def test_exit_and_client_without_chain_tpm_or_clock(tmp_path):
    """Unreachable chain: the exit serves with local attestation and says so. Dead clock
    source: the client runs on the system clock, says so, and still rotates. Registry
    client with no chain: it stays up and says the registry is unreachable. Stopped TPM
    with attestation required: the exit refuses to start with one clear line."""
    with Lab() as lab:
        topo = topology.build(lab)
        files = provision.provision(tmp_path / "keys", exit_host=topology.EXIT_WAN,
                                    rotation="2s")  # fmt: skip
        tpm = Swtpm(directory=tmp_path / "tpm", netns=topo.exit.name).start()
        logs = tmp_path / "kernel"
        subprocess.run(
            [*topo.exit.prefix(), sys.executable, "-m", "lab.imaharness", "--tcti", tpm.tcti,
             "--out", str(logs), "--boot-only"],
            env=env(), check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        try:
            exit_cfg = edit(
                files.exit_config,
                security={"attestation_required": True},
                tpm={
                    "tcti": tpm.tcti,
                    "ima_list": str(logs / "binary_runtime_measurements"),
                    "event_log": str(logs / "binary_bios_measurements"),
                },
                chain={
                    "rpc_url": "http://127.0.0.1:9",  # nothing listens in the exit's namespace
                    "contract_address": "0x" + "11" * 20,
                    "attestation_interval": "10s",
                },
            )
            exit_args = [
                "exit", "--config", str(exit_cfg), "--state-dir", str(tmp_path / "st"),
                "--ek-ca", str(tpm.root_ca), "--ek-intermediate", str(tpm.intermediate_ca),
            ]  # fmt: skip
            exit_log = tmp_path / "exit.log"
            exit_proc = start(lab, topo.exit, exit_log, *exit_args)
            cut_off = lambda d: d["info"].get("registry_state", "").startswith("unreachable")  # noqa: E731
            doc = wait_status(topo.exit, 9470, cut_off, exit_proc)
            assert doc["info"]["attestation"] == "tpm"
            assert doc["gauges"]["tpm_ok"] == 1.0

            # A registry-mode client with no chain either: up, and saying why it has no exit.
            policy = tmp_path / "keys" / "golden.json"
            empty = runtime_policy.dump(runtime_policy.RuntimePolicy({}, ()))
            policy.write_text(json.dumps({"version": 2, "runtime_policy": json.loads(empty)}))
            reg_cfg = tmp_path / "keys" / "registry-client.yaml"
            reg_cfg.write_text(files.client_configs["client"].read_text())
            doc = yaml.safe_load(reg_cfg.read_text())
            doc["endpoints"].pop("exit_node_id")
            doc["endpoints"].pop("connect")
            doc["tpm"] = {"golden_policy": str(policy)}
            doc["chain"] = {
                "rpc_url": "http://127.0.0.1:9",
                "contract_address": "0x" + "11" * 20,
                "attestation_interval": "6s",
            }
            reg_cfg.write_text(yaml.safe_dump(doc))
            reg_log = tmp_path / "registry-client.log"
            reg_proc = start(lab, topo.client, reg_log, "client", "--config", str(reg_cfg))
            unreachable = lambda d: d["gauges"].get("registry_reachable") == 0.0  # noqa: E731
            wait_status(topo.client, 9480, unreachable, reg_proc)
            assert lab.stop(reg_proc, signal.SIGTERM) == 0
            assert "registry unreachable" in reg_log.read_text()

            # A client whose only clock source is dead: system clock, said so, still rotating.
            client_cfg = edit(
                files.client_configs["client"],
                atomic_time={
                    "enabled": True,
                    "consensus_quorum": 1,
                    "sources": [{"kind": "gpsdo", "device": str(tmp_path / "no-such-pty")}],
                },
            )
            client_log = tmp_path / "client.log"
            client_args = ["client", "--config", str(client_cfg)]
            client_proc = start(lab, topo.client, client_log, *client_args)
            assert netns.wait_for(
                lambda: topology.ping(topo.lan_a, topology.HOST_B, count=1) == 1, 40, 0.2
            ), "the exit with an unreachable chain does not carry traffic"
            doc = wait_status(topo.client, 9480, lambda d: d["rekeys"] >= 1, client_proc)
            assert doc["gauges"]["clock_mode"] == 2.0  # "system": the documented fallback
            assert "running on the system clock" in client_log.read_text()
            assert exit_proc.poll() is None and "unreachable" in exit_log.read_text()
            assert lab.stop(client_proc) == 0
            assert lab.stop(exit_proc) == 0

            # The TPM goes away; an exit that must attest refuses to start, clearly.
            tpm.stop()
            again = subprocess.run(
                [*topo.exit.prefix(), sys.executable, "-m", "l2bridge", *exit_args],
                capture_output=True, text=True, env=env(), timeout=60, check=False,
            )  # fmt: skip
            assert again.returncode == 1
            assert (
                again.stderr.strip()
                .splitlines()[-1]
                .startswith(f"shadowmesh exit: TPM at {tpm.tcti}:")
            )
            assert "Traceback" not in again.stderr
        finally:
            tpm.stop()
