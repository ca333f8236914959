"""The full demo's steps, in order: build, attest and register, connect, rotate, fail over.

Each step takes the :class:`~lab.demo_world.World`, returns one line saying what it
showed, records its figures in ``world.facts`` and raises when it did not see what it
should. The end-to-end test runs the same steps with shorter timers and checks the facts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from attestation import evidence as ev
from attestation import verifier
from attestation.enrol import Enrolment
from attestation.policy import parse as parse_policy
from contracts.constants import SOFTWARE_RELEASE
from hardware import netns
from hardware.chain import Anvil
from hardware.tpm import Swtpm
from l2bridge.client.selection import REPUTATION_BAND
from lab import demo_config, demo_net, topology
from lab.demo_world import REPO, StepFailed, World, chain_address, chain_key
from lab.imaharness import EVENT_LOG, IMA_LIST
from lab.tamper import install_release

CLOCK_KIND = "gpsdo"
UP_TIMEOUT_S = 45.0
TRANSFER_PORT = 5555
FAILOVER_PORT = 5556
TRANSFER_TIMEOUT_S = 120.0
PACE_S = 0.02  # the transfer during the failover: 64 KiB every 20 ms (~3 MB/s)
PACED_LIMIT = 512 << 20  # and never more than this
MIN_REKEYS = 2
VOUCHER = "voucher.json"

RECEIVE = """
import hashlib, socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
srv.settimeout(float(sys.argv[2]))
conn, _ = srv.accept()
conn.settimeout(float(sys.argv[2]))
h, n, last, gap = hashlib.sha256(), 0, None, 0.0
while chunk := conn.recv(1 << 16):
    now = time.monotonic()
    gap = gap if last is None else max(gap, now - last)
    last = now
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), f"{gap:.3f}", flush=True)
"""
SEND = """
import hashlib, os, socket, sys, time
host, port, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
limit, pace, path = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
for _ in range(100):
    try:
        s = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no connection to the receiver")
s.settimeout(60)
h, sent = hashlib.sha256(), 0
source = open(path, "rb") if path != "-" else None
while sent < limit and not os.path.exists(flag):
    chunk = source.read(1 << 20) if source else os.urandom(1 << 16)
    if not chunk:
        break
    s.sendall(chunk)
    h.update(chunk)
    sent += len(chunk)
    time.sleep(pace)
s.close()
print(sent, h.hexdigest(), flush=True)
"""
REGISTRY_DIGEST = """
import sys
from attestation import tpms
from attestation.tpm import Tpm
from contracts.constants import QUOTED_PCRS
with Tpm(sys.argv[1]) as tpm:
    print(tpms.pcr_digest(tpm.read_pcrs(QUOTED_PCRS)).hex())
"""
# The file of the exit's installed software the integrity step changes: a module every
# exit process imports, so any process of the release that starts loads it.
CHANGED_FILE = Path("exitnode/switch.py")
CHANGED_MODULE = "exitnode.switch"


def _info(doc: dict[str, object], key: str) -> str:
    info = doc.get("info")
    return str(info.get(key, "")) if isinstance(info, dict) else ""


def _gauge(doc: dict[str, object], key: str) -> float | None:
    gauges = doc.get("gauges")
    value = gauges.get(key) if isinstance(gauges, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _rekeys(doc: dict[str, object]) -> int:
    value = doc.get("rekeys", 0)
    return value if isinstance(value, int) else 0


# --- building the world ------------------------------------------------------------------


def step_network(w: World) -> str:
    w.mesh = demo_net.build(w.lab, w.settings.mtu)
    return f"{len(w.mesh.namespaces)} namespaces: wan, 2 exits, 2 clients, lan-a, lan-b"


def step_clocks(w: World) -> str:
    assert w.mesh is not None
    names = (*w.exit_names, *w.client_names)
    for name in names:
        link = w.workdir / "clocks" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        w.clocks[name] = link
        sim = [sys.executable, "-m", "lab.clocksim", CLOCK_KIND, "--link", str(link)]
        w.spawn(f"clock-{name}", None, sim)
    if not netns.wait_for(lambda: all(p.exists() for p in w.clocks.values()), 15.0, 0.1):
        raise StepFailed("the clock simulators did not create their ptys")
    return f"{len(names)} simulated GPSDOs (NMEA on ptys), one per exit and client"


def step_chain(w: World) -> str:
    chain = Anvil(accounts=4, balance_ether=1000, netns=w.ns("wan").name, host=demo_net.CHAIN_IP)
    chain.start()
    w.cleanups.append(chain.stop)
    w.rpc_url = chain.rpc_url
    out = w.shadowmesh(
        w.ns("wan"), "registry", "deploy", "--rpc", w.rpc_url,
        "--interval", str(w.settings.window_s), "--minimum-stake", "10", key=chain_key(0),
    )  # fmt: skip
    w.contract = json.loads(out)["address"]
    return f"Anvil at {w.rpc_url}, registry {w.contract} (window {w.settings.window_s} s)"


def installed(w: World) -> Path:
    """Where the release is installed as every exit sees it (its own copy mounted there)."""
    return w.workdir / "installed"


def install_dir(w: World, name: str) -> Path:
    return w.workdir / f"install-{name}"


def kernel_logs(w: World, name: str) -> Path:
    return w.workdir / f"kernel-{name}"


def step_tpms(w: World) -> str:
    """Each exit machine: the release installed on its disk, a TPM, and a boot: the IMA
    harness plays firmware and boot loader (event log, PCRs 0-9, the kernel command line
    that turns IMA on) and starts IMA's list with boot_aggregate."""
    install_release(REPO, w.workdir / "release")
    installed(w).mkdir(exist_ok=True)
    for name in w.exit_names:
        shutil.copytree(w.workdir / "release", install_dir(w, name))
        tpm = Swtpm(directory=w.workdir / f"tpm-{name}", netns=w.ns(name).name)
        w.cleanups.append(tpm.stop)
        tpm.start()
        w.tctis[name] = tpm.tcti
        w.ek_cas[name] = (tpm.root_ca, tpm.intermediate_ca)
        subprocess.run(
            [*w.ns(name).prefix(), sys.executable, "-m", "lab.imaharness", "--tcti", tpm.tcti,
             "--out", str(kernel_logs(w, name)), "--boot-only"],
            env=w.env(), check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return (
        "one swtpm per exit on its own loopback, EK certified by a local CA; the release "
        "installed on each exit; booted with IMA on (event log, PCRs 0-9, boot_aggregate)"
    )


def step_keys(w: World) -> str:
    assert w.mesh is not None
    w.keys = keys = demo_config.make_keys(w.workdir / "keys", w.exit_names, w.client_names)
    w.golden = keys.directory / "golden.json"
    offload, timers = w.settings.mode == "offload", w.settings.timers()
    for site in w.mesh.exits:
        w.configs[site.name] = demo_config.exit_config(
            keys, site.name, listen_ip=site.wan_ip, tcti=w.tctis[site.name],
            rpc_url=w.rpc_url, contract=w.contract, clock_device=w.clocks[site.name],
            voucher=state_dir(w, site.name) / VOUCHER, timers=timers, mtu=w.settings.mtu,
            offload=offload, kernel_logs=kernel_logs(w, site.name),
            workers=w.settings.exit_workers,
        )  # fmt: skip
    for site in w.mesh.clients:
        w.configs[site.name] = demo_config.client_config(
            keys, site.name, rpc_url=w.rpc_url, contract=w.contract, golden_policy=w.golden,
            clock_device=w.clocks[site.name], timers=timers, mtu=w.settings.mtu,
            offload=offload,
        )  # fmt: skip
    return (
        "admin key, 2 exit identities with master keys, 2 client certificates with "
        "credentials, node configs"
    )


def state_dir(w: World, name: str) -> Path:
    assert w.keys is not None
    return w.keys.directory / f"state-{name}"


def step_enrol(w: World) -> str:
    """The operator's steps before an exit joins: enrol its AK, quote it, take the golden
    policy from a known-good exit, and check the other exit against it."""
    assert w.keys is not None and w.golden is not None
    for name in w.exit_names:
        state = state_dir(w, name)
        state.mkdir(mode=0o700, exist_ok=True)
        root, intermediate = w.ek_cas[name]
        w.shadowmesh(
            w.ns(name), "attest", "enroll", "--tcti", w.tctis[name], "--ca", str(root),
            "--intermediate", str(intermediate), "--ak-out", str(state / "ak.json"),
            "--record-out", str(state / "enrolment.json"),
        )  # fmt: skip
        logs = kernel_logs(w, name)
        w.shadowmesh(
            w.ns(name), "attest", "quote", "--tcti", w.tctis[name], "--ak", str(state / "ak.json"),
            "--node-id", w.keys.exit_ids[name].hex(), "--ima-list", str(logs / IMA_LIST),
            "--event-log", str(logs / EVENT_LOG), "--out", str(state / "evidence.bin"),
        )  # fmt: skip
    runtime = w.workdir / "runtime-policy.json"
    configs = [a for name in w.exit_names for a in ("--include", str(w.configs[name]))]
    w.shadowmesh(
        None, "attest", "runtime-policy", "--include", str(w.workdir / "release"),
        "--relocate", f"{w.workdir / 'release'}={installed(w)}", *configs,
        "--out", str(runtime), timeout=300,
    )  # fmt: skip
    first = state_dir(w, w.exit_names[0])
    w.shadowmesh(
        None, "attest", "golden", "--evidence", str(first / "evidence.bin"),
        "--enrolment", str(first / "enrolment.json"), "--runtime-policy", str(runtime),
        "--out", str(w.golden),
    )  # fmt: skip
    policy = parse_policy(w.golden.read_bytes())
    digests = {}
    for name in w.exit_names:
        state = state_dir(w, name)
        data = (state / "evidence.bin").read_bytes()
        e = ev.decode(data)
        ak = Enrolment.parse((state / "enrolment.json").read_text()).ak_public
        verdict = verifier.verify(
            data, nonce=e.nonce, node_id=e.node_id, trusted_ak=ak, policy=policy,
            previous=None, now=time.time(),
        )  # fmt: skip
        if not verdict.ok:
            raise StepFailed(f"{name} fails the golden policy: {'; '.join(verdict.reasons)}")
        # What the registry's own quotes cover (its selection, not the handshake's).
        digests[name] = w.python(w.ns(name), REGISTRY_DIGEST, w.tctis[name]).strip()
    w.facts["pcr_digests"] = digests
    return (
        "AKs enrolled (EK chain + credential activation); golden policy: the booted PCRs 0-9 "
        "with IMA on, and a Keylime runtime policy of the installed release"
    )


CHAIN_ID = """
import sys
from contracts.client import connect
print(connect(sys.argv[1]).eth.chain_id)
"""


def step_approve(w: World) -> str:
    """The owner approves each exit's boot state (the digest of PCRs 0-9, what registry
    quotes cover) and this release with the hash of the Keylime runtime policy clients check
    its IMA list against."""
    digests = sorted(set(w.facts["pcr_digests"].values()))  # identical swtpms boot alike
    common = ("--rpc", w.rpc_url, "--registry", w.contract)
    w.shadowmesh(w.ns("wan"), "registry", "approve", *digests, *common, key=chain_key(0))
    w.shadowmesh(w.ns("wan"), "registry", "release", str(SOFTWARE_RELEASE), "--runtime-policy",
                 str(w.workdir / "runtime-policy.json"), *common, key=chain_key(0))  # fmt: skip
    return (
        f"owner approved {len(digests)} boot digest(s) over PCRs 0-9 "
        f"({', '.join(d[:12] for d in digests)}...) and release {SOFTWARE_RELEASE} with the "
        "hash of its runtime policy"
    )


def operator_of(w: World, name: str) -> int:
    """The Anvil account that operates exit ``name`` (account 0 deploys and enrols)."""
    return w.exit_names.index(name) + 1


def step_vouch(w: World) -> str:
    """The enrolment ceremony, per exit, as an enroller runs it (the deployer, appointed by
    the owner): the exit asks (EK, certificate, AK, identity key, terms); the enroller checks
    the EK certificate chain against the maker's root, the AK and nodeId = H(identity key),
    and challenges the TPM (MakeCredential); the exit answers with ActivateCredential and its
    hybrid identity signature over the terms; only then does the enroller sign the EIP-712
    voucher, made out to the exit's operator account."""
    assert w.keys is not None
    enroller = chain_address(0)
    common = ("--rpc", w.rpc_url, "--registry", w.contract)
    w.shadowmesh(w.ns("wan"), "registry", "enroller", "add", enroller, *common, key=chain_key(0))
    chain_id = w.python(w.ns("wan"), CHAIN_ID, w.rpc_url).strip()
    desk = w.workdir / "enroller"  # the enroller's own files; the pending secret stays here
    desk.mkdir(mode=0o700, exist_ok=True)
    for name in w.exit_names:
        state = state_dir(w, name)
        terms = ("--operator", chain_address(operator_of(w, name)), "--chain-id", chain_id,
                 "--registry", w.contract)  # fmt: skip
        exit_side = ("--tcti", w.tctis[name], "--ak", str(state / "ak.json"),
                     "--identity", str(w.keys.directory / f"{name}.identity"))  # fmt: skip
        request, challenge = state / "enrol-request.json", state / "enrol-challenge.json"
        answer, pending = state / "enrol-answer.json", desk / f"pending-{name}.json"
        root, intermediate = w.ek_cas[name]
        w.shadowmesh(w.ns(name), "enrol", "request", *exit_side, *terms, "--out", str(request))
        w.shadowmesh(
            w.ns("wan"), "enrol", "challenge", "--request", str(request), "--ca", str(root),
            "--intermediate", str(intermediate), *terms, "--out", str(challenge),
            "--pending", str(pending),
        )  # fmt: skip
        w.shadowmesh(w.ns(name), "enrol", "answer", *exit_side, "--request", str(request),
                     "--challenge", str(challenge), "--out", str(answer))  # fmt: skip
        w.shadowmesh(
            w.ns("wan"), "enrol", "vouch", "--pending", str(pending), "--answer", str(answer),
            "--out", str(state / VOUCHER), key=chain_key(0),
        )  # fmt: skip
    return (
        f"enroller {enroller[:10]}... appointed; ceremony per exit (EK chain, credential "
        "activation, identity signature), then EIP-712 vouchers for each exit's operator"
    )


def exit_python(w: World) -> list[str]:
    """How a process of the installed release starts: its own copy (mounted at the
    release's path) and the third-party packages, never the checkout, no bytecode
    written (a .pyc written at run time would be a file no policy knows)."""
    libs = sysconfig.get_paths()["purelib"]
    return ["env", f"PYTHONPATH={installed(w)}:{libs}", "PYTHONDONTWRITEBYTECODE=1",
            sys.executable, "-S"]  # fmt: skip


def _start_exit(w: World, name: str) -> str:
    """The exit runs under the IMA harness, which measures every file it opens from the
    installed release, the interpreter, the standard library, the packages and its
    configuration before letting the open go on."""
    assert w.mesh is not None
    site = next(s for s in w.mesh.exits if s.name == name)
    root, intermediate = w.ek_cas[name]
    public = f"ws://{site.wan_ip}:{demo_config.EXIT_PORT}{demo_config.PATH}"
    harness = [
        sys.executable, "-m", "lab.imaharness", "--tcti", w.tctis[name],
        "--out", str(kernel_logs(w, name)), "--install", f"{install_dir(w, name)}={installed(w)}",
        "--watch", sys.base_prefix, "--watch", sysconfig.get_paths()["purelib"],
        "--watch", str(w.configs[name]),
    ]  # fmt: skip
    exit_cmd = [
        *exit_python(w), "-m", "l2bridge.commands.main", "exit", "--config", str(w.configs[name]),
        "--state-dir", str(state_dir(w, name)), "--public-url", public,
        "--ek-ca", str(root), "--ek-intermediate", str(intermediate),
    ]  # fmt: skip
    proc = w.spawn(name, w.ns(name), [*harness, "--", *exit_cmd],
                   SHADOWMESH_REGISTRY_KEY=chain_key(operator_of(w, name)))  # fmt: skip
    w.nodes[name] = proc
    return public


def _registered(w: World, name: str) -> None:
    doc = w.wait_status(
        name,
        lambda d: _info(d, "registry_state").startswith(("registered", "attested", "rejected")),
        UP_TIMEOUT_S,
        "registration on chain",
    )
    state = _info(doc, "registry_state")
    if state.startswith("rejected"):  # the contract's verdict on this exit: final here
        raise StepFailed(f"{name}: the registry refused it: {state}")


def step_exits(w: World) -> str:
    """Both exits start together under their kernel's measurement (the IMA harness), each
    registers with its voucher and stake, then attests every upkeep period."""
    urls = [_start_exit(w, name) for name in w.exit_names]
    for name in w.exit_names:
        _registered(w, name)
    return f"{', '.join(urls)}: running, registered with 10 ETH stake each, attesting"


# --- the clients and their traffic -------------------------------------------------------


def reputations(w: World) -> dict[str, int]:
    assert w.keys is not None
    out = {}
    for name, node_id in w.keys.exit_ids.items():
        doc = json.loads(
            w.shadowmesh(
                w.ns("wan"),
                "registry",
                "show",
                "--node-id",
                node_id.hex(),
                "--rpc",
                w.rpc_url,
                "--registry",
                w.contract,
            )
        )
        out[name] = int(doc["reputation"])
    return out


def best_exit(reps: dict[str, int], ids: dict[str, bytes]) -> str:
    """What every client's ranking (``l2bridge.client.selection.rank``) picks among fresh, healthy
    exits: the highest reputation band, then the lowest nodeId."""
    return min(reps, key=lambda n: (-(reps[n] // REPUTATION_BAND), ids[n]))


def step_clients(w: World) -> str:
    """Both clients rank the registry's exits (reputation band, freshness, nodeId) and must
    agree: exits registered together earn the same on-time bonus per window, so their
    order cannot flip while the clients connect (a band is 5 windows wide)."""
    assert w.keys is not None
    before = reputations(w)
    best = best_exit(before, w.keys.exit_ids)
    for name in w.client_names:
        w.node(name, "client")
    lan_a, host_b = w.ns("lan-a"), topology.HOST_B
    if not netns.wait_for(lambda: topology.ping(lan_a, host_b, count=1) == 1, UP_TIMEOUT_S, 0.2):
        w.check_alive()
        raise StepFailed("lan-a cannot reach lan-b through the tunnels")
    chosen = {}
    for name in w.client_names:
        doc = w.wait_status(name, lambda d: _info(d, "exit_event") == "connected", 10, "a link")
        chosen[name] = w.exit_name(_info(doc, "exit_node_id"))
    w.facts.update(
        first_exits=chosen,
        reputations_at_connect=before,
        exit_ids={n: i.hex() for n, i in w.keys.exit_ids.items()},
        best_exit=best,
    )
    if set(chosen.values()) != {best}:
        raise StepFailed(f"clients chose {chosen}; the best exit is {best} ({before})")
    shown = ", ".join(f"{n} {r}" for n, r in before.items())
    tie = len({r // REPUTATION_BAND for r in before.values()}) == 1
    why = "same reputation band, so the lowest nodeId" if tie else "highest reputation band"
    return f"both clients chose {best} from the registry ({why}; {shown}); lan-a <-> lan-b up"


def step_ping(w: World) -> str:
    out = w.ns("lan-a").run(["ping", "-c", "5", "-i", "0.2", "-q", topology.HOST_B], timeout=20)
    match = re.search(r"(\d+) received.*?= [\d.]+/([\d.]+)/", out, re.S)
    if not match or match.group(1) != "5":
        raise StepFailed(f"ping lost packets: {out.strip().splitlines()[-2:]}")
    w.facts["ping_avg_ms"] = float(match.group(2))
    return f"{topology.HOST_A} -> {topology.HOST_B}: 5/5 replies, avg {match.group(2)} ms"


def _transfer(
    w: World, port: int, source: str, flag: Path, *, limit: int, pace: float
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start a receiver in lan-b and a sender in lan-a (``source`` a file, or ``-`` for
    paced random data until ``flag`` exists)."""
    pipe = subprocess.PIPE
    recv = w.lab.spawn(
        w.ns("lan-b"), [sys.executable, "-c", RECEIVE, str(port), str(TRANSFER_TIMEOUT_S)],
        stdout=pipe, stderr=pipe,
    )  # fmt: skip
    send = w.lab.spawn(
        w.ns("lan-a"),
        [sys.executable, "-c", SEND, topology.HOST_B, str(port), str(flag), str(limit),
         str(pace), source],
        stdout=pipe, stderr=pipe,
    )  # fmt: skip
    return recv, send


def _finish(
    recv: subprocess.Popen[bytes], send: subprocess.Popen[bytes]
) -> tuple[int, str, str, float]:
    """(bytes, sent SHA-256, received SHA-256, longest pause at the receiver) once both
    ends are done; raises unless both ends counted the same bytes with the same SHA-256."""
    try:
        sent_out, sent_err = send.communicate(timeout=TRANSFER_TIMEOUT_S)
        got_out, got_err = recv.communicate(timeout=TRANSFER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StepFailed("the transfer did not finish in time") from None
    if send.returncode != 0 or recv.returncode != 0:
        err = (sent_err or got_err or b"").decode(errors="replace").strip().splitlines()
        raise StepFailed(f"transfer failed: {err[-1] if err else 'no output'}")
    sent_n, sent_hex = sent_out.decode().split()
    got_n, got_hex, gap = got_out.decode().split()
    if int(sent_n) != int(got_n) or sent_hex != got_hex:
        raise StepFailed(f"sent {sent_n} B {sent_hex[:16]}..., got {got_n} B {got_hex[:16]}...")
    return int(got_n), sent_hex, got_hex, float(gap)


def step_transfer(w: World) -> str:
    src = w.workdir / "payload.bin"
    digest = hashlib.sha256()
    with src.open("wb") as f:
        for _ in range(w.settings.size_mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    started = time.monotonic()
    recv, send = _transfer(w, TRANSFER_PORT, str(src), w.workdir / "never", limit=1 << 40, pace=0.0)
    size, _sent_hex, got_hex, _gap = _finish(recv, send)
    elapsed = time.monotonic() - started
    if got_hex != digest.hexdigest() or size != w.settings.size_mib << 20:
        raise StepFailed("the file received is not the file written (SHA-256 differs)")
    rate = size * 8 / max(elapsed, 1e-6) / 1e6
    w.facts["transfer"] = {"bytes": size, "seconds": round(elapsed, 2), "mbit_s": round(rate)}
    return f"{size >> 20} MiB lan-a -> lan-b in {elapsed:.2f} s ({rate:.0f} Mbit/s), SHA-256 equal"


# --- rotation, PCR change, failover ------------------------------------------------------


def step_rotations(w: World) -> str:
    """Rekeys complete on both ends of every link, on the simulated clocks' epochs."""
    used = w.facts["best_exit"]
    timeout = w.settings.rotation_s * (MIN_REKEYS + 2) + 15
    counts, modes = {}, {}
    for name in w.client_names:
        doc = w.wait_status(name, lambda d: _rekeys(d) >= MIN_REKEYS, timeout, "rekeys")
        counts[name], modes[name] = _rekeys(doc), _gauge(doc, "clock_mode")
    need = MIN_REKEYS * len(w.client_names)
    doc = w.wait_status(used, lambda d: _rekeys(d) >= need, timeout, "rekeys at the exit")
    counts[used], modes[used] = _rekeys(doc), _gauge(doc, "clock_mode")
    w.facts["rekeys"] = counts
    w.facts["clock_modes"] = modes
    synced = [n for n, m in modes.items() if m in (0.0, 1.0)]  # synced or holding over
    if len(synced) != len(modes):
        raise StepFailed(f"clocks not disciplined by their GPSDO (0 synced, 1 holdover): {modes}")
    shown = ", ".join(f"{n} {c}" for n, c in counts.items())
    return (
        f"rekeys every {w.settings.rotation_s:g} s on epoch boundaries: {shown} "
        f"(clock disciplined by its GPSDO on {len(synced)}/{len(modes)} nodes)"
    )


def _tamper(w: World, name: str) -> Path:
    """Root on exit ``name`` changes a file of its installed release and a process of the
    release loads it (a sidecar started next to the exit, in the exit's machine: the same
    mount namespace the harness measures). Returns the path the kernel records."""
    path = install_dir(w, name) / CHANGED_FILE
    path.write_text(path.read_text() + "\nCOPY_TO = '203.0.113.7'  # keeps every frame\n")
    pid = str(w.nodes[name].pid)  # the harness: the exit machine's mount namespace
    subprocess.run(
        ["nsenter", "-t", pid, "-m", "-n", *exit_python(w), "-c", f"import {CHANGED_MODULE}"],
        env=w.env(), check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return installed(w) / CHANGED_FILE


def step_failover(w: World) -> str:
    """Change a file of the installed software of the exit in use, and have it loaded, while a
    TCP transfer runs between the LANs; both clients must refuse that exit naming the file
    and move to the other, and the transfer must survive."""
    old = w.facts["best_exit"]
    new = next(n for n in w.exit_names if n != old)
    flag = w.workdir / "stop-paced-transfer"
    recv, send = _transfer(w, FAILOVER_PORT, "-", flag, limit=PACED_LIMIT, pace=PACE_S)
    w.facts["paced_transfer"] = (recv, send, flag)
    w.marks["paced transfer started"] = time.monotonic()
    time.sleep(1.0)  # the transfer is under way
    if send.poll() is not None:
        raise StepFailed("the transfer ended before the failover")
    changed_path = _tamper(w, old)
    w.marks["PCR changed"] = changed = time.monotonic()
    new_id = _exit_id(w, new)
    moved: dict[str, float] = {}
    deadline = changed + 2 * w.settings.window_s + 15
    while len(moved) < len(w.client_names) and time.monotonic() < deadline:
        w.check_alive()
        for name in w.client_names:
            doc = w.status(name) if name not in moved else None
            if doc is None:
                continue
            if _info(doc, "exit_node_id") == new_id and _info(doc, "exit_event") == "connected":
                moved[name] = round(time.monotonic() - changed, 2)
        time.sleep(0.2)
    w.facts["failover_s"] = moved
    w.marks["clients moved"] = time.monotonic()
    w.facts["refusals"] = {n: refusal_reason(w, n, _exit_id(w, old)[:16]) for n in w.client_names}
    if len(moved) < len(w.client_names):
        raise StepFailed(f"clients on {new} after the file change: {sorted(moved)} only")
    unnamed = [n for n, why in w.facts["refusals"].items() if str(changed_path) not in why]
    if unnamed:
        raise StepFailed(f"{unnamed} moved without refusing {old} for {changed_path}")
    shown = ", ".join(f"{n} after {s:.1f} s" for n, s in moved.items())
    return (
        f"{changed_path.name} of {old}'s installed release changed and loaded; both clients "
        f"refused it naming {changed_path} and moved to {new}: {shown} "
        f"(re-check every {w.settings.window_s} s)"
    )


def refusal_reason(w: World, client: str, short_id: str) -> str:
    """The first reason ``client`` logged for refusing the exit ``short_id`` ("" if none)."""
    marker = f"exit {short_id} refused: "
    for line in w.log(client).read_text(errors="replace").splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return ""


def _exit_id(w: World, name: str) -> str:
    assert w.keys is not None
    return w.keys.exit_ids[name].hex()


def step_after_failover(w: World) -> str:
    lan_a, host_b = w.ns("lan-a"), topology.HOST_B
    if not netns.wait_for(lambda: topology.ping(lan_a, host_b, count=1) == 1, UP_TIMEOUT_S, 0.2):
        raise StepFailed("lan-a cannot reach lan-b after the failover")
    replies = topology.ping(lan_a, host_b, count=3)
    recv, send, flag = w.facts.pop("paced_transfer")
    flag.touch()
    stopped = time.monotonic()
    size, sent_hex, got_hex, gap = _finish(recv, send)
    m = w.marks
    w.facts["failover_transfer"] = {
        "bytes": size,
        "sent_sha256": sent_hex,
        "received_sha256": got_hex,
        "longest_pause_s": gap,
        "started_before_pcr_change_s": round(m["PCR changed"] - m["paced transfer started"], 2),
        "stopped_after_clients_moved_s": round(stopped - m["clients moved"], 2),
    }
    if replies != 3:
        raise StepFailed(f"ping after the failover: {replies}/3 replies")
    return (
        f"ping 3/3; the TCP transfer running through the move delivered {size / 2**20:.1f} MiB "
        f"intact (SHA-256 equal), longest pause {gap:.1f} s"
    )


def step_registry(w: World) -> str:
    """The registry checks what it can check on chain: the boot PCRs in its quotes. The
    changed exit booted approved software, so it still attests there; the clients, who
    replay its IMA list, refuse it (an on-chain runtime check would have to replay the
    whole IMA list in gas: docs/threat-model.md)."""
    old = w.facts["best_exit"]
    time.sleep(w.settings.upkeep_s + 1)  # at least one upkeep round since the change
    doc = w.wait_status(
        old,
        lambda d: _info(d, "registry_state").startswith(("attested", "registered", "rejected")),
        w.settings.upkeep_s * 3 + 10,
        "the changed exit's next on-chain round",
    )
    state = _info(doc, "registry_state")
    w.facts["changed_exit_registry_state"] = state
    reps = reputations(w)
    w.facts["reputations_at_end"] = reps
    return (
        f"{old} on chain: {state} (boot state unchanged; runtime is the clients' check); "
        f"reputations now {reps}"
    )


STEPS = [
    ("network", step_network),
    ("clocks", step_clocks),
    ("chain", step_chain),
    ("TPMs", step_tpms),
    ("keys", step_keys),
    ("enrol + golden", step_enrol),
    ("approve", step_approve),
    ("vouch", step_vouch),
    ("exits", step_exits),
    ("clients", step_clients),
    ("ping", step_ping),
    ("file transfer", step_transfer),
    ("rotations", step_rotations),
    ("integrity", step_failover),
    ("after failover", step_after_failover),
    ("registry", step_registry),
]
