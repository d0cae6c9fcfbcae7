"""Independent trainings at once, each on a core of its own.

Two trainings sharing a core slow each other down (XLA's GEMMs use every core they may,
whatever its thread flags), so the local pool starts one worker process per core and pins
each to its own core before JAX starts. Workers are spawned, not forked: JAX's threads
do not survive a fork. The pool is a standard ``concurrent.futures`` executor, so the
code that submits trainings does not change when a Dask cluster's executor
(``Client.get_executor()``) takes its place.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from convnet.errors import ArgumentError, check_number


def cores() -> list[int]:
    """The CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pinned_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes, worker k pinned to the k-th core this process may use.

    More workers than cores is refused: they would share cores, and each would be slower
    than one training alone."""
    check_number(workers, "--workers", integer=True)
    available = cores()
    if workers > len(available):
        raise ArgumentError(
            f"--workers: expected at most {len(available)}, the cores this process may use "
            f"(two trainings on one core slow each other down). Received: {workers}."
        )
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    for core in available[:workers]:
        queue.put(core)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_pin, initargs=(queue,))


def _pin(queue: Any) -> None:
    """A worker's first act: take a core of its own, before anything starts threads."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {queue.get()})
