"""What network.workers: auto reads of the kernel's cgroup files, fuzzed: whatever
/proc/self/cgroup and the quota files say, ``cores_allowed`` answers a count from 1 to the
CPUs the process may run on, and raises nothing (paths that leave the mount:
tests/unit/hardware/test_cpubudget.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.cpubudget import cores_allowed

lines = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda h, c, p: f"{h}:{c}:{p}",
        st.sampled_from(["0", "1", "12", "x", ""]),
        st.sampled_from(["", "cpu", "cpu,cpuacct", "memory", "cpu:"]),
        st.sampled_from(["/", "/a", "/a/b", "/../x", "/a/../../x", "a", "//a", "/a/\x00"]),
    ),
)
quotas = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["max 100000", "-1", "0 100000", "100000 0", "50000 100000", "1e9 1"]),
    st.builds(lambda q, p: f"{q} {p}", st.integers(-(2**40), 2**40), st.integers(-5, 2**40)),
)


@settings(max_examples=300, deadline=None)
@given(
    membership=st.lists(lines, max_size=4),
    v2=st.dictionaries(st.sampled_from(["", "a", "a/b", "x"]), quotas, max_size=4),
    v1=st.dictionaries(st.sampled_from(["", "a", "a/b"]), st.tuples(quotas, quotas), max_size=3),
    affinity=st.integers(1, 256),
)
def test_cores_allowed_counts_within_bounds_whatever_the_files_say(
    membership: list[str], v2: dict[str, str], v1: dict[str, tuple[str, str]], affinity: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sys"
        for group, quota in v2.items():
            (root / group).mkdir(parents=True, exist_ok=True)
            (root / group / "cpu.max").write_text(quota)
        for group, (quota, period) in v1.items():
            (root / "cpu" / group).mkdir(parents=True, exist_ok=True)
            (root / "cpu" / group / "cpu.cfs_quota_us").write_text(quota)
            (root / "cpu" / group / "cpu.cfs_period_us").write_text(period)
        where = Path(tmp) / "cgroup"
        where.write_text("\n".join(membership), errors="surrogateescape")
        got = cores_allowed(root=root, membership=where, affinity=affinity)
        assert 1 <= got <= affinity
