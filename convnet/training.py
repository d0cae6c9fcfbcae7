"""The SGD loop: book-style progress lines, every example evaluated, a History kept."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from convnet.errors import ArgumentError

if TYPE_CHECKING:
    from convnet.network import Network


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_positive(
    value: Any, what: str, *, integer: bool = False, allow_zero: bool = False
) -> None:
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and np.isfinite(value)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        noun = "an integer" if integer else "a number"
        raise ArgumentError(f"{what}: expected {noun} {bound}. Received: {value!r}.")


def batch_order(n: int, mini_batch_size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Example indices for one epoch, padded to whole mini-batches.

    network3 silently dropped a final partial mini-batch; here it is filled with the
    epoch's first examples so every example is trained on and shapes stay static.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    short = -n % mini_batch_size
    return np.concatenate([order, order[:short]]).astype(np.int64)


def sgd(
    net: Network,
    training_data: Any,
    epochs: int,
    mini_batch_size: int,
    eta: float,
    validation_data: Any = None,
    test_data: Any = None,
    lmbda: float = 0.0,
    *,
    shuffle: bool = False,
    verbose: bool = True,
) -> History:
    """network3's ``Network.SGD``. ``shuffle=False`` keeps the book's fixed order."""
    _check_positive(epochs, "epochs", integer=True)
    _check_positive(eta, "eta")
    _check_positive(lmbda, "lmbda", allow_zero=True)
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

    backend = net.backend
    rng = np.random.default_rng(net.seed) if shuffle else None
    order_values = batch_order(train.n, mini_batch_size, rng)
    order = backend.shared(order_values, "order")
    eta_var = backend.shared(np.float32(eta), "eta")
    cost_sum = backend.shared(np.float32(0.0), "cost_sum")
    num_batches = len(order_values) // mini_batch_size
    # 0-d arrays made once: compiled functions trust their input (C needs ndarrays).
    batch_indices = [np.array(i, dtype=np.int64) for i in range(num_batches)]

    start = time.perf_counter()
    train_step = net.train_function(train, order, eta_var, float(lmbda), cost_sum)
    for dataset in (validation, test):
        if dataset is not None:
            net.correct_function(dataset)  # compiled now, so the timing line is honest
    if verbose:
        print(
            f"Training on {backend.describe()}: compiled in {time.perf_counter() - start:.1f} s",
            flush=True,
        )

    history = History()
    net.history = history
    best = -1.0
    with backend.threads():
        for epoch in range(epochs):
            if rng is not None and epoch > 0:
                order.set_value(batch_order(train.n, mini_batch_size, rng))
                backend.place(order)
            cost_sum.set_value(np.float32(0.0))
            backend.place(cost_sum)
            tick = time.perf_counter()
            for index in batch_indices:
                train_step(index)
            mean_cost = float(np.asarray(cost_sum.get_value(borrow=True))) / num_batches
            seconds = time.perf_counter() - tick

            val_acc = net.accuracy(validation) if validation is not None else None
            test_acc = net.accuracy(test) if test is not None else None
            history.epoch.append(epoch)
            history.train_cost.append(mean_cost)
            history.validation_accuracy.append(val_acc)
            history.test_accuracy.append(test_acc)
            history.eta.append(float(eta))
            history.seconds.append(seconds)
            score = val_acc if val_acc is not None else -mean_cost
            if verbose:
                if val_acc is not None:
                    print(
                        f"Epoch {epoch}: validation accuracy {val_acc:.2%} "
                        f"(cost {mean_cost:.4f}, {seconds:.1f} s)",
                        flush=True,
                    )
                else:
                    print(
                        f"Epoch {epoch}: training cost {mean_cost:.4f} ({seconds:.1f} s)",
                        flush=True,
                    )
            if score >= best:
                best = score
                history.best_epoch = epoch
                history.best_validation_accuracy = val_acc
                history.test_accuracy_at_best = test_acc
                if verbose and val_acc is not None:
                    print("This is the best validation accuracy to date.")
                    if test_acc is not None:
                        print(f"The corresponding test accuracy is {test_acc:.2%}")
    if verbose:
        print("Finished training network.")
        if history.best_validation_accuracy is not None:
            iteration = (history.best_epoch + 1) * num_batches - 1
            print(
                f"Best validation accuracy of {history.best_validation_accuracy:.2%} "
                f"obtained at iteration {iteration}"
            )
        if history.test_accuracy_at_best is not None:
            print(f"Corresponding test accuracy of {history.test_accuracy_at_best:.2%}")
    return history
