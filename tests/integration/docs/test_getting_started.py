"""docs/getting-started.md, run literally: every annotated command block, in namespaces.

Each block preceded by ``<!-- machine: NAME[, background][, retry][, stop][, expect: TEXT] -->``
runs line by line as root in that machine's network namespace, with that machine's own
``/etc/shadowmesh`` (a directory of this test bind-mounted there in a private mount
namespace, so the machines share nothing but the network). ``background`` starts a
long-running command (the exit, a client); ``retry`` repeats a failing block for up to
RETRY_S; ``stop`` first stops that machine's background commands (SIGTERM, as Ctrl-C or
systemctl would); ``expect`` requires TEXT in the block's output. The one command not run
literally is ``scp root@HOST:SRC DST``: the test copies SRC from the machine with address
HOST to DST, since the namespaces have no ssh.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardware import netns
from hardware.netns import Lab, Namespace

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "getting-started.md"
ETC = Path("/etc/shadowmesh")
RUN = Path("/run/shadowmesh")
RETRY_S = 40.0
COMMAND_TIMEOUT_S = 60.0
_BLOCK = re.compile(r"<!-- machine: ([^>]*?) -->\n```sh\n(.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    machine: str
    options: frozenset[str]
    expect: str | None
    lines: tuple[str, ...]


def blocks(text: str) -> list[Block]:
    out = []
    for header, body in _BLOCK.findall(text):
        machine, *opts = [p.strip() for p in header.split(",")]
        expect = next((o.split(":", 1)[1].strip() for o in opts if o.startswith("expect:")), None)
        options = frozenset(o for o in opts if not o.startswith("expect:"))
        lines = tuple(line for line in body.splitlines() if line.strip())
        out.append(Block(machine, options, expect, lines))
    return out


class World:
    """The guide's five machines: namespaces, their links and their /etc/shadowmesh."""

    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab = lab
        names = ("exit", "gw-a", "gw-b", "host-a", "host-b")
        self.ns: dict[str, Namespace] = {n: lab.namespace(n.replace("-", "")) for n in names}
        self.etc = {n: root / n for n in names}
        for d in self.etc.values():
            d.mkdir(mode=0o700)
        self.address = {"192.0.2.1": "exit", "192.0.2.2": "gw-a", "192.0.2.3": "gw-b"}
        self.background: dict[str, list[subprocess.Popen[bytes]]] = {n: [] for n in names}
        self.logs = root / "logs"
        self.logs.mkdir()
        ex = self.ns["exit"]
        netns.bridge(ex, "wan0")
        ex.ip("addr", "add", "192.0.2.1/24", "dev", "wan0")
        for gw, address, port in (("gw-a", "192.0.2.2/24", "wa"), ("gw-b", "192.0.2.3/24", "wb")):
            lab.veth(ex, port, self.ns[gw], "eth0")
            netns.attach(ex, port, "wan0")
            self.ns[gw].ip("addr", "add", address, "dev", "eth0")
        for gw, host, gw_addr, host_addr in (
            ("gw-a", "host-a", "10.0.0.254/24", "10.0.0.1/24"),
            ("gw-b", "host-b", "10.0.0.253/24", "10.0.0.2/24"),
        ):
            lab.veth(self.ns[gw], "eth1", self.ns[host], "eth0")
            self.ns[gw].ip("addr", "add", gw_addr, "dev", "eth1")
            self.ns[host].ip("addr", "add", host_addr, "dev", "eth0")

    def argv(self, machine: str, line: str) -> list[str]:
        # ip netns exec gives each command its own mount namespace (slave to the host's):
        # the bind mount below is seen by this command only.
        script = f'mount --bind {shlex.quote(str(self.etc[machine]))} {ETC} && exec sh -ec "$0"'
        return [*self.ns[machine].prefix(), "sh", "-c", script, line]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def scp(self, machine: str, line: str) -> str:
        _scp, source, dest = shlex.split(line)
        host, _, path = source.partition(":")
        src_machine = self.address[host.removeprefix("root@")]
        src = self.etc[src_machine] / Path(path).relative_to(ETC)
        dst = self.etc[machine] / Path(dest).relative_to(ETC)
        if dest.endswith("/"):
            dst = dst / src.name
        dst.write_bytes(src.read_bytes())
        dst.chmod(0o600)
        return ""

    def run_line(self, machine: str, line: str) -> str:
        if line.startswith("scp "):
            return self.scp(machine, line)
        proc = subprocess.run(
            self.argv(machine, line), capture_output=True, text=True, env=self.env(),
            timeout=COMMAND_TIMEOUT_S, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"[{machine}] {line}: exit {proc.returncode}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def start(self, machine: str, line: str) -> None:
        # exec: the command itself gets the SIGTERM and its exit status is checked
        with (self.logs / f"{machine}.log").open("ab") as log:
            proc = subprocess.Popen(
                self.argv(machine, f"exec {line}"), stdout=log, stderr=log, env=self.env(),
                start_new_session=True,
            )  # fmt: skip
        self.lab.processes.append(proc)
        self.background[machine].append(proc)

    def stop(self, machine: str) -> None:
        for proc in self.background[machine]:
            assert self.lab.stop(proc) == 0, self.log(machine)
        self.background[machine].clear()

    def log(self, machine: str) -> str:
        path = self.logs / f"{machine}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run_block(self, block: Block) -> str:
        if "stop" in block.options:
            self.stop(block.machine)
        if "background" in block.options:
            for line in block.lines:
                self.start(block.machine, line)
            return ""
        deadline = time.monotonic() + (RETRY_S if "retry" in block.options else 0)
        while True:
            try:
                out = "".join(self.run_line(block.machine, line) for line in block.lines)
                if block.expect is not None and block.expect not in out:
                    raise AssertionError(f"[{block.machine}] expected {block.expect!r} in:\n{out}")
                return out
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)


def test_the_guide_parses_into_the_steps_a_user_needs() -> None:
    found = blocks(GUIDE.read_text())
    commands = [(b.machine, line) for b in found for line in b.lines]
    assert ("exit", "shadowmesh exit --config /etc/shadowmesh/exit.yaml") in commands
    assert any(m == "host-a" and line.startswith("ping") for m, line in commands)
    assert any(line.startswith("shadowmesh init exit") for _m, line in commands)
    assert sum(line.startswith("shadowmesh init client") for _m, line in commands) == 2


@pytest.mark.timeout(300)
def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    created = not ETC.exists()
    run_created = not RUN.exists()  # the clients record their LAN interfaces' state there
    ETC.mkdir(mode=0o700, exist_ok=True)  # only a mount point; each machine mounts its own
    try:
        with Lab() as lab:
            world = World(lab, tmp_path)
            for block in blocks(GUIDE.read_text()):
                try:
                    world.run_block(block)
                except AssertionError as exc:
                    logs = "\n".join(f"--- {m}\n{world.log(m)[-3000:]}" for m in world.etc)
                    raise AssertionError(f"{exc}\n{logs}") from None
            # the stopped client gave eth1 back: out of the bridge, its address restored
            gw_a = world.ns["gw-a"]
            assert "master" not in gw_a.ip("-o", "link", "show", "dev", "eth1")
            # the revoked client stopped by itself, saying why, and the exit's log names it
            revoked_client = world.background["gw-b"][0]
            assert revoked_client.wait(timeout=30) == 1
            assert "certificate is revoked" in world.log("gw-b")
            assert "lan-b" in world.log("exit") and "revoked" in world.log("exit")
    finally:
        if created:
            ETC.rmdir()
        if run_created and RUN.exists() and not any(RUN.iterdir()):
            RUN.rmdir()
