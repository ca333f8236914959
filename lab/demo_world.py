"""What the full demo's steps share: the lab, its processes, and how to talk to them.

Every ShadowMesh process runs as ``python -m l2bridge ...`` (the ``shadowmesh``
command) inside its namespace, with this checkout on PYTHONPATH; node logs go to files in
the demo's work directory (echoed on failure). Status documents are read with
``shadowmesh status --json`` inside the node's namespace, as an operator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account

from hardware.netns import Lab, Namespace
from lab import demo_config, demo_net

REPO = Path(__file__).resolve().parent.parent
MNEMONIC = "test test test test test test test test test test test junk"  # Anvil's default
CLI_TIMEOUT_S = 90.0
STATUS_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 12


class StepFailed(RuntimeError):
    """A demo step did not show what it should; the message says what was seen."""


@dataclass(frozen=True, slots=True)
class Settings:
    rotation_s: float = 3.0  # key rotation interval
    window_s: int = 8  # registry attestation window = clients' re-check interval
    size_mib: int = 20  # the SHA-256-checked file transfer
    mode: str = "offload"  # offload | plain | jumbo
    verbose: bool = False
    exit_workers: int = 1  # network.workers of both exits

    @property
    def upkeep_s(self) -> float:
        # Exits attest four times per window: never stale between rounds, and always
        # "fresh" (younger than half a window) in the clients' ranking.
        return self.window_s / 4

    @property
    def mtu(self) -> int:
        return 9000 if self.mode == "jumbo" else 1500

    def timers(self) -> demo_config.Timers:
        return demo_config.Timers(self.rotation_s, self.window_s, self.upkeep_s)


def _account(index: int) -> Any:
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def chain_key(index: int) -> str:
    """The private key of Anvil's default account ``index`` (0 deploys and enrols, 1..
    operate the exits)."""
    return "0x" + bytes(_account(index).key).hex()


def chain_address(index: int) -> str:
    return str(_account(index).address)


@dataclass
class World:
    lab: Lab
    workdir: Path
    settings: Settings
    mesh: demo_net.Mesh | None = None
    keys: demo_config.Keys | None = None
    rpc_url: str = ""
    contract: str = ""
    tctis: dict[str, str] = field(default_factory=dict)
    ek_cas: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # root, intermediate
    clocks: dict[str, Path] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)
    golden: Path | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the steps measured
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times between steps

    # --- where things are -------------------------------------------------------------------

    def ns(self, name: str) -> Namespace:
        assert self.mesh is not None
        if name == "wan":
            return self.mesh.wan
        for site in (*self.mesh.exits, *self.mesh.clients):
            if site.name == name:
                return site.ns
        for client, lan in zip(self.mesh.clients, self.mesh.lans, strict=True):
            if name == "lan-" + client.name[-1]:
                return lan
        raise KeyError(name)

    @property
    def exit_names(self) -> tuple[str, ...]:
        assert self.mesh is not None
        return tuple(s.name for s in self.mesh.exits)

    @property
    def client_names(self) -> tuple[str, ...]:
        assert self.mesh is not None
        return tuple(s.name for s in self.mesh.clients)

    def exit_name(self, node_id_hex: str) -> str:
        assert self.keys is not None
        for name, node_id in self.keys.exit_ids.items():
            if node_id.hex() == node_id_hex:
                return name
        return f"unknown exit {node_id_hex[:16]}"

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    # --- running commands ---------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(extra)
        return env

    def shadowmesh(
        self, ns: Namespace | None, *args: str, key: str | None = None, timeout: float = 0
    ) -> str:
        """Run one ``shadowmesh`` command (in ``ns``, or here); its stdout. StepFailed on error."""
        prefix = ns.prefix() if ns is not None else []
        extra = {"SHADOWMESH_REGISTRY_KEY": key} if key is not None else {}
        cmd = [*prefix, sys.executable, "-m", "l2bridge", *args]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=self.env(**extra),
                timeout=timeout or CLI_TIMEOUT_S,
                check=False,
                cwd=REPO,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"shadowmesh {' '.join(args[:2])}: no answer in time") from None
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise StepFailed(f"shadowmesh {' '.join(args[:2])}: {' | '.join(tail)}")
        return done.stdout

    def python(self, ns: Namespace, code: str, *args: str, timeout: float = 30) -> str:
        """Run a short Python program in ``ns``; its stdout. StepFailed on error."""
        done = subprocess.run(
            [*ns.prefix(), sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise StepFailed(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        return done.stdout

    def spawn(
        self, name: str, ns: Namespace | None, args: list[str], **extra: str
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process (stopped by the lab); its output goes to its log."""
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("ab") as log:
            out = None if self.settings.verbose else log.fileno()
            if ns is None:
                proc = subprocess.Popen(
                    args, stdout=out, stderr=out, env=self.env(**extra), start_new_session=True
                )
                self.lab.processes.append(proc)
            else:
                proc = self.lab.spawn(ns, args, stdout=out, stderr=out, env=self.env(**extra))
        return proc

    def node(self, name: str, role: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "l2bridge.commands.main",
            role,
            "--config",
            str(self.configs[name]),
        ]
        proc = self.spawn(name, self.ns(name), [*cmd, *args], **extra)
        self.nodes[name] = proc
        return proc

    def stop_node(self, name: str) -> int | None:
        proc = self.nodes.pop(name, None)
        return None if proc is None else self.lab.stop(proc)

    def status(self, name: str) -> dict[str, Any] | None:
        """The node's status document, or None while it does not answer."""
        port = demo_config.EXIT_STATUS if name in self.exit_names else demo_config.CLIENT_STATUS
        try:
            out = self.shadowmesh(
                self.ns(name), "status", "--json", "--url", f"http://{port}", "--timeout", "2",
                timeout=STATUS_TIMEOUT_S,
            )  # fmt: skip
            doc: dict[str, Any] = json.loads(out)
        except (StepFailed, ValueError):
            return None
        return doc

    def check_alive(self) -> None:
        for name, proc in self.nodes.items():
            if proc.poll() is not None:
                raise StepFailed(f"{name} exited with status {proc.returncode}")

    def wait_status(
        self, name: str, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll ``name``'s status until ``ok(doc)``; StepFailed naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            doc = self.status(name)
            if doc is not None and ok(doc):
                return doc
            time.sleep(0.3)
        seen = doc.get("info", {}) if doc else "no status"
        raise StepFailed(f"{name}: {what} not seen within {timeout:.0f} s (status: {seen})")

    def tails(self) -> str:
        """The last lines of every node's log (shown when a step failed)."""
        out = []
        for path in sorted((self.workdir / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            if lines:
                out.append(f"--- {path.stem}\n" + "\n".join(lines))
        return "\n".join(out)
