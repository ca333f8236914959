"""CpuBudget writes the budget where the kernel reads it, for cgroup v1 and v2, refuses what
the kernel would, and removes its group (directory trees standing in for /sys/fs/cgroup;
tests/integration/hardware/test_cpubudget_kernel.py holds a real process to its budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware.cpubudget import CpuBudget, CpuBudgetError, cores_allowed


def v1_tree(root: Path) -> Path:
    cpu = root / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("-1")
    (cpu / "cgroup.procs").write_text("")
    return cpu


def v2_tree(root: Path, subtree: str = "") -> Path:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text(subtree)
    (root / "cgroup.procs").write_text("")
    return root


def test_v1_budget_is_quota_over_period(tmp_path: Path) -> None:
    cpu = v1_tree(tmp_path)
    budget = CpuBudget("node", 0.25, root=tmp_path)
    assert budget.version == "v1"
    assert budget.path.parent == cpu
    assert (budget.path / "cpu.cfs_period_us").read_text() == "10000"
    assert (budget.path / "cpu.cfs_quota_us").read_text() == "2500"
    budget.add(4242)
    assert (budget.path / "cgroup.procs").read_text() == "4242"


def test_v2_budget_enables_the_controller_and_writes_cpu_max(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    budget = CpuBudget("node", 1.5, root=tmp_path)
    assert budget.version == "v2"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (budget.path / "cpu.max").read_text() == "15000 10000"


def test_v2_controller_already_enabled_is_left_alone(tmp_path: Path) -> None:
    v2_tree(tmp_path, subtree="cpu memory")
    CpuBudget("node", 0.5, root=tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu memory"


def test_no_cpu_controller_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(CpuBudgetError, match="no cgroup CPU controller"):
        CpuBudget("node", 0.5, root=tmp_path)


@pytest.mark.parametrize("cores", [0.0, -1.0, float("nan"), 0.05])
def test_budgets_the_kernel_would_refuse_are_refused(tmp_path: Path, cores: float) -> None:
    v1_tree(tmp_path)
    with pytest.raises(CpuBudgetError):
        CpuBudget("node", cores, root=tmp_path)
    assert [p.name for p in (tmp_path / "cpu").iterdir() if p.is_dir()] == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_names_that_leave_the_hierarchy_are_refused(tmp_path: Path, name: str) -> None:
    v1_tree(tmp_path)
    with pytest.raises(CpuBudgetError, match="not a cgroup name"):
        CpuBudget(name, 0.5, root=tmp_path)


def test_close_removes_the_group_and_is_idempotent(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    with CpuBudget("node", 0.5, root=tmp_path) as budget:
        # A plain directory tree cannot be rmdir'd with files in it, as a cgroup can.
        for f in budget.path.iterdir():
            f.unlink()
    assert not budget.path.exists()
    budget.close()


def test_throttled_time_read_in_both_versions(tmp_path: Path) -> None:
    v1_tree(tmp_path / "a")
    one = CpuBudget("node", 0.5, root=tmp_path / "a")
    (one.path / "cpu.stat").write_text("nr_periods 10\nnr_throttled 3\nthrottled_time 1500000000\n")
    assert one.throttled_s() == 1.5
    v2_tree(tmp_path / "b")
    two = CpuBudget("node", 0.5, root=tmp_path / "b")
    (two.path / "cpu.stat").write_text("usage_usec 9\nthrottled_usec 250000\n")
    assert two.throttled_s() == 0.25


def membership(tmp: Path, text: str) -> Path:
    path = tmp / "cgroup"
    path.write_text(text)
    return path


def test_cores_allowed_takes_the_tightest_quota_of_the_group_and_those_above(
    tmp_path: Path,
) -> None:
    root = v2_tree(tmp_path / "sys")
    leaf = root / "system.slice" / "shadowmesh.service"
    leaf.mkdir(parents=True)
    (leaf / "cpu.max").write_text("max 100000\n")  # the service itself: no limit
    (root / "system.slice" / "cpu.max").write_text("250000 100000\n")  # its slice: 2.5
    where = membership(tmp_path, "0::/system.slice/shadowmesh.service\n")
    assert cores_allowed(root=root, membership=where, affinity=8) == 2
    assert cores_allowed(root=root, membership=where, affinity=1) == 1  # fewer CPUs still
    (root / "system.slice" / "cpu.max").write_text("max 100000\n")
    assert cores_allowed(root=root, membership=where, affinity=8) == 8
    # A container: its own group is the mount's root, quota 1.5 cores (counts as 1).
    (root / "cpu.max").write_text("150000 100000\n")
    assert cores_allowed(root=root, membership=membership(tmp_path, "0::/\n"), affinity=8) == 1


def test_cores_allowed_reads_cgroup_v1(tmp_path: Path) -> None:
    cpu = v1_tree(tmp_path / "sys")
    group = cpu / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("300000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    where = membership(tmp_path, "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n")
    assert cores_allowed(root=tmp_path / "sys", membership=where, affinity=16) == 3
    (group / "cpu.cfs_quota_us").write_text("-1\n")
    assert cores_allowed(root=tmp_path / "sys", membership=where, affinity=16) == 16


@pytest.mark.parametrize(
    "text",
    ["", "garbage\n", "0::/../etc\n", "0::/missing/group\n", "0::/bad\n"],
)
def test_cores_allowed_is_not_limited_by_what_it_cannot_read(tmp_path: Path, text: str) -> None:
    root = v2_tree(tmp_path / "sys")
    (root / "bad").mkdir()
    (root / "bad" / "cpu.max").write_text("lots 100000\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cpu.max").write_text("100000 100000\n")  # outside the mount
    where = membership(tmp_path, text)
    assert cores_allowed(root=root, membership=where, affinity=4) == 4
    assert cores_allowed(root=root, membership=tmp_path / "absent", affinity=4) == 4
    assert cores_allowed(root=root, membership=where, affinity=0) == 1  # never below one
