"""The book's ``network2.py`` (chapters 3 and 5), compiled.

``from convnet.book import network2`` in place of ``import network2``, and the book's code
and figure scripts run: the two costs, the two weight initialisers, L2 regularisation, the
four monitors and ``save`` / ``load`` in the book's JSON format. Weights are drawn from the
global ``np.random`` in the book's order, each epoch shuffles the training list in place
with Python 2's algorithm on the global ``random``, and the arithmetic is float64: with
those, the book's seeded figure data is reproduced (docs/BOOK.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convnet.book import examples, sigmoid_kernel
from convnet.book.mnist_loader import vectorized_result
from convnet.book.sigmoid_network import (
    SigmoidNetwork,
    check_sizes,
    check_training,
    sigmoid,
    sigmoid_prime,
)
from convnet.errors import ArgumentError, ModelFileError
from convnet.files import write_bytes

__all__ = [
    "CrossEntropyCost",
    "Network",
    "QuadraticCost",
    "load",
    "sigmoid",
    "sigmoid_prime",
    "vectorized_result",
]


class QuadraticCost:
    """C = ||a - y||^2 / 2."""

    @staticmethod
    def fn(a: np.ndarray, y: np.ndarray) -> float:
        """The cost of an output ``a`` for the desired output ``y``."""
        return 0.5 * float(np.sqrt(np.sum((a - y) ** 2))) ** 2

    @staticmethod
    def delta(z: Any, a: Any, y: Any) -> Any:
        """The error of the output layer."""
        return (a - y) * sigmoid_prime(z)


class CrossEntropyCost:
    """C = -sum(y ln a + (1 - y) ln(1 - a)), with NaN (0 * log 0) counted as 0."""

    @staticmethod
    def fn(a: np.ndarray, y: np.ndarray) -> float:
        """The cost of an output ``a`` for the desired output ``y``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a))))

    @staticmethod
    def delta(z: Any, a: Any, y: Any) -> Any:
        """The error of the output layer (``z`` unused: the sigmoid's slope cancels)."""
        return a - y


def _costs_per_example(fn: Callable[..., float], outputs: np.ndarray, targets: np.ndarray):
    """Each row's cost, for the book's two costs at once (None for another cost)."""
    if fn is CrossEntropyCost.fn:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            terms = np.nan_to_num(-targets * np.log(outputs) - (1 - targets) * np.log(1 - outputs))
            return terms.sum(axis=1)
    if fn is QuadraticCost.fn:
        return 0.5 * np.sqrt(np.sum((outputs - targets) ** 2, axis=1)) ** 2
    return None


KERNEL_COSTS = {  # the output errors the kernel trains with, and the costs it evaluates
    CrossEntropyCost.delta: sigmoid_kernel.CROSS_ENTROPY,
    QuadraticCost.delta: sigmoid_kernel.QUADRATIC,
}
KERNEL_COST_FNS = {
    CrossEntropyCost.fn: sigmoid_kernel.CROSS_ENTROPY,
    QuadraticCost.fn: sigmoid_kernel.QUADRATIC,
}


class Network(SigmoidNetwork):
    """The book's chapter-3 network. ``cost`` is a cost class or instance, as the book's
    scripts pass either; ``dtype="float32"`` (keyword only, not the book's) trades the
    float64 arithmetic for speed."""

    def __init__(
        self, sizes: list[int], cost: Any = CrossEntropyCost, *, dtype: str = "float64"
    ) -> None:
        check_sizes(sizes)
        super().__init__(sizes, dtype)
        self.default_weight_initializer()
        self.cost = cost

    def default_weight_initializer(self) -> None:
        """Weights ~ N(0, 1/n_in), biases ~ N(0, 1), drawn from the global ``np.random``."""
        self._draw(scaled=True)

    def large_weight_initializer(self) -> None:
        """Weights and biases ~ N(0, 1): chapter 1's initialisation, for comparison."""
        self._draw(scaled=False)

    def SGD(  # noqa: N802 - the book's name
        self,
        training_data: list[Any],
        epochs: int,
        mini_batch_size: int,
        eta: float,
        lmbda: float = 0.0,
        evaluation_data: list[Any] | None = None,
        monitor_evaluation_cost: bool = False,
        monitor_evaluation_accuracy: bool = False,
        monitor_training_cost: bool = False,
        monitor_training_accuracy: bool = False,
    ) -> tuple[list[float], list[int], list[float], list[int]]:
        """Train by mini-batch SGD; returns the per-epoch evaluation costs, evaluation
        accuracies, training costs and training accuracies (empty where not monitored)."""
        check_training(epochs, mini_batch_size, eta, lmbda)
        if (monitor_evaluation_cost or monitor_evaluation_accuracy) and not evaluation_data:
            raise ArgumentError(
                "SGD: evaluation_data: expected a list of (x, y) pairs when "
                "monitor_evaluation_cost or monitor_evaluation_accuracy is set. "
                f"Received: {evaluation_data!r:.40}."
            )
        evaluation = evaluation_data or []
        n_data = len(evaluation)
        n = len(training_data) if isinstance(training_data, list | tuple) else 0
        evaluation_cost: list[float] = []
        evaluation_accuracy: list[int] = []
        training_cost: list[float] = []
        training_accuracy: list[int] = []
        for j in range(epochs):
            decay = 1 - eta * (lmbda / n) if n else 1.0
            self._train_epoch(
                training_data,
                mini_batch_size,
                eta,
                decay,
                lambda batch: self.update_mini_batch(batch, eta, lmbda, n),
            )
            print(f"Epoch {j} training complete")
            self._memo = {}  # each monitored data set goes through the network once
            if monitor_training_cost:
                cost = self.total_cost(training_data, lmbda)
                training_cost.append(cost)
                print(f"Cost on training data: {cost}")
            if monitor_training_accuracy:
                accuracy = self.accuracy(training_data, convert=True)
                training_accuracy.append(accuracy)
                print(f"Accuracy on training data: {accuracy} / {n}")
            if monitor_evaluation_cost:
                cost = self.total_cost(evaluation, lmbda, convert=True)
                evaluation_cost.append(cost)
                print(f"Cost on evaluation data: {cost}")
            if monitor_evaluation_accuracy:
                accuracy = self.accuracy(evaluation)
                evaluation_accuracy.append(accuracy)
                print(f"Accuracy on evaluation data: {accuracy} / {n_data}")
            self._memo = None
            print()
        return evaluation_cost, evaluation_accuracy, training_cost, training_accuracy

    def update_mini_batch(self, mini_batch: list[Any], eta: float, lmbda: float, n: int) -> None:
        """One gradient-descent step with L2 decay ``1 - eta * lmbda / n``."""
        check_training(0, 1, eta, lmbda)
        self._update(mini_batch, eta, 1 - eta * (lmbda / n))

    def accuracy(self, data: list[Any], convert: bool = False) -> int:
        """The number of inputs whose highest output is the right digit. ``convert``:
        True for training data (y one-hot vectors), False for validation / test data."""
        what = "accuracy: data"
        return self._count_correct(data, what, vectors=bool(convert))

    def total_cost(self, data: list[Any], lmbda: float, convert: bool = False) -> float:
        """The mean cost over ``data`` plus the L2 term. ``convert``: False for training
        data (y one-hot vectors), True for validation / test data (y digits)."""
        what = "total_cost: data"
        fn = self.cost.fn
        per_example = None
        if self._overrides("feedforward"):
            outputs = np.stack([self.feedforward(x)[:, 0] for x, _ in data])
            store, rows = examples.lookup(data, what, self.sizes[0], self.sizes[-1])
        else:
            evaluation = self._outputs(data, what)
            store, rows, outputs = evaluation.store, evaluation.rows, evaluation.outputs
            if evaluation.costs is not None and self._evaluation_cost() is not None:
                per_example = evaluation.costs  # the kernel's, for this cost's fn
        if store.vectors == bool(convert):
            examples._wrong_format(store, what, not convert, self.sizes[-1])
        if per_example is None:
            per_example = _costs_per_example(fn, outputs, store.one_hot()[rows])
        if per_example is None:  # another cost: called per example, as the book does
            targets = store.one_hot()[rows]
            per_example = np.array(
                [fn(a[:, None], y[:, None]) for a, y in zip(outputs, targets, strict=True)]
            )
        with np.errstate(over="ignore"):  # saturated outputs: the book's sum is inf, silently
            cost = float(np.sum(per_example / len(data)))
        squares = sum(float(np.sqrt(np.sum(np.square(w)))) ** 2 for w in self.weights)
        return cost + 0.5 * (lmbda / len(data)) * squares

    def _delta(self) -> Callable[..., Any]:
        return self.cost.delta

    def _kernel_cost(self) -> int | None:
        return KERNEL_COSTS.get(self.cost.delta)

    def _evaluation_cost(self) -> int | None:
        return KERNEL_COST_FNS.get(self.cost.fn)

    def save(self, filename: str | os.PathLike[str]) -> None:
        """Save the network to ``filename`` in the book's JSON format."""
        cost = self.cost if isinstance(self.cost, type) else type(self.cost)
        data = {
            "sizes": [int(n) for n in self.sizes],
            "weights": [np.asarray(w).tolist() for w in self.weights],
            "biases": [np.asarray(b).tolist() for b in self.biases],
            "cost": str(cost.__name__),
        }
        write_bytes(Path(filename), json.dumps(data).encode())


COSTS = {"QuadraticCost": QuadraticCost, "CrossEntropyCost": CrossEntropyCost}


def _check_shapes(path: Path, data: dict[str, Any]) -> None:
    """The file's weights and biases have the shapes its sizes promise."""
    sizes, weights, biases = data["sizes"], data["weights"], data["biases"]
    try:
        sizes = check_sizes(sizes)
    except ArgumentError as exc:
        raise ModelFileError(f"{path}: sizes: {exc}") from None
    for name, arrays, width in (("weights", weights, sizes[:-1]), ("biases", biases, None)):
        if not isinstance(arrays, list) or len(arrays) != len(sizes) - 1:
            raise ModelFileError(
                f"{path}: {name}: expected {len(sizes) - 1} layers for sizes {sizes}."
            )
        for k, rows in enumerate(arrays):
            columns = width[k] if width else 1
            ok = isinstance(rows, list) and len(rows) == sizes[k + 1]
            ok = ok and all(isinstance(r, list) and len(r) == columns for r in rows)
            if not ok:
                raise ModelFileError(
                    f"{path}: {name}[{k}]: expected {sizes[k + 1]} rows of {columns} numbers "
                    f"(sizes {sizes})."
                )


def load(filename: str | os.PathLike[str]) -> Network:
    """The network saved in ``filename`` (the book's JSON format)."""
    path = Path(filename)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a network saved by network2 ({exc}).") from None
    if not isinstance(data, dict) or any(k not in data for k in ("sizes", "weights", "biases")):
        raise ModelFileError(f"{path}: expected the fields sizes, weights, biases and cost.")
    cost = COSTS.get(data.get("cost", ""))
    if cost is None:
        raise ModelFileError(
            f"{path}: cost: expected one of {', '.join(COSTS)}. Received: {data.get('cost')!r}."
        )
    _check_shapes(path, data)  # before Network() allocates what sizes ask for
    try:
        net = Network(data["sizes"], cost=cost)
    except ArgumentError as exc:
        raise ModelFileError(f"{path}: sizes: {exc}") from None
    try:
        net.weights = [np.array(w, dtype=np.float64) for w in data["weights"]]
        net.biases = [np.array(b, dtype=np.float64) for b in data["biases"]]
        net._params()
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: weights / biases: {exc}") from None
    return net
