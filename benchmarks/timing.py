"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import time
from typing import Any

#: The CPU cores this process could use before :func:`one_core` pinned it.
ALL_CORES: set[int] = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


def one_core() -> int | None:
    """Pin this process, and the processes it starts, to one CPU core; return that core.

    XLA's CPU client runs large ops on a thread pool sized from the cores it may use, and
    its thread flags do not shrink that pool: one 2048x2048 GEMM used 1.95 CPU-seconds per
    second with ``--xla_cpu_multi_thread_eigen=false``. Pinning makes "one core for every
    framework" true. Call it before JAX or PyTorch start. Returns None where the OS
    cannot pin (not Linux).
    """
    if not ALL_CORES:
        return None
    core = min(ALL_CORES)
    os.sched_setaffinity(0, {core})
    return core


def all_cores() -> None:
    """Undo :func:`one_core` (as a subprocess ``preexec_fn``: a child that may use every core)."""
    if ALL_CORES:
        os.sched_setaffinity(0, ALL_CORES)


def evaluation_seconds(net: Any, data: Any, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` full evaluation passes, after one warm-up pass."""
    net.accuracy(data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.accuracy(data)
        times.append(time.perf_counter() - start)
    return times
