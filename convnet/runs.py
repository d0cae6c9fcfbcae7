"""Run folders: what a training run, or an ensemble of them, leaves on disk.

A run folder holds ``model.npz`` + ``model.json`` (the model), ``history.json`` /
``history.csv``, ``checkpoint.npz`` (for ``--resume``) and two pictures; an ensemble's
folder holds one run folder per member (``member-K``) and ``ensemble.json`` (each member's
test accuracy and the vote's). Every file is written atomically, and a folder that already
holds a trained model is never reused unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convnet import checkpoint, files, plots, serialization
from convnet.callbacks import Callback
from convnet.ensemble import vote
from convnet.errors import ArgumentError, DivergenceError
from convnet.history import History
from convnet.network import Network
from convnet.optimizers import Optimizer
from convnet.trainer import TrainingState

Split = tuple[np.ndarray, np.ndarray]
KEPT_FILES = ("model.npz", "checkpoint.npz", "ensemble.json")  # what a new run never replaces


def member_dir(run_dir: Path, index: int, members: int) -> Path:
    """Where ensemble member ``index`` lives (the run folder itself for a single net)."""
    return run_dir if members == 1 else run_dir / f"member-{index}"


def refuse_to_overwrite(run_dir: Path, overwrite: bool) -> None:
    """A new run never replaces a trained model unless asked to."""
    existing = [name for name in KEPT_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ArgumentError(
            f"--out {run_dir}: already holds {', '.join(existing)} from an earlier run. "
            "Use --resume to continue it, another --out, or --overwrite to replace it."
        )


def train(
    net: Network,
    run_dir: Path,
    training: Split,
    validation: Split | None,
    test: Split | None,
    *,
    epochs: int,
    optimizer: Optimizer,
    lmbda: float,
    callbacks: Sequence[Callback] = (),
    shuffle: bool = False,
    verbose: bool = True,
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
        history = net.fit(
            training,
            epochs,
            optimizer=optimizer,
            validation_data=validation,
            test_data=test,
            lmbda=lmbda,
            callbacks=[*callbacks, saver],
            shuffle=shuffle,
            verbose=verbose,
            state=state,
        )
    except DivergenceError:
        serialization.save(net, run_dir, training=details or {}, diverged=net.history.stopped)
        raise
    summary = {
        "best_epoch": history.best_epoch,
        "best_validation_accuracy": history.best_validation_accuracy,
        "final_test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None,
    }
    serialization.save(net, run_dir, training=details or {}, history=summary)
    write_history(run_dir, history)
    plots.curves(history, run_dir / "curves.png")
    if test is not None:
        plots.errors(test[0], test[1], net.predict(test[0]), run_dir / "errors.png")
    return history


def write_history(run_dir: Path, history: History) -> None:
    files.write_json(run_dir / "history.json", history.as_dict())
    files.atomic_write(run_dir / "history.csv", lambda h: h.write(history.to_csv().encode()))


def write_ensemble(run_dir: Path, nets: Sequence[Network], test: Split) -> dict[str, Any]:
    """Each member's test accuracy and the vote's, into ``run_dir/ensemble.json``."""
    probabilities = [net.predict_proba(test[0]) for net in nets]
    accuracies = [float(np.mean(p.argmax(1) == test[1])) for p in probabilities]
    result = {"members": accuracies, "voted": float(np.mean(vote(probabilities) == test[1]))}
    files.write_json(run_dir / "ensemble.json", result)
    return result
