"""Independent trainings at once, each on a core of its own.

Two trainings sharing a core slow each other down (XLA's GEMMs use every core they may,
whatever its thread flags), so the local pool starts one worker process per core and pins
each to its own core before JAX starts. Workers are spawned, not forked: JAX's threads
do not survive a fork. The pool is a standard ``concurrent.futures`` executor, so the
code that submits trainings does not change when a Dask cluster's executor
(``Client.get_executor()``) takes its place.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

from convnet.config import VERSION
from convnet.errors import ArgumentError, check_number

CONNECT_SECONDS = 5  # how long a --cluster address may take to answer


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
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=_pin, initargs=(queue, os.getpid())
    )


def _pin(queue: Any, parent: int) -> None:
    """A worker's first act: take a core of its own, before anything starts threads; and
    end with the process that started it, even one killed with SIGKILL (Linux), rather than
    train on with nobody to hand the result to, into a folder a new run may take over."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {queue.get()})
    _end_with_parent(parent)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def cluster_executor(address: str) -> tuple[Executor, Callable[[], None]]:
    """(an executor on the Dask cluster at ``address``, the function that closes it), once
    every worker there has this convnet: a cluster that would fail every task is refused
    before any work is sent."""
    try:
        from distributed import Client
    except ImportError:
        raise ArgumentError(
            f"--cluster {address}: needs Dask's distributed scheduler; install it with "
            "pip install 'convnet[cluster]'."
        ) from None
    try:
        client = Client(address, timeout=f"{CONNECT_SECONDS}s")
    except ValueError as exc:
        raise ArgumentError(
            f"--cluster {address}: expected a scheduler address such as tcp://HOST:8786 ({exc})."
        ) from None
    except (OSError, TimeoutError) as exc:
        raise ArgumentError(
            f"--cluster {address}: no Dask scheduler answered within {CONNECT_SECONDS} s ({exc})."
        ) from None

    def installed() -> str | None:  # runs on each worker, sent by value
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("convnet")
        except PackageNotFoundError:
            return None

    found = client.run(installed)
    wrong = {worker: v for worker, v in found.items() if v != VERSION}
    if not found or wrong:
        client.close()
        seen = ", ".join(f"{w}: {v or 'no convnet'}" for w, v in wrong.items()) or "no workers"
        raise ArgumentError(
            f"--cluster {address}: expected workers with convnet {VERSION}. Received: {seen}."
        )
    return client.get_executor(), client.close
