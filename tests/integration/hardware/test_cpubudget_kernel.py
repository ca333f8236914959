"""The kernel holds a busy process to its CpuBudget, and the budget leaves nothing behind.

A real cgroup (v1 or v2, whichever holds the CPU controller here): a child spinning for a
second of wall time inside a 0.2-core budget gets at most about 0.2 s of CPU, and the kernel
reports the time it held it back; without the budget the same child gets most of a core."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardware.cpubudget import CpuBudget, cores_allowed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

SPIN = "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass\n"
START = "import sys\nsys.stdin.readline()\n" + SPIN


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spin(budget: CpuBudget | None) -> float:
    """CPU seconds a child spinning for 1 s of wall time got (read before it is reaped)."""
    with subprocess.Popen(
        [sys.executable, "-c", START + "sys.stdout.write('done\\n'); sys.stdout.flush()\n"
         "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as child:  # fmt: skip
        try:
            assert child.stdin is not None and child.stdout is not None
            if budget is not None:
                budget.add(child.pid)
                assert budget.pids() == [child.pid]
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
            return cpu_seconds(child.pid)
        finally:
            child.kill()
            child.wait(timeout=10)


def test_a_busy_process_gets_no_more_than_its_budget() -> None:
    with CpuBudget("smtest-budget", 0.2) as budget:
        path = budget.path
        held = spin(budget)
        throttled = budget.throttled_s()
    free = spin(None)
    assert held <= 0.35, f"{held:.2f} s of CPU in 1 s under a 0.2-core budget"
    assert throttled >= 0.3, f"the kernel held it back only {throttled:.2f} s"
    assert free >= 2 * held, f"unbudgeted {free:.2f} s against {held:.2f} s"
    assert not path.exists()


def test_close_moves_a_live_process_out_and_removes_the_group() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        budget = CpuBudget("smtest-budget", 0.5)
        budget.add(sleeper.pid)
        budget.close()
        assert not budget.path.exists()
        assert sleeper.poll() is None
        time.sleep(0.05)
        assert budget.pids() == []
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_a_process_in_a_budget_counts_the_cores_it_is_allowed() -> None:
    # What network.workers: auto reads: a process held to one core counts one, whatever
    # the machine has; a process in no budget of ours counts what it may run on.
    ask = "import sys\nsys.stdin.readline()\nfrom hardware.cpubudget import cores_allowed\n"
    ask += "print(cores_allowed(), flush=True)\n"
    root = Path(__file__).resolve().parents[3]
    with CpuBudget("smtest-cores", 1.0) as budget, subprocess.Popen(
        [sys.executable, "-c", ask], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    ) as child:  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        budget.add(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "1\n"
        assert child.wait(timeout=30) == 0
    assert 1 <= cores_allowed() <= len(os.sched_getaffinity(0))
