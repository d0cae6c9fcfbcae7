"""What the book's ``network.py`` and ``network2.py`` share: a network of sigmoid layers
whose weights and biases are lists of NumPy arrays in the book's shapes, trained and
evaluated by convnet's CPU kernel (:mod:`convnet.book.sigmoid_kernel`) for the book's two
costs, else by PyTensor programs compiled for JAX (:mod:`convnet.book.programs`).

The arithmetic is float64 unless ``dtype="float32"`` is asked for: the book's figure data
was made in float64, and its seeded runs are reproduced only in float64. The lists are
read before each compiled call and assigned after it, so a script may read and assign
``net.weights`` / ``net.biases`` between calls, as the book's scripts do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convnet import config
from convnet.book import examples, shuffle, sigmoid_kernel
from convnet.book.programs import Params, Programs, programs_for
from convnet.errors import ArgumentError, ShapeError

DTYPES = ("float64", "float32")


def _exp(z: Any) -> Any:
    if isinstance(z, np.ndarray | float | int | np.number):
        return np.exp(z)
    import pytensor.tensor as pt

    return pt.exp(z)


def sigmoid(z: Any) -> Any:
    """The sigmoid function, on NumPy arrays or on symbolic PyTensor variables."""
    return 1.0 / (1.0 + _exp(-z))


def sigmoid_prime(z: Any) -> Any:
    """Derivative of the sigmoid function."""
    return sigmoid(z) * (1 - sigmoid(z))


def check_sizes(sizes: Any) -> list[int]:
    ok = isinstance(sizes, list | tuple) and len(sizes) >= 2
    ok = ok and all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in sizes
    )
    if not ok:
        raise ArgumentError(
            "Network: sizes: expected a list of two or more layer sizes, each an integer "
            f"> 0, input layer first (the book's [784, 30, 10]). Received: {sizes!r}."
        )
    return [int(n) for n in sizes]


def check_training(epochs: Any, mini_batch_size: Any, eta: Any, lmbda: Any = 0.0) -> None:
    """The book's SGD arguments, each checked by name."""
    for name, value, integer, low, inclusive in (
        ("epochs", epochs, True, 0, True),
        ("mini_batch_size", mini_batch_size, True, 0, False),
        ("eta", eta, False, 0, False),
        ("lmbda", lmbda, False, 0, True),
    ):
        kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            noun = "an integer" if integer else "a number"
            raise ArgumentError(
                f"SGD: {name}: expected {noun} {'>=' if inclusive else '>'} {low}. "
                f"Received: {value!r}."
            )


@dataclass(frozen=True)
class Evaluation:
    """A network's pass over a data set: each pair's output, guess and (when the kernel
    computed it for the network's cost) cost, in the order of the pairs' ``rows``."""

    store: examples.Store
    rows: np.ndarray
    outputs: np.ndarray
    guesses: np.ndarray
    costs: np.ndarray | None


class SigmoidNetwork:
    """A network of sigmoid layers in the book's form (``sizes``, ``weights``, ``biases``)."""

    def __init__(self, sizes: Sequence[int], dtype: str = "float64") -> None:
        self.num_layers = len(sizes)
        self.sizes = sizes
        if dtype not in DTYPES:
            raise ArgumentError(
                f"Network: dtype: expected one of {', '.join(DTYPES)}. Received: {dtype!r}."
            )
        self.dtype = dtype

    def _draw(self, scaled: bool) -> None:
        """Biases ~ N(0, 1), then weights ~ N(0, 1) (over sqrt(n_in) when ``scaled``), drawn
        from the global ``np.random`` in the book's order: its seeded runs depend on it."""
        self.biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        self.weights = [
            np.random.randn(y, x) / np.sqrt(x) if scaled else np.random.randn(y, x)
            for x, y in itertools.pairwise(self.sizes)
        ]

    # -- what the subclasses say ------------------------------------------------------
    def _delta(self) -> Callable[..., Any]:
        """The output layer's error as a function of symbolic ``z, a, y``."""
        raise NotImplementedError

    def _kernel_cost(self) -> int | None:
        """The kernel's code for this network's output error, None if it has none."""
        raise NotImplementedError

    def _kernel(self) -> int | None:
        """The cost code when :mod:`convnet.book.sigmoid_kernel` runs this network: the
        book's two errors, unless ``CONVNET_KERNEL=0`` asks for the PyTensor/JAX path."""
        if config.setting("CONVNET_KERNEL") == "0" or not sigmoid_kernel.available():
            return None
        return self._kernel_cost()

    # -- the compiled programs ----------------------------------------------------------
    def _programs(self) -> Programs:
        return programs_for(check_sizes(self.sizes), self._delta(), self.dtype)

    def _params(self) -> Params:
        """The weights and biases, checked against ``sizes``, as the programs take them."""
        sizes = check_sizes(self.sizes)
        values = []
        for name, arrays in (("weights", self.weights), ("biases", self.biases)):
            if len(arrays) != len(sizes) - 1:
                raise ShapeError(
                    f"net.{name}: expected {len(sizes) - 1} arrays (one per layer after the "
                    f"first, for sizes {sizes}). Received: {len(arrays)}."
                )
            for k, array in enumerate(arrays):
                want = (sizes[k + 1], sizes[k] if name == "weights" else 1)
                if np.shape(array) != want:
                    raise ShapeError(
                        f"net.{name}[{k}]: expected shape {want} (sizes {sizes}). "
                        f"Received: {np.shape(array)}."
                    )
                values.append(np.asarray(array, dtype=self.dtype))
        return tuple(values)

    def _assign(self, params: Params) -> None:
        layers = len(params) // 2
        self.weights = [np.array(p, dtype=self.dtype) for p in params[:layers]]
        self.biases = [np.array(p, dtype=self.dtype) for p in params[layers:]]

    def _overrides(self, name: str) -> bool:
        """Whether a subclass replaced the book's method ``name`` (then it is called, per
        example or per mini-batch, as the book's code calls it)."""
        own = next(c for c in type(self).__mro__ if c.__module__.startswith("convnet.book."))
        return getattr(type(self), name) is not getattr(own, name)

    def feedforward(self, a: Any) -> np.ndarray:
        """Return the output of the network if ``a`` is input (a column per example)."""
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] != self.sizes[0]:
            raise ShapeError(
                f"feedforward: a: expected a {self.sizes[0]}x1 column vector (or {self.sizes[0]}"
                f" rows, one column per example). Received: shape {a.shape}."
            )
        x = np.ascontiguousarray(a.T, dtype=self.dtype)
        return self._programs().outputs(self._params(), x).T

    def backprop(self, x: Any, y: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(nabla_b, nabla_w)``: the gradient of the cost C_x, layer by layer (PyTensor's
        symbolic gradient, compiled once per network shape)."""
        n_in, n_out = self.sizes[0], self.sizes[-1]
        x_row = examples._column(x, n_in, "backprop: x")[None, :].astype(self.dtype)
        y_row = examples._column(y, n_out, "backprop: y", "sizes[-1]")[None, :].astype(self.dtype)
        nablas = self._programs().backprop(*self._params(), x_row, y_row)
        layers = len(nablas) // 2
        return [np.asarray(n) for n in nablas[layers:]], [np.asarray(n) for n in nablas[:layers]]

    def _update(self, mini_batch: Any, eta: float, decay: float) -> None:
        """The book's update on one mini-batch, compiled (or through an overridden backprop)."""
        n_in, n_out = self.sizes[0], self.sizes[-1]
        if not isinstance(mini_batch, list | tuple) or not mini_batch:
            raise ArgumentError(
                "update_mini_batch: mini_batch: expected a non-empty list of (x, y) pairs. "
                f"Received: {mini_batch!r:.80}."
            )
        rate = eta / len(mini_batch)
        if self._overrides("backprop"):
            nabla_b = [np.zeros(b.shape) for b in self.biases]
            nabla_w = [np.zeros(w.shape) for w in self.weights]
            for x, y in mini_batch:
                delta_b, delta_w = self.backprop(x, y)
                nabla_b = [nb + d for nb, d in zip(nabla_b, delta_b, strict=True)]
                nabla_w = [nw + d for nw, d in zip(nabla_w, delta_w, strict=True)]
            self.weights = [
                decay * w - rate * nw for w, nw in zip(self.weights, nabla_w, strict=True)
            ]
            self.biases = [b - rate * nb for b, nb in zip(self.biases, nabla_b, strict=True)]
            return
        x = np.stack([examples._column(p[0], n_in, "mini_batch: x") for p in mini_batch])
        y = np.stack(
            [examples._target(p[1], n_out, "mini_batch", k) for k, p in enumerate(mini_batch)]
        )
        new = self._programs().step(
            self._params(), x.astype(self.dtype), y.astype(self.dtype), decay, rate
        )
        self._assign(tuple(new))

    def _train_epoch(
        self,
        training_data: list[Any],
        mini_batch_size: int,
        eta: float,
        decay: float,
        update: Callable[[list[Any]], None],
    ) -> None:
        """Shuffle ``training_data`` in place (Python 2's order), then one compiled step
        per mini-batch; ``update`` when a subclass replaced the book's per-batch methods."""
        examples.check_list(training_data, "training_data", shuffled=True)
        shuffle.shuffle(training_data)
        n = len(training_data)
        if self._overrides("update_mini_batch") or self._overrides("backprop"):
            for k in range(0, n, mini_batch_size):
                update(training_data[k : k + mini_batch_size])
            return
        store, rows = examples.lookup(
            training_data, "training_data", self.sizes[0], self.sizes[-1], vectors=True
        )
        cost = self._kernel()
        if cost is not None:
            copy = sigmoid_kernel.Layout(self._params(), check_sizes(self.sizes), self.dtype)
            copy.epoch(
                store.sparse(self.dtype), store.one_hot(), rows, mini_batch_size, eta, decay, cost
            )
            self._assign(copy.params())
            return
        programs = self._programs()
        x, y = store.on_device("x", programs.dtype), store.on_device("targets", programs.dtype)
        params = self._params()
        whole = n - n % mini_batch_size
        if whole:
            order = rows[:whole].reshape(-1, mini_batch_size)
            params = programs.epoch(params, x, y, order, decay, eta / mini_batch_size)
        if whole < n:
            params = programs.epoch(params, x, y, rows[None, whole:], decay, eta / (n - whole))
        self._assign(params)

    _memo: dict[int, Evaluation] | None = None  # SGD's monitors: each data set, once

    def _evaluation_cost(self) -> int | None:
        """The kernel's code for the cost whose per-example values evaluations compute."""
        return None

    def _outputs(self, data: Any, what: str) -> Evaluation:
        """The network on every pair of ``data``: its outputs and guesses (and, from the
        kernel, each pair's cost)."""
        if self._memo is not None and id(data) in self._memo:
            return self._memo[id(data)]
        store, rows = examples.lookup(data, what, self.sizes[0], self.sizes[-1])
        costs = None
        if self._kernel() is not None:
            copy = sigmoid_kernel.Layout(self._params(), check_sizes(self.sizes), self.dtype)
            code = self._evaluation_cost()
            targets = store.one_hot() if code is not None else None
            bounds = store.chunk_bounds(copy.chunk_shift, self.dtype)
            outputs, guesses, costs = copy.evaluate(
                store.sparse(self.dtype), bounds, rows, targets, code or 0
            )
        else:
            programs = self._programs()
            x = store.on_device("x", programs.dtype)
            if len(rows) * 2 >= len(store.labels):  # most of the store: every row, then pick
                outputs = programs.outputs(self._params(), x)[rows]
            else:
                outputs = programs.outputs(self._params(), x, rows)
            guesses = np.argmax(outputs, axis=1)
        evaluation = Evaluation(store, rows, outputs, guesses, costs)
        if self._memo is not None:
            self._memo[id(data)] = evaluation
        return evaluation

    def _predictions(self, data: Any, what: str) -> tuple[examples.Store, np.ndarray, np.ndarray]:
        """The store, rows and predicted digit of each pair (a replaced feedforward is
        called once per example, as the book's code calls it)."""
        if self._overrides("feedforward"):
            store, rows = examples.lookup(data, what, self.sizes[0], self.sizes[-1])
            guesses = np.array([int(np.argmax(self.feedforward(x))) for x, _ in data])
            return store, rows, guesses
        evaluation = self._outputs(data, what)
        return evaluation.store, evaluation.rows, evaluation.guesses

    def _count_correct(self, data: Any, what: str, vectors: bool | None) -> int:
        store, rows, guesses = self._predictions(data, what)
        if vectors is not None and vectors != store.vectors:
            examples._wrong_format(store, what, vectors, self.sizes[-1])
        return int(np.count_nonzero(guesses == store.labels[rows]))
