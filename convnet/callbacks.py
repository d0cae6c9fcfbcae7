"""Callbacks: what a training run does besides training, in Keras's vocabulary.

A callback sees the trainer at the start of a run, at each epoch's start and end (with
that epoch's ``logs``: ``epoch``, ``train_cost``, ``validation_cost``,
``validation_accuracy``, ``test_accuracy``, ``eta``, ``seconds``, ``improved``), after each
compiled call (``images`` trained so far in the epoch), before each evaluation pass and
at the end; ``trainer.stop()``
ends the run after the current epoch. A callback with counters of its own gives them
through ``state_dict`` / ``load_state_dict``: the trainer keeps them in ``trainer.state``,
which checkpoints save (after every callback's ``on_epoch_end``, in ``on_epoch_done``),
so a resumed run decides exactly as an uninterrupted one. Divergence is not a callback:
every run checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convnet.errors import ArgumentError, check_number
from convnet.files import write_bytes

if TYPE_CHECKING:
    from convnet.trainer import Trainer


class Callback:
    """Override any of these; each does nothing by default."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch (of this call: a resumed run starts mid-way)."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Before ``epoch`` trains."""

    def on_batches(self, trainer: Trainer, images: int) -> None:
        """After each compiled call: ``images`` examples of this epoch trained so far."""

    def on_evaluate(self, trainer: Trainer, epoch: int, what: str) -> None:
        """Before an evaluation pass over ``what`` ("validation" or "test") of ``epoch``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        """After ``epoch`` trained and was evaluated."""

    def on_epoch_done(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        """After every callback's ``on_epoch_end``: ``trainer.state`` is the epoch's final
        state, every callback's counters in it (what a checkpoint must save)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, or the one a callback stopped at."""

    def state_dict(self) -> dict[str, Any]:
        """This callback's own counters, as JSON values: the trainer keeps them in
        ``trainer.state`` after every epoch, so every checkpoint saves them. {}: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave (a resumed run), after ``on_train_begin``."""


class EtaSchedule(Callback):
    """The book's schedule: multiply eta by ``factor`` after ``patience`` epochs without
    a better validation accuracy; stop once eta falls below ``min_fraction`` of its start."""

    def __init__(self, patience: int, factor: float = 0.5, min_fraction: float = 1 / 128):
        check_number(patience, "EtaSchedule: patience", integer=True)
        self.patience = int(patience)
        if not 0.0 < factor < 1.0:
            raise ArgumentError(
                f"EtaSchedule: factor: expected 0 < factor < 1. Received: {factor!r}."
            )
        self.factor, self.min_fraction = float(factor), float(min_fraction)
        self.stalled = 0  # epochs without improvement since eta last changed

    def on_train_begin(self, trainer):
        self.stalled = 0

    def state_dict(self):
        return {"stalled": self.stalled}

    def load_state_dict(self, state):
        self.stalled = int(state["stalled"])

    def on_epoch_end(self, trainer, epoch, logs):
        state = trainer.state
        if logs["improved"]:
            self.stalled = 0
            return
        self.stalled += 1
        if self.stalled < self.patience:
            return
        state.eta *= self.factor
        self.stalled = 0
        if state.eta < trainer.eta0 * self.min_fraction:
            trainer.stop(f"eta fell below eta/{round(1 / self.min_fraction)}")
            trainer.say(f"Stopping: {trainer.state.history.stopped}.")
        else:
            trainer.set_eta(state.eta)
            trainer.say(f"No improvement for {self.patience} epochs: eta halved to {state.eta:g}.")


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better validation accuracy (None: never);
    with ``restore_best`` the network ends with its best epoch's weights."""

    def __init__(self, patience: int | None, restore_best: bool = True):
        if patience is not None:
            check_number(patience, "EarlyStopping: patience", integer=True)
        self.patience = patience
        self.restore_best = bool(restore_best)

    def on_train_begin(self, trainer):
        trainer.keep_best_weights = trainer.keep_best_weights or self.restore_best

    def on_epoch_end(self, trainer, epoch, logs):
        if (
            self.patience is None
            or trainer.stopping
            or trainer.state.history.stalled < self.patience
        ):
            return
        trainer.stop(f"early stopping: no improvement for {self.patience} epochs")
        trainer.say(f"Stopping early: no improvement for {self.patience} epochs.")

    def on_train_end(self, trainer):
        if self.restore_best:
            trainer.restore_best()


class ReduceLROnPlateau(Callback):
    """Keras's ``ReduceLROnPlateau``: multiply eta by ``factor`` once ``monitor`` (any
    number in the epoch's logs; a cost is minimised, an accuracy maximised) has not
    improved by more than ``min_delta`` for ``patience`` epochs, then wait ``cooldown``
    epochs before counting again; never below ``min_eta``. Its counters are its own
    (:meth:`state_dict`), so a resumed run reduces eta exactly where an uninterrupted one
    does."""

    def __init__(
        self,
        monitor: str = "validation_cost",
        factor: float = 0.1,
        patience: int = 10,
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_eta: float = 0.0,
    ):
        if not 0.0 < factor < 1.0:
            raise ArgumentError(
                f"ReduceLROnPlateau: factor: expected 0 < factor < 1. Received: {factor!r}."
            )
        check_number(patience, "ReduceLROnPlateau: patience", integer=True)
        check_number(cooldown, "ReduceLROnPlateau: cooldown", integer=True, inclusive=True)
        check_number(min_delta, "ReduceLROnPlateau: min_delta", inclusive=True)
        check_number(min_eta, "ReduceLROnPlateau: min_eta", inclusive=True)
        self.monitor, self.factor = monitor, float(factor)
        self.patience, self.cooldown = int(patience), int(cooldown)
        self.min_delta, self.min_eta = float(min_delta), float(min_eta)
        self.sign = 1.0 if "accuracy" in monitor else -1.0  # compared as sign * value
        self.on_train_begin(None)

    def on_train_begin(self, trainer):
        self.best: float | None = None
        self.wait = 0
        self.cooling = 0

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "cooling": self.cooling}

    def load_state_dict(self, state):
        self.best = None if state["best"] is None else float(state["best"])
        self.wait, self.cooling = int(state["wait"]), int(state["cooling"])

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            numbers = sorted(k for k, v in logs.items() if isinstance(v, int | float))
            raise ArgumentError(
                f"ReduceLROnPlateau: monitor: {self.monitor!r} is not in this run's logs "
                f"(is there validation data?). Expected one of {numbers}."
            )
        score = self.sign * float(value)
        improved = self.best is None or score > self.best + self.min_delta
        if improved:
            self.best, self.wait = score, 0
        if self.cooling:
            self.cooling -= 1
            return
        if improved:
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        eta = max(trainer.state.eta * self.factor, self.min_eta)
        if eta < trainer.state.eta:
            trainer.set_eta(eta)
            trainer.say(f"{self.monitor} flat for {self.patience} epochs: eta reduced to {eta:g}.")
        self.wait, self.cooling = 0, self.cooldown


class CSVLogger(Callback):
    """The history so far as CSV at ``path``, rewritten (atomically) after every epoch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer, epoch, logs):
        text = trainer.state.history.to_csv()
        write_bytes(self.path, text.encode())


class ProgressBar(Callback):
    """A tqdm bar per epoch with images/s and ETA (on terminals by default); it stays up,
    saying so, while the epoch's evaluation passes run."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def on_epoch_begin(self, trainer, epoch):
        from tqdm import tqdm

        self.done = 0
        self.bar = tqdm(
            total=trainer.images_per_epoch,
            unit="img",
            desc=f"Epoch {epoch}",
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
        )

    def on_batches(self, trainer, images):
        if self.bar is not None:
            self.bar.update(images - self.done)
            self.done = images

    def on_evaluate(self, trainer, epoch, what):
        if self.bar is not None:
            self.bar.set_postfix_str(f"evaluating on the {what} set")

    def on_epoch_end(self, trainer, epoch, logs):
        self.on_train_end(trainer)

    def on_train_end(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Position(Callback):
    """Where the run is: the epoch under way, the mini-batches of it done, and the last
    epoch finished (what an interrupted run reports)."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.batches = 0
        self.finished: int | None = None

    def on_epoch_begin(self, trainer, epoch):
        self.epoch, self.batches = epoch, 0

    def on_batches(self, trainer, images):
        self.batches = images // trainer.net.mini_batch_size

    def on_epoch_end(self, trainer, epoch, logs):
        self.finished = epoch


class EpochEndFunction(Callback):
    """Calls ``function(trainer.state)`` after every epoch, once the epoch's state is final
    (``SGD``'s ``on_epoch_end=``)."""

    def __init__(self, function: Any) -> None:
        self.function = function

    def on_epoch_done(self, trainer, epoch, logs):
        self.function(trainer.state)
