"""Many independent trainings, each a run folder under one parent: what ``convnet sweep``
and the chapter-6 table are made of.

A trial is a run folder trained with ``convnet train``'s flags, on the pinned pool of
:mod:`convnet.runs.jobs`, on a Dask cluster's executor, or one after another here. What a
folder holds says where its trial stands, so running the same trials again trains only
the missing, unfinished and failed ones. A trial that fails is recorded with its reason
and the others go on. A local worker that dies (kill -9, out of memory) breaks its pool:
the trials it held are trained again in a fresh pool, from their last checkpoints; a
Dask cluster reschedules them itself.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convnet import checkpoint, fields, files
from convnet.errors import DivergenceError
from convnet.runs import jobs
from convnet.runs import train as training

FAILED_FILE = "failed.json"  # why the trial's last attempt failed, and whether to retry
TRIAL_FILE = "trial.json"  # where and how long its last attempt trained
ATTEMPTS = 3  # a trial whose worker died this many times in a row is recorded as failed


@dataclass(frozen=True)
class Trial:
    """One run folder to train: ``parent/name``, with ``convnet train``'s flags."""

    name: str
    arguments: dict[str, Any]


def status(folder: Path) -> str:
    """``"finished"``, ``"unfinished"`` (a checkpoint to resume), ``"failed"`` (retried
    on the next run), ``"diverged"`` (not retried: its seeds would diverge again) or
    ``"new"``."""
    if (folder / FAILED_FILE).exists():
        failure = fields.read_json(folder / FAILED_FILE, "trial failure record")
        return "failed" if failure.flag("retry") else "diverged"
    if (folder / "model.json").exists() and (folder / "history.json").exists():
        return "finished"
    if checkpoint.path_in(folder).exists():
        return "unfinished"
    return "new"


def summary(folder: Path) -> dict[str, Any]:
    """What a trial's folder says of it: its status and reason, best validation accuracy
    and its epoch, the test accuracy there and at the last epoch, seconds, worker host."""
    row: dict[str, Any] = {"status": status(folder), "reason": None, "host": None}
    if (folder / FAILED_FILE).exists():
        row["reason"] = fields.read_json(folder / FAILED_FILE, "trial failure record").text(
            "reason"
        )
    if (folder / TRIAL_FILE).exists():
        row["host"] = fields.read_json(folder / TRIAL_FILE, "trial record").text("host")
    if row["status"] != "finished":
        return row | dict.fromkeys(
            (
                "epochs",
                "best_validation_accuracy",
                "best_epoch",
                "test_accuracy_at_best",
                "final_test_accuracy",
                "seconds",
            )
        )
    history = fields.history(fields.read_json(folder / "history.json", "history"))
    return row | {
        "epochs": len(history.epoch),
        "best_validation_accuracy": history.best_validation_accuracy,
        "best_epoch": history.best_epoch,
        "test_accuracy_at_best": history.test_accuracy_at_best,
        "final_test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None,
        "seconds": round(sum(history.seconds), 3),
    }


def train_trial(
    arguments: dict[str, Any], folder: str, send_back: bool, resume_from: bytes | None
) -> dict[str, Any]:
    """One trial, in a worker (or this process): trains ``folder`` quietly, from its
    checkpoint when it has one. Returns the worker's host, the attempt's seconds and, with
    ``send_back`` (a cluster's worker, whose disk is not the driver's), the files made."""
    start = time.perf_counter()
    _, made = training.train_member(arguments, folder, send_back, resume_from)
    return {"host": socket.gethostname(), "seconds": time.perf_counter() - start, "files": made}


class Workers:
    """Where trials train: ``workers`` pinned local processes (a fresh pool when one
    dies), a Dask cluster at ``cluster``, or neither: one after another in this process.
    Made, and a cluster checked, before anything is written."""

    def __init__(self, workers: int | None = None, cluster: str | None = None) -> None:
        self.workers, self.cluster = workers, cluster
        self.executor: Executor | None = None
        self._close: Callable[[], None] = lambda: None
        if cluster:
            self.executor, self._close = jobs.cluster_executor(cluster)
        elif workers is not None and workers > 1:
            self.renew()
        elif workers is not None:
            jobs.pinned_pool(workers).shutdown()  # checks --workers as the pool does

    def renew(self) -> None:
        """A fresh pinned pool, in place of one a dead worker broke."""
        self._close()
        pool = jobs.pinned_pool(self.workers or 1)
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


@contextmanager
def _recording(folder: Path) -> Iterator[None]:
    """A failed attempt leaves ``failed.json`` (a diverged one marked not to retry)."""
    try:
        yield
    except (KeyboardInterrupt, training.RunInterruptedError):
        raise
    except Exception as exc:  # the trial fails, the others go on
        reason = f"{type(exc).__name__}: {exc}"
        retry = not isinstance(exc, DivergenceError)
        files.write_json(folder / FAILED_FILE, {"reason": reason, "retry": retry})


def run(
    trials: Sequence[Trial],
    parent: Path,
    workers: Workers,
    on_done: Callable[[Trial, dict[str, Any], str], None],
) -> None:
    """Train each trial of ``trials`` not yet finished (nor diverged) into
    ``parent/name``; ``on_done(trial, summary, "K of N ended")`` as each one ends,
    finished or failed."""
    todo = [t for t in trials if status(parent / t.name) not in ("finished", "diverged")]
    total, ended = len(todo), 0

    def done(trial: Trial) -> None:
        nonlocal ended
        ended += 1
        on_done(trial, summary(parent / trial.name), f"{ended} of {total} ended")

    for trial in todo:
        (parent / trial.name).mkdir(parents=True, exist_ok=True)
    if workers.executor is None:
        for trial in todo:
            folder = parent / trial.name
            with _recording(folder):
                _start(folder)
                _finish(folder, train_trial(*_task(trial, folder, send_back=False)))
            done(trial)
        return
    deaths = dict.fromkeys((t.name for t in todo), 0)
    while todo:
        assert workers.executor is not None
        send_back = bool(workers.cluster)
        futures: dict[Future, Trial] = {}
        for trial in todo:
            folder = parent / trial.name
            _start(folder)
            futures[workers.executor.submit(train_trial, *_task(trial, folder, send_back))] = trial
        todo = []
        for future in as_completed(futures):
            trial = futures[future]
            folder = parent / trial.name
            with _recording(folder):
                try:
                    result = future.result()
                except BrokenExecutor:
                    deaths[trial.name] += 1
                    if deaths[trial.name] < ATTEMPTS:
                        todo.append(trial)  # again, from its checkpoint, in a fresh pool
                        continue
                    raise RuntimeError(f"its worker process died {ATTEMPTS} times") from None
                _finish(folder, result)
            done(trial)
        if todo:
            workers.renew()


def _start(folder: Path) -> None:
    (folder / FAILED_FILE).unlink(missing_ok=True)


def _task(trial: Trial, folder: Path, send_back: bool) -> tuple:
    """``train_trial``'s arguments: resumed from the checkpoint when there is one."""
    saved = checkpoint.path_in(folder)
    arguments = dict(trial.arguments) | {"quiet": True, "out": str(folder)}
    resume_from = saved.read_bytes() if send_back and saved.exists() else None
    if saved.exists() and not send_back:
        arguments["resume_member"] = True
    return arguments, str(folder), send_back, resume_from


def _finish(folder: Path, result: dict[str, Any]) -> None:
    for name, content in result["files"].items():
        files.atomic_write(folder / name, lambda h, c=content: h.write(c))
    files.write_json(
        folder / TRIAL_FILE, {"host": result["host"], "seconds": round(result["seconds"], 3)}
    )
