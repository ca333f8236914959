"""The C allocator's settings for a node's data path (glibc only).

Every record, cell and socket read on the data path is a fresh buffer of 64-270 KB. With
glibc's defaults (trim threshold 128 KiB, mmap threshold that moves with what was freed
last) the top of the heap goes back to the kernel whenever that much is free and is
grown again by the next batch, so every 4 KiB page of those buffers costs a page fault
and a zeroed page: 8-16 % of a node's CPU in ``bench/multihop.py`` (perf: exc_page_fault,
clear_page). ``tune()`` keeps up to ``TRIM_BYTES`` of free heap and serves buffers up to
``MMAP_BYTES`` from the heap; the price is at most ``TRIM_BYTES`` held after a burst.

An operator's own ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` win (glibc read
them at start; we leave those settings alone). Elsewhere than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_BYTES = 32 * 1024 * 1024
MMAP_BYTES = 1024 * 1024
_ENV = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}

Mallopt = Callable[[int, int], int]


def _glibc_mallopt() -> Mallopt | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl, macOS: other allocators, other knobs
    mallopt: Mallopt = libc.mallopt
    return mallopt


def tune(mallopt: Mallopt | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Apply the settings above; returns what was set (empty where nothing was)."""
    if mallopt is None:
        mallopt = _glibc_mallopt()
        if mallopt is None:
            return {}
    done: dict[str, int] = {}
    for param, value in ((M_TRIM_THRESHOLD, TRIM_BYTES), (M_MMAP_THRESHOLD, MMAP_BYTES)):
        name = _ENV[param]
        if name in environ:
            continue
        if mallopt(param, value) == 1:
            done[name] = value
    return done
