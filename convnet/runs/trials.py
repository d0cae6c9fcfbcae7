"""Many independent trainings, each a run folder under one parent: what ``convnet sweep``
and the chapter-6 table are made of.

A trial is a run folder trained with ``convnet train``'s flags, by the one scheduler
(:mod:`convnet.runs.jobs`: a pinned pool, a Dask cluster, or one after another here).
What a folder holds says where its trial stands, so running the same trials again trains
only the missing, unfinished and failed ones. A trial that fails is recorded with its
reason and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convnet import checkpoint, fields, files
from convnet.errors import DivergenceError
from convnet.runs import folder as run_folder
from convnet.runs import jobs
from convnet.runs import train as training

FAILED_FILE = "failed.json"  # why the trial's last attempt failed, and whether to retry
TRIAL_FILE = "trial.json"  # where and how long its last attempt trained


@dataclass(frozen=True)
class Trial:
    """One run folder to train: ``parent/name``, with ``convnet train``'s flags."""

    name: str
    arguments: dict[str, Any]


def status(folder: Path) -> str:
    """``"finished"``, ``"unfinished"`` (a checkpoint to resume), ``"failed"`` (retried
    on the next run), ``"diverged"`` (not retried: its seeds would diverge again) or
    ``"new"``. A trial folder that is a link out of its sweep's folder is refused."""
    run_folder.inside(folder.parent, folder)
    if (folder / FAILED_FILE).exists():
        failure = fields.read_json(folder / FAILED_FILE, "trial failure record")
        return "failed" if failure.flag("retry") else "diverged"
    if not run_folder.missing_files(folder) and (folder / TRIAL_FILE).exists():
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


def run(
    trials: Sequence[Trial],
    parent: Path,
    workers: jobs.Workers,
    on_done: Callable[[Trial, dict[str, Any], str], None],
) -> None:
    """Train each trial of ``trials`` not yet finished (nor diverged) into
    ``parent/name`` on ``workers`` (:func:`convnet.runs.jobs.run`); a trial that fails
    leaves ``failed.json`` (a diverged one marked not to retry) and the others go on.
    ``on_done(trial, summary, "K of N ended")`` as each one ends, finished or failed."""
    todo = [t for t in trials if status(parent / t.name) not in ("finished", "diverged")]
    by_folder = {run_folder.inside(parent, parent / t.name): t for t in todo}
    for folder in by_folder:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FAILED_FILE).unlink(missing_ok=True)
    ended = 0

    def report(job: jobs.Job) -> None:
        nonlocal ended
        ended += 1
        on_done(by_folder[job.folder], summary(job.folder), f"{ended} of {len(todo)} ended")

    def finished(job: jobs.Job, result: dict[str, Any]) -> None:
        files.write_json(
            job.folder / TRIAL_FILE,
            {"host": result["host"], "seconds": round(result["seconds"], 3)},
        )
        report(job)

    def failed(job: jobs.Job, exc: Exception) -> bool:
        reason = f"{type(exc).__name__}: {exc}"
        retry = not isinstance(exc, DivergenceError)
        files.write_json(job.folder / FAILED_FILE, {"reason": reason, "retry": retry})
        report(job)
        return True

    trial_jobs = [
        jobs.Job(folder, dict(t.arguments) | {"quiet": True, "out": str(folder)})
        for folder, t in by_folder.items()
    ]
    jobs.run(trial_jobs, workers, training.train_member, on_done=finished, on_failure=failed)
