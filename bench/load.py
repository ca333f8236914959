"""Load and faults: one exit, N clients, a sink LAN; then a hung TPM, kill -9, a black hole.

    python bench/load.py [--clients 100] [--rate 2000] [--load-s 10] [--fault-s 10]   (root)

In namespaces of its own (removed at the end): exit A (attested, its swtpm beside it) and
exit B, each a real ``shadowmesh exit`` process with its TAP in a bridge to the sink LAN;
the clients (``bench/load_clients.py``: N real frame pumps in one process, each with its
own certified identity) in a namespace routed to both exits; the sink
(``bench/load_sink.py``) counting frames and their latency. Everyone on A at first.

1. connect all clients (handshake rate), then ``--rate`` frames/s in total for
   ``--load-s``: frames lost end to end, p99 latency, exit RSS (MB per client) and CPU;
2. under load, the TPM stopped (SIGSTOP) for ``--fault-s``: times of plain connects
   (and before it, for comparison) and what attested connects get;
3. ``kill -9`` of exit A: time until each client has a tunnel to B (median, max);
4. A restarted (same bridge/TAP MAC?), then B black-holed (nft drop in its namespace)
   for ``--fault-s``: time until each client noticed (liveness) and moved to A;
5. a device with a tunnel sending garbage records at line rate: the others' losses;
6. ``--flood`` connections opened at once to exit A (a stranger's flood): how many
   got the decoy's answer, and the others' losses meanwhile;
7. one client's certificate revoked (a new signed list in the exit's revocation file):
   time until its tunnel is gone, and whether it gets back in.

Not covered here: a stopped chain (no registry in this setup). Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hardware.announce import format_mac  # noqa: E402
from hardware.netns import Lab, Namespace  # noqa: E402
from hardware.tpm import Swtpm  # noqa: E402
from l2bridge.identity.keyfiles import (  # noqa: E402
    load_certificate,
    load_revocations,
    save_revocations,
)
from l2bridge.identity.keys import AdminKey, HybridSigningKey  # noqa: E402
from lab import provision  # noqa: E402
from lab.credlab import ExitCredentials, write_device  # noqa: E402

PORT = 8443
PROBES = 10
ATTESTED_PROBES = 5
SINK_MAC = bytes.fromhex("025e00000001")
KEEPALIVE_S = 1.0
LIVENESS_S = 3.0
UP_TIMEOUT_S = 30.0
REVOKED_WAIT_S = 10.0  # the exit polls its revocation file every 3 s


def run(args: list[str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


class Proc:
    """A line-speaking child process (stdin commands, stdout JSON events)."""

    def __init__(self, lab: Lab, ns: Namespace, args: list[str], log: Path) -> None:
        self.log = log.open("ab")
        self.p = subprocess.Popen(
            [*ns.prefix(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, start_new_session=True, text=True,
        )  # fmt: skip
        lab.processes.append(self.p)  # type: ignore[arg-type]

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def read(self) -> Any:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"child ended (see {self.log.name})")
        return json.loads(line) if line.startswith("{") else line.strip()

    def ask(self, line: str) -> Any:
        self.send(line)
        return self.read()


def exit_config(directory: Path, name: str, identity: str, address: str, tcti: str | None) -> Path:
    doc = yaml.safe_load((directory / "exit.yaml").read_text())
    doc["keys"]["identity"] = identity
    if name == "exit_b":
        doc["endpoints"]["access_key_file"] = "exit_b.access.key"
        doc["keys"]["credentials"] = "exit_b.credential-table.json"
    doc["keys"]["revocations"] = "revoked.list"
    doc["endpoints"]["listen"] = f"{address}:{PORT}"
    doc["endpoints"]["keepalive_interval"] = KEEPALIVE_S
    doc["endpoints"]["liveness_timeout"] = LIVENESS_S
    doc["logging"]["level"] = "warning"
    if tcti is not None:
        doc["security"]["attestation_required"] = True
        kernel = directory / "kernel"  # the IMA harness's measured boot (see main)
        doc["tpm"] = {
            "tcti": tcti,
            "timeout": "1s",
            "ima_list": str(kernel / "binary_runtime_measurements"),
            "event_log": str(kernel / "binary_bios_measurements"),
        }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def listening(ns: Namespace) -> bool:
    return bool(run(["ss", "-N", ns.name, "-Hltn", f"sport = :{PORT}"]).strip())


def start_exit(lab: Lab, ns: Namespace, config: Path, extra: list[str], log: Path) -> int:
    cmd = [sys.executable, "-m", "l2bridge", "exit", "--config", str(config), "--no-status"]
    with log.open("ab") as f:
        proc = lab.spawn(ns, [*cmd, *extra], stdout=f.fileno(), stderr=f.fileno())
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not listening(ns):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"exit did not start: {log.read_text()[-800:]}")
        time.sleep(0.05)
    return proc.pid


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def macs(ns: Namespace) -> tuple[str, str]:
    def one(dev: str) -> str:
        return str(json.loads(ns.ip("-j", "link", "show", "dev", dev))[0]["address"])

    return one("br0"), one("smx0")


def p99(values: list[float]) -> float | None:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))] if values else None


def topology(lab: Lab) -> dict[str, Namespace]:
    ns = {k: lab.namespace(f"ld{k}") for k in ("cl", "ea", "eb", "sk")}
    for side, net, sink_if in (("ea", "1", "sa"), ("eb", "2", "sb")):
        e = ns[side]
        lab.veth(ns["cl"], f"v{side}", e, "vc")
        ns["cl"].ip("addr", "add", f"10.88.{net}.1/24", "dev", f"v{side}")
        e.ip("addr", "add", f"10.88.{net}.2/24", "dev", "vc")
        lab.veth(e, "lan0", ns["sk"], sink_if)
        e.ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        e.ip("link", "set", "lan0", "master", "br0")
        e.ip("link", "set", "br0", "up")
        ns["sk"].ip("link", "set", sink_if, "address", format_mac(SINK_MAC))
    return ns


def bench(args: argparse.Namespace, d: Path, lab: Lab) -> dict[str, Any]:
    names = tuple(f"c{i}" for i in range(args.clients)) + tuple(f"p{i}" for i in range(PROBES))
    prov = provision.provision(d, exit_host="10.88.1.2", clients=names, port=PORT)
    b_key = HybridSigningKey.generate()
    b_key.save(d / "exit_b.identity")
    # Exit B has its own master key and table; every client gets a credential from it too.
    b_creds = ExitCredentials(b_key.node_id)
    for name in names:
        device = HybridSigningKey.load(d / f"{name}.identity")
        serial = load_certificate(d / f"{name}.cert").serial
        write_device(d / f"{name}.credentials.json", b_creds.issue(device.node_id, name, serial))
        device.wipe()
    b_creds.write_exit(d / "exit_b.access.key", d / "exit_b.credential-table.json")
    save_revocations(prov.admin.sign_list((), 1), d / "revoked.list")
    ns = topology(lab)
    tpm = Swtpm(netns=ns["ea"].name).start()
    try:
        # swtpm has no kernel behind it: the IMA harness plays measured boot (PCRs 0-9, the
        # boot log, boot_aggregate in PCR 10), so exit A has evidence to quote.
        subprocess.run(
            [*ns["ea"].prefix(), sys.executable, "-m", "lab.imaharness", "--tcti", tpm.tcti,
             "--out", str(d / "kernel"), "--boot-only"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        run = Run(args, d, lab, ns, tpm)
        run.start((prov.exit_node_id, b_key.node_id))
        for phase in (run.steady, run.hung_tpm, run.kill_a, run.blackhole_b, run.garbage):
            phase()
        run.flood()
        run.revoke(prov.admin)
        return run.finish()
    finally:
        if tpm._proc is not None:
            os.kill(tpm._proc.pid, signal.SIGCONT)
        tpm.stop()


class Run:
    """The exits, sink and clients of one run, and the figures gathered so far."""

    def __init__(
        self, args: argparse.Namespace, d: Path, lab: Lab, ns: dict[str, Namespace], tpm: Swtpm
    ) -> None:
        self.args, self.d, self.lab, self.ns, self.tpm = args, d, lab, ns, tpm
        self.conf_a = exit_config(d, "exit_a", "exit.identity", "10.88.1.2", tpm.tcti)
        self.conf_b = exit_config(d, "exit_b", "exit_b.identity", "10.88.2.2", None)
        self.attested = ["--state-dir", str(d / "state_a"), "--ek-ca", str(tpm.root_ca),
                         "--ek-intermediate", str(tpm.intermediate_ca)]  # fmt: skip
        self.out: dict[str, Any] = {"clients": args.clients, "rate_fps": args.rate}

    def start(self, node_ids: tuple[bytes, bytes]) -> None:
        d, ns = self.d, self.ns
        sink_cmd = [sys.executable, "-P", str(ROOT / "bench/load_sink.py"), "sa", "sb"]
        self.sink = Proc(self.lab, ns["sk"], sink_cmd, d / "sink.log")
        assert self.sink.read() == "ready"
        self.pid_a = start_exit(self.lab, ns["ea"], self.conf_a, self.attested, d / "exit_a.log")
        start_exit(self.lab, ns["eb"], self.conf_b, [], d / "exit_b.log")
        time.sleep(1.5)  # the sink's first announcements reach both switches
        self.rss_idle = rss_mb(self.pid_a)
        plan = {
            "dir": str(d), "clients": self.args.clients, "rate": self.args.rate,
            "keepalive_s": KEEPALIVE_S, "liveness_s": LIVENESS_S,
            "exits": [{"url": f"ws://10.88.1.2:{PORT}/ws", "node_id": node_ids[0].hex()},
                      {"url": f"ws://10.88.2.2:{PORT}/ws", "node_id": node_ids[1].hex()}],
        }  # fmt: skip
        (d / "plan.json").write_text(json.dumps(plan))
        cmd = [sys.executable, "-P", str(ROOT / "bench/load_clients.py"), str(d / "plan.json")]
        self.clients = Proc(self.lab, ns["cl"], cmd, d / "clients.log")
        connected = self.clients.read()
        self.out["connected"] = connected["clients"]
        self.out["handshakes_per_s"] = connected["handshakes_per_s"]

    def steady(self) -> None:
        """Everyone on A, a fixed total rate: loss, latency, exit memory and CPU."""
        cpu0, t0 = cpu_s(self.pid_a), time.monotonic()
        self.clients.ask("phase 1")
        time.sleep(self.args.load_s)
        self.clients.ask("phase 2")
        cpu1, t1 = cpu_s(self.pid_a), time.monotonic()
        rss_loaded = rss_mb(self.pid_a)
        time.sleep(1.0)  # in flight
        sent = self.clients.ask("counts")["sent"].get("1", 0)
        got = self.sink.ask("report 1")
        self.out.update(
            frames_sent=sent, lost_frames=sent - got["distinct"],
            duplicate_frames=got["frames"] - got["distinct"],
            latency_ms_p50=got["latency_ms_p50"], latency_ms_p99=got["latency_ms_p99"],
            exit_rss_mb_idle=round(self.rss_idle, 1), rss_mb=round(rss_loaded, 1),
            rss_mb_per_client=round((rss_loaded - self.rss_idle) / self.args.clients, 3),
            exit_cpu_pct=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        )  # fmt: skip

    def hung_tpm(self) -> None:
        """A's TPM stopped under load: plain connects (and before, to compare), attested."""
        base = self.clients.ask(f"probe 0 {PROBES} 0")
        assert self.tpm._proc is not None
        os.kill(self.tpm._proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        plain = self.clients.ask(f"probe 0 {PROBES} 0")
        attest = self.clients.ask(f"probe 0 {ATTESTED_PROBES} 1")
        time.sleep(max(0.0, self.args.fault_s - (time.monotonic() - stopped)))
        os.kill(self.tpm._proc.pid, signal.SIGCONT)
        self.out.update(
            connect_ms_p99_baseline=p99(base["ms"]), connect_ms_p99_tpm_hung=p99(plain["ms"]),
            plain_outcomes_tpm_hung=plain["outcomes"],
            attested_outcomes_tpm_hung=attest["outcomes"],
            attested_ms_max_tpm_hung=max(attest["ms"]),
        )  # fmt: skip

    def kill_a(self) -> None:
        """kill -9 of A under load: time until each client has a tunnel to B."""
        self.mac_before = macs(self.ns["ea"])
        self.clients.ask("phase 3")
        self.clients.ask(f"mark {time.monotonic()}")
        os.kill(self.pid_a, signal.SIGKILL)
        moves = self.clients.ask("moves 30")
        self.out.update(
            failover_ms_median=moves["moved_ms_median"], failover_ms_max=moves["moved_ms_max"],
            failover_moved=moves["moved"], failover_reasons=moves["reasons"],
        )  # fmt: skip

    def blackhole_b(self) -> None:
        """A restarted (same MAC?); B black-holed: time until noticed, and until moved."""
        ns = self.ns
        self.pid_a = start_exit(
            self.lab, ns["ea"], self.conf_a, self.attested, self.d / "exit_a.log"
        )
        self.out["mac_stable_across_restart"] = macs(ns["ea"]) == self.mac_before
        self.clients.ask("phase 4")
        rules = (
            "table inet loadbh {\n chain i { type filter hook input priority 0; policy accept;"
            f" tcp dport {PORT} drop; }}\n chain o {{ type filter hook output priority 0;"
            f" policy accept; tcp sport {PORT} drop; }}\n}}\n"
        )
        subprocess.run(
            [*ns["eb"].prefix(), "nft", "-f", "-"], input=rules, text=True, check=True, timeout=10
        )
        holed = time.monotonic()  # counted from here: the drop rules are in place
        self.clients.ask(f"mark {holed}")
        moves = self.clients.ask(f"moves {self.args.fault_s + 15}")
        time.sleep(max(0.0, self.args.fault_s - (time.monotonic() - holed)))
        ns["eb"].run(["nft", "delete", "table", "inet", "loadbh"])
        self.out.update(
            liveness_deadline_ms=LIVENESS_S * 1000, blackhole_detect_ms=moves["detect_ms_max"],
            blackhole_detect_ms_median=moves["detect_ms_median"],
            blackhole_moved_ms_max=moves["moved_ms_max"], blackhole_moved=moves["moved"],
            blackhole_reasons=moves["reasons"],
        )  # fmt: skip

    def garbage(self) -> None:
        """A device with a tunnel sends garbage records at line rate: dropped, A lives on."""
        self.clients.ask("phase 5")
        garbage = self.clients.ask("garbage 0")
        self.clients.ask("phase 6")
        time.sleep(1.0)  # in flight
        sent = self.clients.ask("counts")["sent"].get("5", 0)
        got = self.sink.ask("report 5")
        self.out.update({k: v for k, v in garbage.items() if k != "event"})
        self.out["exit_a_alive_after_garbage"] = os.path.exists(f"/proc/{self.pid_a}")
        # The others' frames meanwhile (they were all on A again after the black hole).
        self.out["lost_frames_during_garbage"] = sent - got["distinct"]

    def flood(self) -> None:
        """Many connections at once to A's tunnel port: answered as the decoy, others fine."""
        self.clients.ask("phase 7")
        result = self.clients.ask(f"flood 0 {self.args.flood}")
        self.clients.ask("phase 8")
        time.sleep(1.0)  # in flight
        sent = self.clients.ask("counts")["sent"].get("7", 0)
        got = self.sink.ask("report 7")
        self.out.update({k: v for k, v in result.items() if k != "event"})
        self.out["lost_frames_during_flood"] = sent - got["distinct"]

    def revoke(self, admin: AdminKey) -> None:
        """Client 0's certificate revoked: time until the exit has dropped its tunnel."""
        current = load_revocations(self.d / "revoked.list")
        serial = load_certificate(self.d / "c0.cert").serial
        updated = admin.revoke(current, serial, "bench", int(time.time()))
        self.clients.send(f"gone 0 {REVOKED_WAIT_S}")
        save_revocations(updated, self.d / "revoked.list")
        gone = self.clients.read()
        self.out["revoked_gone_ms"] = gone["ms"]  # None: still connected after the wait
        self.out["revoked_reconnected"] = gone["reconnected"]

    def finish(self) -> dict[str, Any]:
        final = self.clients.ask("counts")
        self.out["link_down_drops_during_faults"] = final["link_down_drops"]
        self.clients.send("quit")
        self.clients.p.wait(30)
        self.sink.send("quit")
        self.out["chain_stop_ms"] = None  # no registry in this setup
        return self.out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2000.0, help="frames/s, all clients")
    parser.add_argument("--load-s", type=float, default=10.0)
    parser.add_argument("--fault-s", type=float, default=10.0, help="TPM stop, black hole")
    parser.add_argument("--flood", type=int, default=2000, help="connections opened at once")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/load.py: run as root (namespaces, TAPs, nft)")
    os.environ["PYTHONPATH"] = str(ROOT)  # the children run this tree's code
    d = Path(tempfile.mkdtemp(prefix="load-"))
    try:
        with Lab() as lab:
            result = bench(args, d, lab)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(d)], check=False)
        else:
            print(f"work directory: {d}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
