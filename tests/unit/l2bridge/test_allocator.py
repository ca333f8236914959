"""The allocator settings a node runs with (glibc's trim and mmap thresholds)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from l2bridge.commands import common
from l2bridge.node import allocator


def test_tune_sets_both_thresholds() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    done = allocator.tune(mallopt, environ={})
    assert calls == [
        (allocator.M_TRIM_THRESHOLD, allocator.TRIM_BYTES),
        (allocator.M_MMAP_THRESHOLD, allocator.MMAP_BYTES),
    ]
    assert done == {
        "MALLOC_TRIM_THRESHOLD_": allocator.TRIM_BYTES,
        "MALLOC_MMAP_THRESHOLD_": allocator.MMAP_BYTES,
    }


def test_operator_environment_wins() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    done = allocator.tune(mallopt, environ={"MALLOC_TRIM_THRESHOLD_": "0"})
    assert calls == [(allocator.M_MMAP_THRESHOLD, allocator.MMAP_BYTES)]
    assert "MALLOC_TRIM_THRESHOLD_" not in done


def test_refused_setting_not_reported() -> None:
    assert allocator.tune(lambda param, value: 0, environ={}) == {}


def test_real_glibc_accepts_the_settings() -> None:
    mallopt = allocator._glibc_mallopt()
    if platform.libc_ver()[0] != "glibc":  # musl, macOS: nothing to tune, nothing tuned
        assert mallopt is None and allocator.tune(environ={}) == {}
        return
    assert mallopt is not None  # Debian, the supported platform: glibc is found
    assert set(allocator.tune(environ={})) == {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"}


def test_nodes_run_with_the_allocator_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    tuned: list[bool] = []
    monkeypatch.setattr(allocator, "tune", lambda: tuned.append(True) or {})

    async def node(stop: asyncio.Event) -> None:
        assert tuned == [True]  # before the node's loop runs
        stop.set()

    common.run_node(node)
    assert tuned == [True]
