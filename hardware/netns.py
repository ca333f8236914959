"""Network namespaces, veth pairs and bridges for tests, the demo and the benchmarks.

Everything goes through ``ip`` (iproute2). A ``Lab`` owns what it creates: namespaces and
processes started in them are torn down by ``close()`` (a context manager), in reverse
order, even when the body failed, so parallel runs and failed tests leave nothing behind.
Names carry the process id so two runs on one machine never collide.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

IFNAMSIZ = 15
_counter = itertools.count()
STOP_GRACE_S = 3.0
COMMAND_TIMEOUT_S = 30.0


class NetnsError(Exception):
    """An ``ip`` command failed (local error); the message carries the command and stderr."""


def unique(prefix: str) -> str:
    """A name unique to this process, short enough for an interface (15 characters)."""
    tail = f"{os.getpid() % 100000}{next(_counter)}"
    return (prefix[: IFNAMSIZ - len(tail)] + tail)[:IFNAMSIZ]


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT_S,
    stdin_text: str | None = None,
) -> str:
    """Run a command in the current namespace; return its stdout."""
    try:
        proc = subprocess.run(
            list(args),
            input=stdin_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(args)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Namespace:
    """One named network namespace (``ip netns``), with loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
    ) -> str:
        return run([*self.prefix(), *args], check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.name, *args], check=check)

    def exists(self) -> bool:
        return Path("/run/netns", self.name).exists()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


class Lab:
    """Creates namespaces, links and processes, and removes all of them on ``close``."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._host_links: list[str] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, prefix: str) -> Namespace:
        ns = Namespace(unique(prefix))
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(
        self, a: Namespace, a_name: str, b: Namespace, b_name: str, *, mtu: int | None = None
    ) -> None:
        """A veth pair with one end in each namespace, both up."""
        tmp_a, tmp_b = unique("va"), unique("vb")
        run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        self._host_links.append(tmp_a)
        run(["ip", "link", "set", tmp_a, "netns", a.name, "name", a_name])
        run(["ip", "link", "set", tmp_b, "netns", b.name, "name", b_name])
        self._host_links.remove(tmp_a)
        for ns, dev in ((a, a_name), (b, b_name)):
            if mtu is not None:
                ns.ip("link", "set", dev, "mtu", str(mtu))
            ns.ip("link", "set", dev, "up")

    def spawn(
        self,
        ns: Namespace,
        args: Sequence[str],
        *,
        stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process in a namespace; it is stopped by ``close`` if still running."""
        proc = subprocess.Popen(
            [*ns.prefix(), *args],
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        """Stop one process we started (its whole session); returns its exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_GRACE_S)
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(proc)
        self.processes.clear()
        for link in self._host_links:
            run(["ip", "link", "del", link], check=False)
        self._host_links.clear()
        for ns in reversed(self.namespaces):
            # Deleting a namespace destroys the veth ends, bridges and TAPs inside it.
            run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()


def ip(ns: Namespace | None, *args: str, check: bool = True) -> str:
    """``ip`` in a namespace, or in the current one when ``ns`` is None."""
    if ns is None:
        return run(["ip", *args], check=check)
    return ns.ip(*args, check=check)


def ethtool(ns: Namespace | None, *args: str, check: bool = True) -> str:
    """``ethtool`` in a namespace, or in the current one when ``ns`` is None."""
    cmd = ["ethtool", *args]
    return run(cmd, check=check) if ns is None else ns.run(cmd, check=check)


def link_exists(ns: Namespace | None, dev: str) -> bool:
    return bool(ip(ns, "-o", "link", "show", "dev", dev, check=False).strip())


def bridge(ns: Namespace | None, name: str, *, mtu: int | None = None) -> None:
    """Create a Linux bridge (no STP, forwarding at once) and bring it up."""
    ip(ns, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    if mtu is not None:
        ip(ns, "link", "set", name, "mtu", str(mtu))
    ip(ns, "link", "set", name, "up")


def attach(ns: Namespace | None, dev: str, bridge_name: str) -> None:
    ip(ns, "link", "set", dev, "master", bridge_name)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
