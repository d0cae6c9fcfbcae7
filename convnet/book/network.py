"""The book's ``network.py`` (chapters 1 and 2), compiled.

``from convnet.book import network`` in place of ``import network``, and the book's code
runs: ``network.Network([784, 30, 10]).SGD(training_data, 30, 10, 3.0,
test_data=test_data)`` prints the book's lines. The quadratic cost, sigmoid neurons and
weights and biases drawn from the global ``np.random`` in the book's order are the book's;
``backprop`` is PyTensor's symbolic gradient, and an epoch is one compiled call
(:mod:`convnet.book.sigmoid_network`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convnet.book import sigmoid_kernel
from convnet.book.sigmoid_network import (
    SigmoidNetwork,
    check_sizes,
    check_training,
    sigmoid,
    sigmoid_prime,
)

__all__ = ["Network", "sigmoid", "sigmoid_prime"]

_DELTAS: dict[Any, Callable[..., Any]] = {}


class Network(SigmoidNetwork):
    """The book's chapter-1 network. ``dtype="float32"`` (keyword only, not the book's)
    trades its float64 arithmetic for speed."""

    def __init__(self, sizes: list[int], *, dtype: str = "float64") -> None:
        check_sizes(sizes)
        super().__init__(sizes, dtype)
        self._draw(scaled=False)

    def SGD(  # noqa: N802 - the book's name
        self,
        training_data: list[Any],
        epochs: int,
        mini_batch_size: int,
        eta: float,
        test_data: list[Any] | None = None,
    ) -> None:
        """Train by mini-batch stochastic gradient descent, printing the book's lines."""
        check_training(epochs, mini_batch_size, eta)
        if test_data:
            n_test = len(test_data)
        for j in range(epochs):
            self._train_epoch(
                training_data,
                mini_batch_size,
                eta,
                1.0,
                lambda batch: self.update_mini_batch(batch, eta),
            )
            if test_data:
                print(f"Epoch {j}: {self.evaluate(test_data)} / {n_test}")
            else:
                print(f"Epoch {j} complete")

    def update_mini_batch(self, mini_batch: list[Any], eta: float) -> None:
        """Apply one gradient-descent step for the (x, y) pairs of ``mini_batch``."""
        check_training(0, 1, eta)
        self._update(mini_batch, eta, 1.0)

    def evaluate(self, test_data: list[Any]) -> int:
        """The number of test inputs whose highest output is the right digit."""
        return self._count_correct(test_data, "test_data", vectors=False)

    def cost_derivative(self, output_activations: Any, y: Any) -> Any:
        """The vector of partial derivatives dC_x / da for the output activations."""
        return output_activations - y

    def _kernel_cost(self) -> int | None:
        if type(self).cost_derivative is Network.cost_derivative:
            return sigmoid_kernel.QUADRATIC
        return None

    def _delta(self) -> Callable[..., Any]:
        derivative = type(self).cost_derivative
        if derivative not in _DELTAS:

            def delta(z: Any, a: Any, y: Any) -> Any:
                return derivative(self, a, y) * sigmoid_prime(z)

            _DELTAS[derivative] = delta
        return _DELTAS[derivative]
