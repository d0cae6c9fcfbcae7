"""The epoch loop, for one network or several trained as one program: network3's
algorithm and printout; callbacks do the rest.

Beyond the book: every example is trained on and evaluated, a ``History`` is kept, the
optimizer is a parameter (:mod:`convnet.optimizers`), divergence is caught with the exact
mini-batch named, and a :class:`TrainingState` holds everything needed to resume a run bit
for bit. Early stopping, the learning-rate schedule, checkpoints, CSV logs and the progress
bar are callbacks (:mod:`convnet.callbacks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from convnet import interrupts
from convnet.callbacks import Callback
from convnet.errors import ArgumentError, DivergenceError, check_number
from convnet.history import History
from convnet.optimizers import Optimizer

if TYPE_CHECKING:
    from convnet.lockstep import Lockstep
    from convnet.model import DeviceData, Model


@dataclass
class TrainingState:
    """Where a run stands between epochs: enough to resume it exactly."""

    epoch: int = 0  # the next epoch to run
    eta: float = 0.0
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # their state_dicts
    shuffle_rng: dict[str, Any] | None = None
    history: History = field(default_factory=History)
    best_weights: list[np.ndarray] | None = None
    optimizer_state: list[np.ndarray] | None = None
    step: int = 0


@dataclass(frozen=True)
class FitOptions:
    """How a run trains, checked once: what ``fit``, ``SGD``, ``fit_together`` and the
    run folders pass down to the trainer (one object, not the same keywords re-spelled)."""

    epochs: int
    optimizer: Optimizer
    lmbda: float = 0.0
    shuffle: bool = False
    verbose: bool = True
    steps_per_call: int | None = None  # None: the backend's measured choice
    micro_batch: int | None = None  # None: the backend's measured choice

    def __post_init__(self) -> None:
        check_number(self.epochs, "epochs", integer=True)
        check_number(self.lmbda, "lmbda", inclusive=True)
        for value, what in (
            (self.steps_per_call, "steps_per_call"),
            (self.micro_batch, "micro_batch"),
        ):
            if value is not None:
                check_number(value, what, integer=True)
        if not isinstance(self.optimizer, Optimizer):
            raise ArgumentError(
                "optimizer: expected a convnet.optimizers optimizer, e.g. "
                f"optimizers.SGD(eta=0.1). Received: {self.optimizer!r}."
            )


def callback_keys(callbacks: Sequence[Callback]) -> dict[str, Callback]:
    """Each callback by the name its state is kept under: its class's, with ``#2``,
    ``#3`` ... for a second and third of one class."""
    keys: dict[str, Callback] = {}
    for callback in callbacks:
        name = type(callback).__name__
        key, k = name, 1
        while key in keys:
            k += 1
            key = f"{name}#{k}"
        keys[key] = callback
    return keys


def batch_order(n: int, mini_batch_size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Example indices for one epoch, padded to whole mini-batches.

    network3 silently dropped a final partial mini-batch; here it is filled with the
    epoch's first examples so every example is trained on and shapes stay static.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    short = -n % mini_batch_size
    return np.concatenate([order, order[:short]]).astype(np.int64)


def chunk_size(num_batches: int, limit: int) -> int:
    """Steps per compiled call: a divisor of ``num_batches`` near ``limit`` if one exists,
    so that one compiled function covers the epoch; else ``limit`` (plus a remainder)."""
    limit = max(1, min(limit, num_batches))
    for size in range(limit, limit // 2, -1):
        if num_batches % size == 0:
            return size
    return limit


def epoch_calls(num_batches: int, limit: int, compile_steps: Any) -> list[tuple[Any, Any, int]]:
    """(function, first mini-batch, steps) for each compiled call of an epoch: steps of
    :func:`chunk_size`, and one call for the rest; ``compile_steps(n)`` compiles n steps.

    (0-d int64 arrays are passed to the functions: compiled functions trust their input.)
    """
    size = chunk_size(num_batches, limit)
    whole = num_batches - num_batches % size
    chunk = compile_steps(size)
    calls = [(chunk, np.array(i, dtype=np.int64), size) for i in range(0, whole, size)]
    if whole < num_batches:
        rest = num_batches - whole
        calls.append((compile_steps(rest), np.array(whole, dtype=np.int64), rest))
    return calls


class Trainer:
    """One training run: compiled functions, device state, the epoch loop, callbacks."""

    def __init__(
        self,
        net: Model,
        train: DeviceData,
        validation: DeviceData | None,
        test: DeviceData | None,
        options: FitOptions,
        *,
        callbacks: Sequence[Callback] = (),
        state: TrainingState | None = None,
        own_steps: bool = True,
        label: str = "",
    ) -> None:
        """``own_steps=False``: the steps are run by another program (one that trains
        several networks at once, :func:`convnet.network.fit_together`), so none is
        compiled here. ``label`` starts every line this trainer prints."""
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise ArgumentError(
                    f"callbacks[{index}]: expected a convnet.callbacks.Callback. "
                    f"Received: {callback!r}."
                )
        self.net, self.train, self.validation, self.test = net, train, validation, test
        self.options = options
        self.epochs, self.optimizer, self.lmbda = options.epochs, options.optimizer, options.lmbda
        self.callbacks, self.verbose, self.label = list(callbacks), options.verbose, label
        self.keep_best_weights = False  # callbacks that restore the best epoch set it
        self.stopping = False
        backend, mbs = net.backend, net.mini_batch_size
        self.state = state or TrainingState(eta=self.eta0)
        self.rng = np.random.default_rng(net.seed) if options.shuffle else None
        if self.rng is not None and self.state.shuffle_rng is not None:
            self.rng.bit_generator.state = self.state.shuffle_rng
        self.order = backend.shared(batch_order(train.n, mbs, None), "order")
        self.eta = backend.shared(np.float32(self.state.eta), "eta")
        self.cost_sum = backend.shared(np.float32(0.0), "cost_sum")
        shapes = [p.type.shape for p in net.params]
        optimizer = options.optimizer
        fresh = optimizer.initial_state(shapes)
        starts = self.state.optimizer_state or fresh
        labels = optimizer.state_labels([p.name for p in net.params])
        if [np.shape(v) for v in starts] != [v.shape for v in fresh]:
            raise ArgumentError(
                f"optimizer state: {optimizer.name} keeps {len(labels)} arrays of shapes "
                f"{[v.shape for v in fresh]}. Received: {len(starts)} of shapes "
                f"{[np.shape(v) for v in starts]} (a checkpoint of another optimizer?)."
            )
        self.optimizer_state = [
            backend.shared(np.asarray(v, np.float32), f"opt_{label}")
            for v, label in zip(starts, labels, strict=True)
        ]
        net.step.set_value(np.int64(self.state.step))
        self.num_batches = len(self.order.get_value(borrow=True)) // mbs
        self.images_per_epoch = self.num_batches * mbs
        self.micro_batch = options.micro_batch
        self._one_step: Any = None  # compiled on first use, repeated by the calls

        start = time.perf_counter()
        what = "training step" if own_steps else "evaluation"
        self.say(f"Compiling the {what} on {backend.describe()} (cached after the first run)")
        limit = options.steps_per_call or backend.steps_per_call
        self.calls = epoch_calls(self.num_batches, limit, self._step_function) if own_steps else []
        for dataset in (validation, test):
            if dataset is not None:
                net.evaluation_function(dataset)  # compiled now, so the timing line is honest
        self.say(f"Compiled in {time.perf_counter() - start:.1f} s")

    def _step_function(self, steps: int) -> Any:
        """The compiled call that runs ``steps`` optimizer steps from a mini-batch index."""
        if self._one_step is None:
            self._one_step = self.net.train_function(
                self.train,
                self.order,
                self.eta,
                self.lmbda,
                self.cost_sum,
                self.optimizer,
                self.optimizer_state,
                self.micro_batch,
            )
        return self.net.backend.repeat(self._one_step, steps)

    # -- what callbacks use -----------------------------------------------------------
    @property
    def eta0(self) -> float:
        """The step size the run started with (the optimizer's); ``state.eta`` is now's."""
        return float(self.options.optimizer.eta)

    def say(self, line: str) -> None:
        if self.verbose:
            print(f"{self.label}{line}", flush=True)

    def stop(self, reason: str = "stopped by a callback") -> None:
        """End the run after the current epoch; ``reason`` goes to ``history.stopped``."""
        self.stopping = True
        self.state.history.stopped = reason

    def set_eta(self, eta: float) -> None:
        """The step size from the next step on (``state.eta`` too)."""
        self.state.eta = float(eta)
        self._set(self.eta, np.float32(eta))

    def restore_best(self) -> None:
        """Put back the best epoch's weights, if another epoch came after it."""
        history, best = self.state.history, self.state.best_weights
        if best is not None and history.epoch and history.best_epoch != history.epoch[-1]:
            self.net.set_weights(best)
            self.say(f"Restored the weights of epoch {history.best_epoch}, the best one.")

    # -- state ------------------------------------------------------------------------
    def _set(self, variable: Any, value: np.ndarray | np.generic) -> None:
        variable.set_value(value)
        self.net.backend.place(variable)

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        state = [np.array(np.asarray(v.get_value(borrow=True))) for v in self.optimizer_state]
        return self.net.get_weights(), state, int(np.asarray(self.net.step.get_value()))

    def restore(self, snap: tuple[list[np.ndarray], list[np.ndarray], int]) -> None:
        weights, state, step = snap
        self.net.step.set_value(np.int64(step))
        self.net.set_weights(weights)
        for variable, value in zip(self.optimizer_state, state, strict=True):
            self._set(variable, value)

    def take_steps(
        self,
        weights: Sequence[np.ndarray],
        optimizer_state: Sequence[np.ndarray],
        step: int,
        cost_sum: float,
    ) -> None:
        """Where an epoch's steps that another program ran (:func:`convnet.network.
        fit_together`) left this run: weights, optimizer state, step counter, cost sum."""
        self.net.step.set_value(np.int64(step))
        self.net.set_weights(weights)
        for variable, value in zip(self.optimizer_state, optimizer_state, strict=True):
            self._set(variable, np.asarray(value, np.float32))
        self._set(self.cost_sum, np.float32(cost_sum))

    def _sync_state(self) -> None:
        _, optimizer_state, step = self.snapshot()
        self.state.optimizer_state = optimizer_state or None
        self.state.step = step
        rng = self.rng
        self.state.shuffle_rng = dict(rng.bit_generator.state) if rng is not None else None

    def _keep_callback_states(self) -> None:
        kept = {key: c.state_dict() for key, c in callback_keys(self.callbacks).items()}
        self.state.callbacks = {key: value for key, value in kept.items() if value}

    # -- the loop ---------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> Any:
        """The epoch's order and cost sum set; returns the state to roll back to."""
        if self.rng is not None:
            self._set(self.order, batch_order(self.train.n, self.net.mini_batch_size, self.rng))
        self._set(self.cost_sum, np.float32(0.0))
        before = self.snapshot()
        self._notify("on_epoch_begin", epoch)
        return before

    def batches_done(self, images: int) -> None:
        self._notify("on_batches", images)

    def epoch_cost(self, epoch: int, before: Any) -> float:
        """The epoch's mean training cost; a cost that is not finite ends the run."""
        total = float(np.asarray(self.cost_sum.get_value(borrow=True)))
        if not math.isfinite(total):
            self._diverged(epoch, before)
        return total / self.num_batches

    def run_epoch(self, epoch: int) -> tuple[float, float]:
        before = self.start_epoch(epoch)
        tick = time.perf_counter()
        done = 0
        self.net.device_copies.push()
        try:
            for function, index, steps in self.calls:
                function(index)
                interrupts.check()
                done += steps * self.net.mini_batch_size
                self.batches_done(done)
        finally:  # interrupted too: the user then sees the weights convnet has
            self.net.device_copies.pull()
        seconds = time.perf_counter() - tick
        return self.epoch_cost(epoch, before), seconds

    def _diverged(self, epoch: int, before: Any) -> None:
        """Replay the epoch one step at a time to name the mini-batch, then roll back.

        The culprit is the first step whose cost *or* updated weights are not finite
        (a huge gradient can leave a finite cost but infinite weights).
        """
        self.restore(before)
        self._set(self.cost_sum, np.float32(0.0))
        bad = self.num_batches - 1
        single = self._step_function(1)
        for k in range(self.num_batches):
            single(np.array(k, dtype=np.int64))
            self.net.device_copies.pull()
            cost = float(np.asarray(self.cost_sum.get_value(borrow=True)))
            if not math.isfinite(cost) or not all(
                np.isfinite(w).all() for w in self.net.get_weights()
            ):
                bad = k
                break
        self.restore(before)
        self.state.history.stopped = f"diverged at epoch {epoch}, mini-batch {bad}"
        raise DivergenceError(
            f"Training diverged at epoch {epoch}, mini-batch {bad}: the cost or the weights "
            f"became NaN or infinite (eta={self.state.eta:g}). The weights from before that "
            "epoch were restored. Try a smaller eta."
        )

    def _notify(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _evaluate(
        self, epoch: int, what: str, data: DeviceData | None
    ) -> tuple[float | None, float | None]:
        if data is None:
            return None, None
        self._notify("on_evaluate", epoch, what)
        accuracy, cost = self.net.evaluate(data, lmbda=self.lmbda, n_train=self.train.n)
        return accuracy, cost

    def begin(self) -> None:
        self.net.history = self.state.history
        self._notify("on_train_begin")
        for key, callback in callback_keys(self.callbacks).items():
            if key not in self.state.callbacks:
                continue
            try:
                callback.load_state_dict(self.state.callbacks[key])
            except (KeyError, TypeError, ValueError) as exc:
                raise ArgumentError(
                    f"callbacks: {key} could not take back its state "
                    f"{self.state.callbacks[key]!r} from the run being resumed ({exc!r})."
                ) from None

    def end_epoch(self, epoch: int, mean_cost: float, seconds: float) -> None:
        """After the epoch's steps: evaluation, the history, the callbacks."""
        state, history = self.state, self.state.history
        val_acc, val_cost = self._evaluate(epoch, "validation", self.validation)
        test_acc, _ = self._evaluate(epoch, "test", self.test)
        logs = {
            "epoch": epoch,
            "train_cost": mean_cost,
            "validation_cost": val_cost,
            "validation_accuracy": val_acc,
            "test_accuracy": test_acc,
            "eta": state.eta,
            "seconds": seconds,
        }
        history.record(logs)
        if val_acc is not None:
            self.say(
                f"Epoch {epoch}: validation accuracy {val_acc:.2%} "
                f"(cost {mean_cost:.4f}, {seconds:.1f} s)"
            )
        else:
            self.say(f"Epoch {epoch}: training cost {mean_cost:.4f} ({seconds:.1f} s)")
        logs["improved"] = self._track_best(val_acc, test_acc)
        state.epoch = epoch + 1
        self._sync_state()
        self._notify("on_epoch_end", epoch, logs)
        self._keep_callback_states()
        self._notify("on_epoch_done", epoch, logs)

    def end(self) -> History:
        self._notify("on_train_end")
        self._finish()
        return self.state.history

    def run(self) -> History:
        self.begin()
        with self.net.backend.threads():
            for epoch in range(self.state.epoch, self.epochs):
                mean_cost, seconds = self.run_epoch(epoch)
                self.end_epoch(epoch, mean_cost, seconds)
                if self.stopping:
                    break
        return self.end()

    def _track_best(self, val_acc: float | None, test_acc: float | None) -> bool:
        """True if the epoch just logged is the best so far (the book's printout)."""
        history = self.state.history
        if history.stalled:
            return False
        if self.keep_best_weights:
            self.state.best_weights = self.net.get_weights()
        if val_acc is not None:
            self.say("This is the best validation accuracy to date.")
            if test_acc is not None:
                self.say(f"The corresponding test accuracy is {test_acc:.2%}")
        return True

    def _finish(self) -> None:
        history = self.state.history
        self.say("Finished training network.")
        if history.best_validation_accuracy is not None and history.best_epoch is not None:
            iteration = (history.best_epoch + 1) * self.num_batches - 1
            self.say(
                f"Best validation accuracy of {history.best_validation_accuracy:.2%} "
                f"obtained at iteration {iteration}"
            )
        if history.test_accuracy_at_best is not None:
            self.say(f"Corresponding test accuracy of {history.test_accuracy_at_best:.2%}")


class TogetherLoop:
    """The epoch loop of several networks trained as one program
    (:func:`convnet.network.fit_together`): the program's steps, then each member's own
    trainer (evaluation, history, callbacks) as after its own epoch."""

    def __init__(
        self,
        program: Lockstep,
        trainers: list[Trainer],
        train: DeviceData,
    ) -> None:
        first = trainers[0]
        where = [(t.state.epoch, t.state.step) for t in trainers]
        if len(set(where)) > 1:
            raise ArgumentError(
                "states: networks trained as one program must stand at the same epoch and "
                f"step. Received (epoch, step): {where}."
            )
        self.program, self.trainers = program, trainers
        program.push()  # the members' weights, resumed ones included
        backend = program.backend
        self.orders = program.stacked([t.order.get_value(borrow=True) for t in trainers], "orders")
        self.etas = program.stacked([np.float32(t.state.eta) for t in trainers], "etas")
        self.cost_sums = program.stacked([np.float32(0.0)] * len(trainers), "cost_sums")
        self.optimizer_state = [
            program.stacked([t.optimizer_state[j].get_value(borrow=True) for t in trainers], name)
            for j, name in enumerate(v.name for v in first.optimizer_state)
        ]
        self.step = backend.shared(np.int64(first.state.step), "step")
        limit = first.options.steps_per_call or backend.steps_per_call
        start = time.perf_counter()
        first.say(f"Compiling the training step of {len(trainers)} networks as one program")

        one_step = program.train_function(
            train,
            self.orders,
            self.etas,
            first.lmbda,
            self.cost_sums,
            self.step,
            first.optimizer,
            self.optimizer_state,
        )

        def compile_steps(steps: int) -> Any:
            return backend.repeat(one_step, steps)

        self.calls = epoch_calls(first.num_batches, limit, compile_steps)
        first.say(f"Compiled in {time.perf_counter() - start:.1f} s")

    def _run_steps(self, active: list[int]) -> float:
        """The epoch's steps for every member; the active members get their results."""
        trainers, mbs = self.trainers, self.trainers[0].net.mini_batch_size
        program = self.program
        program.set_stacked(self.orders, [t.order.get_value(borrow=True) for t in trainers])
        program.set_stacked(self.etas, [np.float32(t.state.eta) for t in trainers])
        program.set_stacked(self.cost_sums, [np.float32(0.0)] * len(trainers))
        tick, done = time.perf_counter(), 0
        try:
            for function, index, steps in self.calls:
                function(index)
                interrupts.check()
                done += steps * mbs
                for k in active:
                    trainers[k].batches_done(done)
        finally:  # interrupted too: each member's network holds the weights it has
            self._hand_back(active)
        return time.perf_counter() - tick

    def _hand_back(self, active: list[int]) -> None:
        step = int(np.asarray(self.step.get_value(borrow=True)))
        sums = np.asarray(self.cost_sums.get_value(borrow=True))
        state = [np.asarray(v.get_value(borrow=True)) for v in self.optimizer_state]
        for k in active:
            weights = self.program.member_weights(k)
            self.trainers[k].take_steps(weights, [v[k] for v in state], step, float(sums[k]))

    def run(self) -> list[History]:
        trainers = self.trainers
        active = list(range(len(trainers)))
        for trainer in trainers:
            trainer.begin()
        with self.program.backend.threads():
            for epoch in range(trainers[0].state.epoch, trainers[0].epochs):
                before = {k: trainers[k].start_epoch(epoch) for k in active}
                seconds = self._run_steps(active)
                for k in active:
                    try:
                        mean_cost = trainers[k].epoch_cost(epoch, before[k])
                    except DivergenceError as exc:
                        raise DivergenceError(f"nets[{k}]: {exc}") from None
                    trainers[k].end_epoch(epoch, mean_cost, seconds)
                active = [k for k in active if not trainers[k].stopping]
                if not active:
                    break
        return [trainer.end() for trainer in trainers]
