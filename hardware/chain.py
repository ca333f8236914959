"""Local Ethereum nodes for tests, benches and demos: Anvil and a Hardhat node.

Both come from npm packages pinned in ``contracts/package.json`` (installed by
``hardware/setup/install.sh``): Anvil from ``@foundry-rs/anvil-linux-amd64``, started with
``--hardfork osaka`` so the P256VERIFY precompile exists; Hardhat 3's node run by the Node.js
22 binary from npm ``node`` (Hardhat 3 refuses older Node.js), whose default L1 fork is Osaka.

Each node listens on a free loopback port, is ready once it answers ``eth_chainId``, and is
stopped (terminate, then kill) by ``stop()`` or on leaving the ``with`` block. Its output goes
to a log file in a private temporary directory, removed on stop; the tail of that log is in
the error when the node fails to start. Operators of a real deployment point the client at
any RPC URL instead; nothing here is needed then.

``netns=NAME, host=ADDR`` runs the node inside that network namespace (``ip netns exec``),
listening on ``ADDR:8545`` there, for labs whose nodes reach the chain over veth links.
Readiness is then checked with ``ss -N NAME`` (this process is not in that namespace, so
``rpc()`` cannot reach it; use ``rpc_url`` from inside the namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
NODE_MODULES = Path(__file__).resolve().parent.parent / "contracts" / "node_modules"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
RPC_TIMEOUT_S = 2.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it
LOG_TAIL_BYTES = 2000
ANVIL_HARDFORK = "osaka"
DEFAULT_ACCOUNTS = 10
DEFAULT_BALANCE_ETHER = 10_000
NETNS_PORT = 8545  # the usual JSON-RPC port; free in a namespace of our own


class ChainStartError(RuntimeError):
    """A local chain process could not be started or did not become ready."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalChain:
    """A chain node process on a loopback port. Subclasses give the command line."""

    name = "chain"

    def __init__(
        self, *, node_modules: Path = NODE_MODULES, netns: str | None = None, host: str = HOST
    ) -> None:
        self.node_modules = node_modules
        self.netns = netns
        self.host = host
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _environment(self, scratch: Path) -> dict[str, str]:
        return dict(os.environ)

    def _cwd(self) -> Path:
        return self.node_modules.parent

    def start(self) -> LocalChain:
        """Start the node and wait until it answers RPC. Raises ChainStartError."""
        if self._proc is not None:
            raise ChainStartError(f"{self.name} already started")
        self._dir = Path(tempfile.mkdtemp(prefix=f"shadowmesh-{self.name}-"))
        last = ""
        try:
            for _ in range(START_ATTEMPTS):
                self.port = NETNS_PORT if self.netns is not None else free_port()
                prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
                log = self._dir / "node.log"
                with log.open("wb") as out:
                    self._proc = subprocess.Popen(
                        [*prefix, *self._command(self.port)],
                        cwd=self._cwd(),
                        env=self._environment(self._dir),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own group: stop() reaches any children
                    )
                if self._wait_ready():
                    return self
                last = _tail(log)
                self._kill()
        except FileNotFoundError as exc:
            self.stop()
            raise ChainStartError(f"{self.name}: {exc}; run hardware/setup/install.sh") from exc
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise ChainStartError(f"{self.name} did not start; last output:\n{last}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if self.netns is not None:
                if self._listening_in_netns():
                    return True
            else:
                with contextlib.suppress(OSError, ValueError):
                    if self.rpc("eth_chainId") is not None:
                        return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def _listening_in_netns(self) -> bool:
        assert self.netns is not None
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run(
                ["ss", "-N", self.netns, "-Hltn", f"sport = :{self.port}"],
                capture_output=True, text=True, timeout=5, check=False,
            )  # fmt: skip
            return bool(out.stdout.strip())
        return False

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """One JSON-RPC call; returns ``result``. Raises OSError / ValueError on failure."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        request = urllib.request.Request(  # noqa: S310 - always our own loopback URL
            self.rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as reply:  # noqa: S310
            answer = json.loads(reply.read())
        if "error" in answer:
            raise ValueError(f"{method}: {answer['error']}")
        return answer.get("result")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        """Stop the process and remove its scratch directory. Safe to call twice."""
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalChain:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Anvil(LocalChain):
    """Foundry's Anvil on the Osaka hardfork."""

    name = "anvil"

    def __init__(
        self,
        *,
        node_modules: Path = NODE_MODULES,
        accounts: int = DEFAULT_ACCOUNTS,
        balance_ether: int = DEFAULT_BALANCE_ETHER,
        gas_limit: int | None = None,
        netns: str | None = None,
        host: str = HOST,
    ) -> None:
        super().__init__(node_modules=node_modules, netns=netns, host=host)
        self.accounts = accounts
        self.balance_ether = balance_ether
        self.gas_limit = gas_limit

    def _command(self, port: int) -> list[str]:
        binary = self.node_modules / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
        argv = [
            str(binary),
            "--host", self.host, "--port", str(port),
            "--hardfork", ANVIL_HARDFORK,
            "--accounts", str(self.accounts),
            "--balance", str(self.balance_ether),
            "--quiet",
        ]  # fmt: skip
        if self.gas_limit is not None:
            argv += ["--gas-limit", str(self.gas_limit)]
        return argv


class HardhatNode(LocalChain):
    """Hardhat 3's node (EDR), run with the Node.js 22 binary from npm ``node``.

    ``contracts/hardhat.config.js`` selects the Osaka fork and sends Hardhat's own artifacts
    and cache to ``SHADOWMESH_HARDHAT_DIR``, which is this node's scratch directory.
    """

    name = "hardhat"

    def _command(self, port: int) -> list[str]:
        node = self.node_modules / "node" / "bin" / "node"
        cli = self.node_modules / "hardhat" / "dist" / "src" / "cli.js"
        return [str(node), str(cli), "node", "--hostname", self.host, "--port", str(port)]

    def _environment(self, scratch: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["SHADOWMESH_HARDHAT_DIR"] = str(scratch)
        env["HARDHAT_DISABLE_TELEMETRY_PROMPT"] = "true"
        env["DO_NOT_TRACK"] = "1"
        return env


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
