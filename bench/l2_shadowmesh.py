"""ShadowMesh's exit and client as the benchmark's tunnel under test.

With ``profile`` set, each node runs under ``py-spy record`` (sampling, native-free) and a
summary of where the samples fell (by function, self time) is printed and returned.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hardware.netns import Lab
from lab import provision, topology

NODES = ("exit", "client")
LOG_TAIL = 15
PROFILE_RATE_HZ = 250
TOP = 12


def _command(role: str, config: Path, profile: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "l2bridge.commands.main",
        role,
        "--config",
        str(config),
        "--no-status",
    ]
    if profile is None:
        return cmd
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    out = profile / f"{role}.collapsed"
    # --nonblocking: sampling never pauses the node (a paused node is not the one measured).
    return [
        spy,
        "record",
        "--nonblocking",
        "-r",
        str(PROFILE_RATE_HZ),
        "-f",
        "raw",
        "-o",
        str(out),
        "--",
        *cmd,
    ]


def summarize(path: Path, top: int = TOP) -> list[tuple[str, float]]:
    """Share of samples by innermost function (self time), from py-spy's collapsed stacks."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # Start-up (imports) is not the data path.
        if not stack or not count.isdigit() or "importlib" in stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        # "function (file.py:line)" -> "function (file.py)"
        name = leaf.split(":")[0] + ")" if "(" in leaf else leaf
        leaves[name] += int(count)
        total += int(count)
    return (
        [(name, round(100 * n / total, 1)) for name, n in leaves.most_common(top)] if total else []
    )


@contextmanager
def tunnel(
    lab: Lab, topo: topology.Topology, tmp: Path, *, mode: str, profile: Path | None = None
) -> Iterator[list[int]]:
    files = provision.provision(
        tmp / f"shadowmesh-{mode}",
        exit_host=topology.EXIT_WAN,
        mtu=topo.mtu,
        offload=mode != "plain",  # "gro": the default config, with plain frames sent to it
        gro="software" if mode.endswith("-software") else None,  # None: the default, auto
        rps=mode.endswith("-rps"),  # network.rps: true on both nodes
        bridge=topology.BRIDGE,
    )
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    # The nodes' logs stay beside their configs; a start that fails shows their tail.
    logs = {role: (tmp / f"shadowmesh-{mode}" / f"{role}.log").open("wb") for role in NODES}
    exit_proc = lab.spawn(
        topo.exit, _command("exit", files.exit_config, profile), stderr=logs["exit"].fileno()
    )
    client = lab.spawn(
        topo.client,
        _command("client", files.client_configs["client"], profile),
        stderr=logs["client"].fileno(),
    )
    try:
        yield [client.pid, exit_proc.pid]
    except RuntimeError:
        for role, out in logs.items():
            out.flush()
            tail = Path(out.name).read_text(errors="replace").splitlines()[-LOG_TAIL:]
            print(f"--- {role} log (last lines) ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        for out in logs.values():
            out.close()
        # SIGINT: the nodes shut down cleanly and py-spy writes its profile.
        for proc in (client, exit_proc):
            try:
                lab.stop(proc, signal.SIGINT)
            except subprocess.SubprocessError:
                lab.stop(proc)
