"""The one scheduler of independent trainings: an ensemble's members and a sweep's trials,
each a run folder, on a pool of pinned local processes, a Dask cluster, or one after
another in this process. It never sees a flag: a job is a folder and the arguments of
the function that trains it.

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from convnet import checkpoint, files
from convnet.config import VERSION
from convnet.errors import ArgumentError, BackendError, check_number

CONNECT_SECONDS = 5  # how long a --cluster address may take to answer
ATTEMPTS = 3  # a job whose worker process died this many times in a row fails
POLL_SECONDS = 5.0  # how often a wait on jobs asks whether any worker is left
NO_WORKERS_SECONDS = 60.0  # a cluster without workers this long ends the wait


@dataclass(frozen=True)
class Job:
    """One run folder to train: ``work(arguments, str(folder), send_back, resume_from,
    resume)`` trains it (see :func:`run`)."""

    folder: Path
    arguments: dict[str, Any]


# work(arguments, folder, send_back, resume_from, resume) -> result, whose "files" (name:
# bytes) a worker on another machine sends back
Work = Callable[[dict[str, Any], str, bool, "bytes | None", bool], dict[str, Any]]


def run(
    jobs: Sequence[Job],
    workers: Workers,
    work: Work,
    *,
    on_done: Callable[[Job, dict[str, Any]], None],
    on_failure: Callable[[Job, Exception], bool] | None = None,
) -> None:
    """Train every job on ``workers``, each from its folder's checkpoint when it has one
    (sent along to a cluster's worker, whose disk is not this one; the files it makes come
    back and are written here). ``on_done(job, result)`` as each one ends. A job that
    raises: ``on_failure(job, error)``, and the others go on if it returns True; else the
    error ends the run. A local worker that dies (kill -9, out of memory) breaks its pool:
    its jobs train again in a fresh pool, from their checkpoints, up to ATTEMPTS times."""

    def ended(job: Job, outcome: Callable[[], dict[str, Any]]) -> None:
        try:
            result = outcome()
            for name, content in result.get("files", {}).items():
                files.write_bytes(job.folder / name, content)
        except Exception as exc:
            if on_failure is None or not on_failure(job, exc):
                raise
            return
        on_done(job, result)

    if workers.executor is None:
        for job in jobs:
            ended(job, partial(work, *_task(job, send_back=False)))
        return
    deaths = dict.fromkeys((job.folder for job in jobs), 0)
    todo = list(jobs)
    while todo:
        send_back = workers.sends_back
        futures: dict[Future, Job] = {
            workers.executor.submit(work, *_task(job, send_back)): job for job in todo
        }
        todo = []
        for future in _as_completed(futures, workers):
            job = futures[future]
            if isinstance(future.exception(), BrokenExecutor):
                deaths[job.folder] += 1
                if deaths[job.folder] < ATTEMPTS:
                    todo.append(job)  # again, from its checkpoint, in a fresh pool
                    continue
            ended(job, partial(_result, future, job))
        if todo:
            workers.renew()


def _as_completed(futures: dict[Future, Job], workers: Workers) -> Iterator[Future]:
    """``as_completed``, asking every POLL_SECONDS whether anyone is still working on
    them (:meth:`Workers.check_alive`): a cluster that lost every worker is an error in
    bounded time, not a silent wait."""
    pending = set(futures)
    while pending:
        try:
            for future in as_completed(pending, timeout=POLL_SECONDS):
                pending.discard(future)
                yield future
        except TimeoutError:
            workers.check_alive()


def _result(future: Future, job: Job) -> dict[str, Any]:
    if isinstance(future.exception(), BrokenExecutor):
        raise RuntimeError(f"{job.folder.name}: its worker process died {ATTEMPTS} times")
    return future.result()


def _task(job: Job, send_back: bool) -> tuple[dict[str, Any], str, bool, bytes | None, bool]:
    """``work``'s arguments: resumed from the folder's checkpoint when there is one."""
    saved = checkpoint.path_in(job.folder)
    resume = saved.exists()
    resume_from = saved.read_bytes() if send_back and resume else None
    return job.arguments, str(job.folder), send_back, resume_from, resume


class Workers:
    """Where jobs train: ``workers`` pinned local processes (a fresh pool when one dies),
    a Dask cluster at ``cluster``, or neither: one after another in this process. Made,
    and a cluster checked, before anything is written."""

    def __init__(self, workers: int | None = None, cluster: str | None = None) -> None:
        if cluster is not None and not cluster.strip():
            raise ArgumentError(
                "--cluster: expected a scheduler address such as tcp://HOST:8786. Received: '' "
                "(an unset shell variable?); nothing was trained."
            )
        self.workers, self.cluster = workers, cluster
        self._empty_since: float | None = None
        self.executor: Executor | None = None
        self._close: Callable[[], None] = lambda: None
        if cluster:
            self.executor, self._close = cluster_executor(cluster)
        elif workers is not None and workers > 1:
            self.renew()
        elif workers is not None:
            pinned_pool(workers).shutdown()  # checks --workers as the pool does

    def check_alive(self) -> None:
        """Raise once a cluster has had no worker for NO_WORKERS_SECONDS (Dask would
        wait for one forever); the jobs keep their checkpoints for a resume."""
        if not self.cluster:
            return
        count = self.worker_count()
        now = time.monotonic()
        if count:
            self._empty_since = None
            return
        self._empty_since = self._empty_since or now
        if now - self._empty_since >= NO_WORKERS_SECONDS:
            raise BackendError(
                f"--cluster {self.cluster}: no worker has been there for "
                f"{NO_WORKERS_SECONDS:.0f} s (all lost?); each job keeps its last checkpoint. "
                "Resume once workers are back."
            )

    def worker_count(self) -> int:
        """How many workers the cluster has now."""
        client = getattr(self.executor, "_client", None)
        try:
            return len(client.scheduler_info()["workers"]) if client is not None else 1
        except Exception:  # a scheduler that does not answer has no workers for us
            return 0

    @property
    def sends_back(self) -> bool:
        """Whether a job's files come back from a worker (a cluster's: another disk)."""
        return bool(self.cluster)

    def renew(self) -> None:
        """A fresh pinned pool, in place of one a dead worker broke."""
        self._close()
        pool = pinned_pool(self.workers or 1)
        self.executor, self._close = pool, lambda: pool.shutdown(cancel_futures=True)

    def describe(self) -> str:
        if self.cluster:
            return f"on the Dask cluster at {self.cluster}"
        if self.executor is not None:
            return f"{self.workers} at a time (one core each)"
        return "one after another"

    def close(self, interrupted: bool = False) -> None:
        if interrupted and not self.cluster:
            for child in multiprocessing.active_children():  # each keeps its checkpoint
                child.terminate()
        self._close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        self.close(interrupted=kind is not None and issubclass(kind, KeyboardInterrupt))


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
    # A Ctrl-C reaches the whole process group: the driver stops its workers (SIGTERM, each
    # keeps its last checkpoint), so a worker leaves it to the driver, without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
        client = _bounded(lambda: Client(address, timeout=f"{CONNECT_SECONDS}s"))
    except _NoAnswerError:
        raise ArgumentError(
            f"--cluster {address}: no Dask scheduler answered within {2 * CONNECT_SECONDS} s "
            "(something there took the connection and said nothing)."
        ) from None
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

    try:
        found = _bounded(lambda: client.run(installed))
    except _NoAnswerError:
        client.close(timeout=1)
        raise ArgumentError(
            f"--cluster {address}: its workers did not answer within {2 * CONNECT_SECONDS} s."
        ) from None
    wrong = {worker: v for worker, v in found.items() if v != VERSION}
    if not found or wrong:
        client.close()
        seen = ", ".join(f"{w}: {v or 'no convnet'}" for w, v in wrong.items()) or "no workers"
        raise ArgumentError(
            f"--cluster {address}: expected workers with convnet {VERSION}. Received: {seen}."
        )
    return client.get_executor(), client.close


class _NoAnswerError(TimeoutError):
    pass


def _bounded(call: Callable[[], Any]) -> Any:
    """``call()``, or _NoAnswerError after 2 x CONNECT_SECONDS: Dask's own timeouts do not
    cover a peer that accepts the connection and then says nothing (it waits on). The call
    goes on in a daemon thread that the process does not wait for."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2 * CONNECT_SECONDS)
    if thread.is_alive():
        raise _NoAnswerError(f"no answer within {2 * CONNECT_SECONDS} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
