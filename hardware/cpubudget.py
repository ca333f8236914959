"""CPU budgets: a process held to a fraction of one core (the kernel's cgroup CPU controller),
and how many cores a process may keep busy (``cores_allowed``).

The multi-hop bench gives every node of a circuit (the client and each relaying exit, each
its own process) the same budget, so that one small machine stands in for several machines
of equal speed: a node can never borrow a core another node left idle, as it could not
across real machines. cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``) are both
handled. Needs root. A ``CpuBudget`` owns the group it made: ``close()`` moves any process
still in it back to the root group and removes it (a context manager).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from types import TracebackType

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A short period spreads a node's share evenly over time: with the kernel's default 100 ms
# a 0.25-core node would run 25 ms and then stall 75 ms, and TCP would see the stalls.
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota


class CpuBudgetError(Exception):
    """No CPU controller to use here, or the kernel refused the budget."""


def _controller(root: Path) -> tuple[str, Path]:
    """Which cgroup version holds the CPU controller, and the directory to make groups in."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return "v2", root
    v1 = root / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return "v1", v1
    raise CpuBudgetError(f"no cgroup CPU controller under {root}")


def cores_allowed(
    *,
    root: Path = CGROUP_ROOT,
    membership: Path = Path("/proc/self/cgroup"),
    affinity: int | None = None,
) -> int:
    """How many cores this process can keep busy: the CPUs it may run on (``affinity``,
    read when not given), fewer where a cgroup quota holds it to less (a container started
    with two CPUs' worth on a large host): v2 ``cpu.max`` of its group and of every group
    above it, v1 ``cpu.cfs_quota_us``. A quota of 1.5 cores counts as 1. At least 1;
    files that cannot be read or parsed limit nothing."""
    cores = affinity if affinity is not None else len(os.sched_getaffinity(0))
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        files: tuple[str, ...]
        if hierarchy == "0" and not controllers:  # v2, the unified hierarchy
            base, files = root, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1, the group holding the CPU controller
            base, files = root / "cpu", ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        group = Path(os.path.normpath(base / path.lstrip("/")))
        if base != group and base not in group.parents:
            continue  # ".." in the path: not a group under the mount
        while True:
            quota = _quota(group, files)
            if quota is not None:
                cores = min(cores, int(quota))
            if group in (base, group.parent):
                break
            group = group.parent
    return max(1, cores)


def _quota(group: Path, files: tuple[str, ...]) -> float | None:
    """The group's CPU quota in cores, or None (no limit, or nothing readable)."""
    try:
        if len(files) == 1:  # v2: "max 100000" or "200000 100000"
            quota, _, period = (group / files[0]).read_text().strip().partition(" ")
        else:  # v1: the quota (-1: none) and the period, in two files
            quota = (group / files[0]).read_text().strip()
            period = (group / files[1]).read_text().strip()
        if quota in ("max", "-1"):
            return None
        value, every = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return value / every if value > 0 and every > 0 else None


class CpuBudget:
    """A cgroup holding its processes to ``cores`` of one core's time (above 0; 1.5 is one
    and a half cores)."""

    def __init__(
        self, name: str, cores: float, *, root: Path = CGROUP_ROOT, period_us: int = PERIOD_US
    ) -> None:
        if not cores > 0:
            raise CpuBudgetError(f"a CPU budget must be above 0 cores, not {cores}")
        if "/" in name or name in ("", ".", ".."):
            raise CpuBudgetError(f"not a cgroup name: {name!r}")
        quota = round(cores * period_us)
        if quota < MIN_QUOTA_US:
            raise CpuBudgetError(f"{cores} cores of a {period_us} us period is under 1 ms")
        self.version, self._base = _controller(root)
        self.cores = cores
        self.path = self._base / f"{name}-{os.getpid()}"
        try:
            if self.version == "v2":
                subtree = self._base / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota} {period_us}")
            else:
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            raise CpuBudgetError(f"cannot make the CPU budget {self.path}: {exc}") from exc

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the budget."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise CpuBudgetError(f"cannot move process {pid} into {self.path}: {exc}") from exc

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def throttled_s(self) -> float:
        """Seconds the kernel held this group's processes back for want of budget."""
        stat = {}
        with contextlib.suppress(OSError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                stat[key] = int(value)
        if "throttled_usec" in stat:  # v2
            return stat["throttled_usec"] / 1e6
        return stat.get("throttled_time", 0) / 1e9  # v1: nanoseconds

    def close(self) -> None:
        """Move what is left back to the root group and remove the group (idempotent)."""
        if not self.path.exists():
            return
        for pid in self.pids():
            with contextlib.suppress(OSError):
                (self._base / "cgroup.procs").write_text(str(pid))
        for _ in range(50):  # an exiting process can hold the group for a moment
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        raise CpuBudgetError(f"cannot remove {self.path}: processes remain in it")

    def __enter__(self) -> CpuBudget:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
