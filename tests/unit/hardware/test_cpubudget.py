"""CpuBudget writes the budget where the kernel reads it, for cgroup v1 and v2, refuses what
the kernel would, and removes its group (directory trees standing in for /sys/fs/cgroup;
tests/integration/hardware/test_cpubudget_kernel.py holds a real process to its budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware.cpubudget import CpuBudget, CpuBudgetError


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
