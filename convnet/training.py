"""The SGD loop: network3's algorithm and printout, plus what a long run needs.

Beyond the book: every example is trained on and evaluated; a ``History`` is kept;
optional momentum, shuffling, early stopping that restores the best weights, the book's
learning-rate schedule (halve eta when validation stalls, stop at eta/128), a progress
bar on terminals, divergence caught with the exact mini-batch named, and a per-epoch
hook that checkpoints use. A :class:`TrainingState` holds everything needed to resume
a run bit for bit.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from convnet.errors import ArgumentError, DivergenceError

if TYPE_CHECKING:
    from convnet.network import DeviceData, Network


@dataclass
class History:
    """Per-epoch record of a training run (also kept on ``net.history``)."""

    epoch: list[int] = field(default_factory=list)
    train_cost: list[float] = field(default_factory=list)
    validation_accuracy: list[float | None] = field(default_factory=list)
    test_accuracy: list[float | None] = field(default_factory=list)
    eta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_validation_accuracy: float | None = None
    best_epoch: int | None = None
    test_accuracy_at_best: float | None = None
    stopped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class TrainingState:
    """Where a run stands between epochs: enough to resume it exactly."""

    epoch: int = 0  # the next epoch to run
    eta: float = 0.0
    best_score: float = -math.inf
    stalled: int = 0  # epochs since the score last improved
    schedule_stalled: int = 0  # the same, reset whenever eta is halved
    shuffle_rng: dict[str, Any] | None = None
    history: History = field(default_factory=History)
    best_weights: list[np.ndarray] | None = None
    velocities: list[np.ndarray] | None = None
    step: int = 0


@dataclass
class Options:
    """Keyword options of ``Network.SGD`` beyond the book's arguments."""

    shuffle: bool = False
    momentum: float = 0.0
    patience: int | None = None
    restore_best: bool | None = None
    eta_schedule: int | None = None
    min_eta_fraction: float = 1 / 128
    verbose: bool = True
    progress: bool | None = None
    on_epoch_end: Callable[[TrainingState], None] | None = None
    state: TrainingState | None = None
    steps_per_call: int | None = None  # default: the backend's (see Backend.steps_per_call)
    micro_batch: int | None = None  # default: the backend's (see Backend.micro_batch)


def _check_number(
    value: Any,
    what: str,
    *,
    integer: bool = False,
    low: float = 0.0,
    inclusive: bool = False,
    high: float = math.inf,
) -> None:
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kind) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low) and value < high
    if not ok:
        noun = "an integer" if integer else "a number"
        bound = f"{'>=' if inclusive else '>'} {low:g}" + (
            f" and < {high:g}" if high < math.inf else ""
        )
        raise ArgumentError(f"{what}: expected {noun} {bound}. Received: {value!r}.")


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


def _options(options: dict[str, Any]) -> Options:
    valid = {f.name for f in fields(Options)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ArgumentError(
            f"SGD: unknown option(s) {', '.join(unknown)}. "
            f"Expected some of: {', '.join(sorted(valid))}."
        )
    opts = Options(**options)
    _check_number(opts.momentum, "momentum", low=0.0, inclusive=True, high=1.0)
    if opts.patience is not None:
        _check_number(opts.patience, "patience", integer=True)
    if opts.eta_schedule is not None:
        _check_number(opts.eta_schedule, "eta_schedule", integer=True)
    if opts.steps_per_call is not None:
        _check_number(opts.steps_per_call, "steps_per_call", integer=True)
    if opts.micro_batch is not None:
        _check_number(opts.micro_batch, "micro_batch", integer=True)
    return opts


def sgd(
    net: Network,
    training_data: Any,
    epochs: int,
    mini_batch_size: int,
    eta: float,
    validation_data: Any = None,
    test_data: Any = None,
    lmbda: float = 0.0,
    **options: Any,
) -> History:
    """network3's ``Network.SGD``; see :class:`Options` for the keyword extras."""
    _check_number(epochs, "epochs", integer=True)
    _check_number(eta, "eta")
    _check_number(lmbda, "lmbda", inclusive=True)
    opts = _options(options)
    if mini_batch_size != net.mini_batch_size:
        raise ArgumentError(
            f"mini_batch_size: SGD must use the network's mini_batch_size: expected "
            f"{net.mini_batch_size}. Received: {mini_batch_size!r}."
        )
    train = net.to_device(training_data, "training_data")
    if train.n < mini_batch_size:
        raise ArgumentError(
            f"training_data: expected at least one mini-batch ({mini_batch_size} examples). "
            f"Received: {train.n}."
        )
    validation = (
        net.to_device(validation_data, "validation_data") if validation_data is not None else None
    )
    test = net.to_device(test_data, "test_data") if test_data is not None else None
    return Trainer(net, train, validation, test, epochs, float(eta), float(lmbda), opts).run()


class Trainer:
    """One training run: compiled functions, device state, and the epoch loop."""

    def __init__(
        self,
        net: Network,
        train: DeviceData,
        validation: DeviceData | None,
        test: DeviceData | None,
        epochs: int,
        eta: float,
        lmbda: float,
        opts: Options,
    ) -> None:
        self.net, self.train, self.validation, self.test = net, train, validation, test
        self.epochs, self.eta0, self.opts = epochs, eta, opts
        backend, mbs = net.backend, net.mini_batch_size
        self.state = opts.state or TrainingState(eta=eta)
        self.rng = np.random.default_rng(net.seed) if opts.shuffle else None
        if self.rng is not None and self.state.shuffle_rng is not None:
            self.rng.bit_generator.state = self.state.shuffle_rng
        self.order = backend.shared(batch_order(train.n, mbs, None), "order")
        self.eta = backend.shared(np.float32(self.state.eta), "eta")
        self.cost_sum = backend.shared(np.float32(0.0), "cost_sum")
        self.velocities = []
        if opts.momentum > 0:
            starts = self.state.velocities or [
                np.zeros(p.type.shape, np.float32) for p in net.params
            ]
            self.velocities = [
                backend.shared(v, f"v_{p.name}") for v, p in zip(starts, net.params, strict=True)
            ]
        net.step.set_value(np.int64(self.state.step))
        self.num_batches = len(self.order.get_value(borrow=True)) // mbs
        self.lmbda = lmbda

        start = time.perf_counter()
        limit = opts.steps_per_call or backend.steps_per_call(self.num_batches * epochs)
        size = chunk_size(self.num_batches, limit)
        whole = self.num_batches - self.num_batches % size
        chunk = self._step_function(size)
        self.calls = [(chunk, np.array(i, dtype=np.int64), size) for i in range(0, whole, size)]
        if whole < self.num_batches:
            rest = self.num_batches - whole
            self.calls.append((self._step_function(rest), np.array(whole, dtype=np.int64), rest))
        for dataset in (validation, test):
            if dataset is not None:
                net.correct_function(dataset)  # compiled now, so the timing line is honest
        self.say(
            f"Training on {backend.describe()}: compiled in {time.perf_counter() - start:.1f} s"
        )

    def _step_function(self, steps: int) -> Any:
        """The compiled function that runs ``steps`` SGD steps from a mini-batch index.

        (0-d int64 arrays are passed to it: compiled functions trust their input.)
        """
        return self.net.train_function(
            self.train,
            self.order,
            self.eta,
            self.lmbda,
            self.cost_sum,
            self.velocities,
            self.opts.momentum,
            steps,
            self.opts.micro_batch,
        )

    # -- output -----------------------------------------------------------------------
    def say(self, line: str) -> None:
        if self.opts.verbose:
            print(line, flush=True)

    def _progress(self, epoch: int) -> Any:
        show = self.opts.progress
        if show is None:
            show = self.opts.verbose and sys.stdout.isatty()
        if not show:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(
            total=self.num_batches * self.net.mini_batch_size,
            unit="img",
            desc=f"Epoch {epoch}",
            leave=False,
            dynamic_ncols=True,
        )

    # -- state ------------------------------------------------------------------------
    def _set(self, variable: Any, value: np.ndarray) -> None:
        variable.set_value(value)
        self.net.backend.place(variable)

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        velocities = [np.array(np.asarray(v.get_value(borrow=True))) for v in self.velocities]
        return self.net.get_weights(), velocities, int(np.asarray(self.net.step.get_value()))

    def restore(self, snap: tuple[list[np.ndarray], list[np.ndarray], int]) -> None:
        weights, velocities, step = snap
        self.net.step.set_value(np.int64(step))
        self.net.set_weights(weights)
        for variable, value in zip(self.velocities, velocities, strict=True):
            self._set(variable, value)

    def _sync_state(self) -> None:
        _, velocities, step = self.snapshot()
        self.state.velocities = velocities or None
        self.state.step = step
        self.state.shuffle_rng = self.rng.bit_generator.state if self.rng is not None else None

    # -- the loop ---------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> tuple[float, float]:
        if self.rng is not None:
            self._set(self.order, batch_order(self.train.n, self.net.mini_batch_size, self.rng))
        self._set(self.cost_sum, np.float32(0.0))
        before = self.snapshot()
        bar = self._progress(epoch)
        tick = time.perf_counter()
        self.net.device_copies.push()
        try:
            for function, index, steps in self.calls:
                function(index)
                if bar is not None:
                    bar.update(steps * self.net.mini_batch_size)
        finally:  # interrupted too: the user then sees the weights convnet has
            self.net.device_copies.pull()
        total = float(np.asarray(self.cost_sum.get_value(borrow=True)))
        seconds = time.perf_counter() - tick
        if bar is not None:
            bar.close()
        if not math.isfinite(total):
            self._diverged(epoch, before)
        return total / self.num_batches, seconds

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

    def run(self) -> History:
        state, history = self.state, self.state.history
        self.net.history = history
        with self.net.backend.threads():
            for epoch in range(state.epoch, self.epochs):
                mean_cost, seconds = self.run_epoch(epoch)
                val_acc = (
                    self.net.accuracy(self.validation) if self.validation is not None else None
                )
                test_acc = self.net.accuracy(self.test) if self.test is not None else None
                for name, value in [
                    ("epoch", epoch),
                    ("train_cost", mean_cost),
                    ("validation_accuracy", val_acc),
                    ("test_accuracy", test_acc),
                    ("eta", state.eta),
                    ("seconds", seconds),
                ]:
                    getattr(history, name).append(value)
                if val_acc is not None:
                    self.say(
                        f"Epoch {epoch}: validation accuracy {val_acc:.2%} "
                        f"(cost {mean_cost:.4f}, {seconds:.1f} s)"
                    )
                else:
                    self.say(f"Epoch {epoch}: training cost {mean_cost:.4f} ({seconds:.1f} s)")
                stop = self._after_epoch(epoch, val_acc, test_acc, mean_cost)
                state.epoch = epoch + 1
                self._sync_state()
                if self.opts.on_epoch_end is not None:
                    self.opts.on_epoch_end(state)
                if stop:
                    break
        self._finish()
        return history

    def _after_epoch(
        self, epoch: int, val_acc: float | None, test_acc: float | None, mean_cost: float
    ) -> bool:
        """Track the best epoch; apply the schedule and early stopping. True: stop now."""
        state, history, opts = self.state, self.state.history, self.opts
        score = val_acc if val_acc is not None else -mean_cost
        if score >= state.best_score:
            state.best_score, state.stalled, state.schedule_stalled = score, 0, 0
            history.best_epoch = epoch
            history.best_validation_accuracy = val_acc
            history.test_accuracy_at_best = test_acc
            if opts.patience is not None or opts.restore_best:
                state.best_weights = self.net.get_weights()
            if val_acc is not None:
                self.say("This is the best validation accuracy to date.")
                if test_acc is not None:
                    self.say(f"The corresponding test accuracy is {test_acc:.2%}")
            return False
        state.stalled += 1
        state.schedule_stalled += 1
        if opts.eta_schedule is not None and state.schedule_stalled >= opts.eta_schedule:
            state.eta /= 2
            state.schedule_stalled = 0
            if state.eta < self.eta0 * opts.min_eta_fraction:
                history.stopped = f"eta fell below eta/{round(1 / opts.min_eta_fraction)}"
                self.say(f"Stopping: {history.stopped}.")
                return True
            self._set(self.eta, np.float32(state.eta))
            self.say(f"No improvement for {opts.eta_schedule} epochs: eta halved to {state.eta:g}.")
        if opts.patience is not None and state.stalled >= opts.patience:
            history.stopped = f"early stopping: no improvement for {opts.patience} epochs"
            self.say(f"Stopping early: no improvement for {opts.patience} epochs.")
            return True
        return False

    def _finish(self) -> None:
        history, state, opts = self.state.history, self.state, self.opts
        restore = opts.restore_best if opts.restore_best is not None else opts.patience is not None
        if restore and state.best_weights is not None and history.best_epoch != history.epoch[-1]:
            self.net.set_weights(state.best_weights)
            self.say(f"Restored the weights of epoch {history.best_epoch}, the best one.")
        self.say("Finished training network.")
        if history.best_validation_accuracy is not None and history.best_epoch is not None:
            iteration = (history.best_epoch + 1) * self.num_batches - 1
            self.say(
                f"Best validation accuracy of {history.best_validation_accuracy:.2%} "
                f"obtained at iteration {iteration}"
            )
        if history.test_accuracy_at_best is not None:
            self.say(f"Corresponding test accuracy of {history.test_accuracy_at_best:.2%}")
