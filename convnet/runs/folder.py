"""Run folders: what a training run, or an ensemble of them, leaves on disk.

A run folder holds ``model.npz`` + ``model.json`` (the model), ``history.json`` /
``history.csv``, ``checkpoint.npz`` (for ``--resume``), two pictures and
``test-probabilities.npz`` (the trained model's answers on the test set, for the vote
without rebuilding the model); an ensemble's
folder holds one run folder per member (``member-K``), ``ensemble-plan.json`` (its
arguments, written before the first member, for ``--resume``) and ``ensemble.json`` (each
member's test accuracy and the vote's). Every file is written atomically, and a folder that already
holds a trained model is never reused unless asked.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from convnet import checkpoint, fields, files, plots, serialization
from convnet.callbacks import Callback
from convnet.ensemble import vote
from convnet.errors import ArgumentError, DivergenceError, ModelFileError
from convnet.history import History
from convnet.network import Network, fit_together_with, load
from convnet.trainer import FitOptions, TrainingState

Split = tuple[np.ndarray, np.ndarray]
LOCK_FILE = ".convnet.lock"
ENSEMBLE_FILE = "ensemble.json"  # the vote, written when every member is trained
PLAN_FILE = "ensemble-plan.json"  # the ensemble's arguments, written before any member
PROBABILITIES_FILE = "test-probabilities.npz"  # with the sha256 of the model.npz they are of
KEPT_FILES = ("model.npz", "checkpoint.npz", ENSEMBLE_FILE, PLAN_FILE)  # never replaced


# What a finished run folder holds (written last to first by _save_trained's end): a run
# whose checkpoint says it is done but lacks one of them is finished by --resume.
FINISHED_FILES = (
    "model.npz", "model.json", "history.json", "history.csv", "curves.png",
    PROBABILITIES_FILE, "errors.png",
)  # fmt: skip


def missing_files(run_dir: Path) -> list[str]:
    """The files of a finished run that ``run_dir`` lacks (none: it is finished)."""
    return [name for name in FINISHED_FILES if not (run_dir / name).is_file()]


def member_dir(run_dir: Path, index: int, members: int) -> Path:
    """Where ensemble member ``index`` lives (the run folder itself for a single net)."""
    return run_dir if members == 1 else inside(run_dir, run_dir / f"member-{index}")


def inside(parent: Path, path: Path) -> Path:
    """``path``, derived inside ``parent`` (a member's or a trial's folder), refused if a
    link takes it elsewhere or it is a file: convnet reads and writes only inside the
    folder it was given."""
    if not path.resolve().is_relative_to(parent.resolve()):
        raise ArgumentError(
            f"{path}: is a link to {path.resolve()}, outside {parent}; convnet reads and "
            "writes only inside the folder it was given. Nothing was read or written there."
        )
    if path.exists() and not path.is_dir():
        raise ArgumentError(
            f"{path}: is a file, not a run folder; move it out of {parent} to go on."
        )
    return path


def special_kind(path: Path) -> str | None:
    """ "a device", "a FIFO" or "a socket" if ``path`` is one (never written over)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):  # fmt: skip
        if test(mode):
            return kind
    return None


def prepare_out(run_dir: Path, overwrite: bool) -> None:
    """Before anything trains: ``run_dir`` is (or can be made) a folder this process can
    write in, and holds no trained model unless ``overwrite``."""
    kind = special_kind(run_dir)
    if kind or (run_dir.exists() and not run_dir.is_dir()):
        raise ArgumentError(
            f"--out {run_dir}: is {kind or 'a file'}, not a folder; nothing was trained."
        )
    existing = [name for name in KEPT_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ArgumentError(
            f"--out {run_dir}: already holds {', '.join(existing)} from an earlier run. "
            "Use --resume to continue it, another --out, or --overwrite to replace it."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise ArgumentError(
            f"--out {run_dir}: this folder cannot be written ({exc.strerror or exc}); "
            "nothing was trained. Choose another --out."
        ) from None


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process: a second convnet writing the same folder is
    refused, naming the first's process id, instead of silently replacing its model.

    An ``flock`` on ``run_dir/.convnet.lock``, which holds the owner's pid; the kernel
    drops the lock when the process ends, even by kill -9, so a stale file never blocks.
    """
    try:
        handle = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ArgumentError(
            f"{run_dir}: cannot take the run folder's lock ({exc.strerror or exc})."
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            raise ArgumentError(
                f"{run_dir}: another convnet (process {owner}) is training into this folder. "
                "Wait for it to finish, or use another --out."
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(handle)  # releases the lock


def train(
    net: Network,
    run_dir: Path,
    training: Split,
    validation: Split | None,
    test: Split | None,
    *,
    options: FitOptions,
    callbacks: Sequence[Callback] = (),
    state: TrainingState | None = None,
    arguments: dict[str, Any] | None = None,
    checkpoint_every: int = 1,
    details: dict[str, Any] | None = None,
) -> History:
    """Train ``net`` into ``run_dir``: a checkpoint every ``checkpoint_every`` epochs (with
    the run's ``arguments``, for ``--resume``), then the model (with ``details``), the
    history and the pictures. A run that diverges keeps its last good weights on disk."""
    saver = checkpoint.ModelCheckpoint(run_dir, checkpoint_every, arguments)
    try:
        history = net.fit_with(
            options, training, validation, test, callbacks=[*callbacks, saver], state=state
        )
    except DivergenceError:
        serialization.save(net, run_dir, training=details or {}, diverged=net.history.stopped)
        raise
    _save_trained(net, run_dir, history, test, details, options.verbose)
    return history


def train_together(
    nets: Sequence[Network],
    run_dirs: Sequence[Path],
    training: Split,
    validation: Split | None,
    test: Split | None,
    *,
    options: FitOptions,
    callbacks: Sequence[Sequence[Callback]],
    states: Sequence[TrainingState | None] | None = None,
    arguments: Sequence[dict[str, Any]],
    checkpoint_every: int = 1,
    details: Sequence[dict[str, Any]],
) -> list[History]:
    """:func:`train` for several networks trained as one program
    (:func:`convnet.network.fit_together`): each into its own run folder, with the same
    files :func:`train` writes. A member that diverges keeps its last good weights on
    disk; the others keep their checkpoints."""
    savers = [
        checkpoint.ModelCheckpoint(run_dir, checkpoint_every, args)
        for run_dir, args in zip(run_dirs, arguments, strict=True)
    ]
    try:
        histories = fit_together_with(
            nets, options, training, validation, test,
            callbacks=[[*own, saver] for own, saver in zip(callbacks, savers, strict=True)],
            states=states,
        )  # fmt: skip
    except DivergenceError:
        for net, run_dir, about in zip(nets, run_dirs, details, strict=True):
            stopped = net.history.stopped if net.history is not None else None
            if stopped and stopped.startswith("diverged"):
                serialization.save(net, run_dir, training=about, diverged=stopped)
        raise
    for net, run_dir, history, about in zip(nets, run_dirs, histories, details, strict=True):
        _save_trained(net, run_dir, history, test, about, options.verbose)
    return histories


def _save_trained(
    net: Network,
    run_dir: Path,
    history: History,
    test: Split | None,
    details: dict[str, Any] | None,
    verbose: bool,
) -> None:
    """A trained network's files: the model (with ``details``), history, pictures and
    test-set probabilities."""
    if verbose:
        print(f"Saving the model, history and pictures in {run_dir}", flush=True)
    summary = {
        "best_epoch": history.best_epoch,
        "best_validation_accuracy": history.best_validation_accuracy,
        "final_test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None,
    }
    serialization.save(net, run_dir, training=details or {}, history=summary)
    write_history(run_dir, history)
    plots.curves(history, run_dir / "curves.png")
    if test is not None:
        probabilities = net.predict_proba(test[0])
        write_probabilities(run_dir, probabilities)
        plots.errors(test[0], test[1], probabilities.argmax(1), run_dir / "errors.png")


def _model_digest(run_dir: Path) -> str:
    return hashlib.sha256(serialization.model_paths(run_dir)[0].read_bytes()).hexdigest()


def write_probabilities(run_dir: Path, probabilities: np.ndarray) -> None:
    """The test set's class probabilities beside the model they came from (its digest)."""
    digest = np.array(_model_digest(run_dir))
    buffer = io.BytesIO()
    np.savez(buffer, test=probabilities.astype(np.float32), model_sha256=digest)
    files.write_bytes(run_dir / PROBABILITIES_FILE, buffer.getvalue())


def test_probabilities(
    run_dir: Path, test: Split, *, backend: str | None = None, device: str | None = None
) -> np.ndarray:
    """The model's class probabilities on ``test``: read back when ``run_dir`` holds them
    for exactly this model and test set, else computed from the model (a folder from an
    older convnet, or one whose model changed after them)."""
    try:
        stored = fields.read_npz(run_dir / PROBABILITIES_FILE, "test-set probabilities")
        kept, digest = stored["test"], str(stored["model_sha256"])
        if (
            kept.ndim == 2
            and kept.dtype == np.float32
            and len(kept) == len(test[1])
            and np.isfinite(kept).all()
            and digest == _model_digest(run_dir)
        ):
            return kept
    except (ModelFileError, KeyError, OSError):
        pass
    return load(run_dir, backend=backend, device=device).predict_proba(test[0])


def write_history(run_dir: Path, history: History) -> None:
    files.write_json(run_dir / "history.json", history.as_dict())
    files.write_bytes(run_dir / "history.csv", history.to_csv().encode())


def write_ensemble(
    run_dir: Path,
    members: int,
    test: Split,
    *,
    backend: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Each member's test accuracy and the vote's, into ``run_dir/ensemble.json``."""
    probabilities = [
        test_probabilities(member_dir(run_dir, k, members), test, backend=backend, device=device)
        for k in range(members)
    ]
    accuracies = [float(np.mean(p.argmax(1) == test[1])) for p in probabilities]
    result = {"members": accuracies, "voted": float(np.mean(vote(probabilities) == test[1]))}
    files.write_json(run_dir / ENSEMBLE_FILE, result)
    return result


def is_ensemble(path: Path) -> bool:
    marked = (path / ENSEMBLE_FILE).is_file() or (path / PLAN_FILE).is_file()
    return marked and not (path / "model.json").exists()


def write_plan(run_dir: Path, arguments: dict[str, Any], members: int) -> None:
    """What ``--resume`` needs to finish an ensemble interrupted before its vote."""
    files.write_json(run_dir / PLAN_FILE, {"members": members, "arguments": arguments})


def read_plan(run_dir: Path) -> tuple[int, fields.Fields]:
    """(members, the arguments the ensemble was started with), checked."""
    plan = fields.read_json(
        run_dir / PLAN_FILE, "ensemble plan", hint=" Only ensembles started by this convnet resume."
    )
    return plan.integer("members", low=2, high=10_000), plan.record("arguments")


def load_models(
    path: str | os.PathLike[str],
    member: int | None = None,
    *,
    backend: str | None = None,
    device: str | None = None,
) -> list[Network]:
    """The model at ``path``; for an ensemble's folder every member (their vote is the
    ensemble's answer), or member ``member`` alone."""
    path = Path(path)
    if not is_ensemble(path):
        net = load(path, backend=backend, device=device)  # names a missing or damaged file
        if member is not None:
            raise ArgumentError(f"--member {member}: {path} is a single model, not an ensemble.")
        return [net]
    result = fields.read_json(path / ENSEMBLE_FILE, "ensemble record")
    count = len(result.column("members", nullable=False))
    result.number("voted", low=0, high=1)
    if count < 1:
        result.fail("members", "one test accuracy per member", [])
    if member is not None and not 0 <= member < count:
        raise ArgumentError(
            f"--member: expected a member of {path} (0 to {count - 1}). Received: {member}."
        )
    chosen = range(count) if member is None else [member]
    folders = [member_dir(path, k, count) for k in chosen]
    for folder in folders:
        if not folder.is_dir():
            raise ModelFileError(
                f"{folder}: missing; {path / ENSEMBLE_FILE} lists {count} members."
            )
    nets = [load(folder, backend=backend, device=device) for folder in folders]
    for folder, net in zip(folders, nets, strict=True):
        if (net.n_in, net.n_classes) != (nets[0].n_in, nets[0].n_classes):
            raise ModelFileError(
                f"{folder}: expected a member like {folders[0].name} ({nets[0].n_in} inputs, "
                f"{nets[0].n_classes} classes). Received: {net.n_in} inputs, "
                f"{net.n_classes} classes."
            )
    return nets
