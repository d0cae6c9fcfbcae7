"""Two NumPy float64 references for the book's network2: its algorithm as the book wrote
it (one example at a time) and the same algorithm vectorised over each mini-batch.

Written here from the book's algorithm (chapter 2's equations, chapter 3's update), not
copied: the peers ``benchmarks/book_speed.py`` times convnet.book against, and the book's
own arithmetic that ``scripts/book.py kernels`` runs under two BLAS kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convnet.book.shuffle import shuffle


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def cross_entropy(a: np.ndarray, y: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a))))


class PerExample:
    """The book's network2 as it runs: lists of column vectors, backprop per example,
    evaluation per example, cross-entropy cost."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
        self.weights = [w.copy() for w in weights]
        self.biases = [b.copy() for b in biases]

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        for w, b in zip(self.weights, self.biases, strict=True):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list[Any], list[Any]]:
        activations, zs = [x], []
        for w, b in zip(self.weights, self.biases, strict=True):
            zs.append(np.dot(w, activations[-1]) + b)
            activations.append(sigmoid(zs[-1]))
        delta = activations[-1] - y
        nabla_b, nabla_w = [delta], [np.dot(delta, activations[-2].T)]
        for k in range(2, len(self.weights) + 1):
            s = sigmoid(zs[-k])
            delta = np.dot(self.weights[-k + 1].T, delta) * (s * (1 - s))
            nabla_b.insert(0, delta)
            nabla_w.insert(0, np.dot(delta, activations[-k - 1].T))
        return nabla_b, nabla_w

    def epoch(self, data: list[Any], m: int, eta: float, lmbda: float) -> None:
        shuffle(data)
        n = len(data)
        for k in range(0, n, m):
            batch = data[k : k + m]
            sum_b = [np.zeros(b.shape) for b in self.biases]
            sum_w = [np.zeros(w.shape) for w in self.weights]
            for x, y in batch:
                db, dw = self.backprop(x, y)
                sum_b = [s + d for s, d in zip(sum_b, db, strict=True)]
                sum_w = [s + d for s, d in zip(sum_w, dw, strict=True)]
            decay, rate = 1 - eta * (lmbda / n), eta / len(batch)
            self.weights = [decay * w - rate * s for w, s in zip(self.weights, sum_w, strict=True)]
            self.biases = [b - rate * s for b, s in zip(self.biases, sum_b, strict=True)]

    def accuracy(self, data: list[Any], convert: bool = False) -> int:
        if convert:
            return sum(int(np.argmax(self.feedforward(x)) == np.argmax(y)) for x, y in data)
        return sum(int(np.argmax(self.feedforward(x)) == y) for x, y in data)

    def total_cost(self, data: list[Any], lmbda: float, convert: bool = False) -> float:
        cost = 0.0
        for x, y in data:
            target = y
            if convert:
                target = np.zeros((10, 1))
                target[y] = 1.0
            cost += cross_entropy(self.feedforward(x), target) / len(data)
        return cost + 0.5 * (lmbda / len(data)) * sum(np.linalg.norm(w) ** 2 for w in self.weights)


class Vectorised(PerExample):
    """The same algorithm with each mini-batch, and each evaluation, as one matrix."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], data: Any) -> None:
        super().__init__(weights, biases)
        self.index = {id(pair): k for k, pair in enumerate(data)}
        self.x = np.hstack([x for x, _ in data]).astype(np.float64)
        self.y = np.hstack([y for _, y in data]).astype(np.float64)

    def _forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        activations, zs = [x], []
        for w, b in zip(self.weights, self.biases, strict=True):
            zs.append(w @ activations[-1] + b)
            activations.append(sigmoid(zs[-1]))
        return activations, zs

    def epoch(self, data: list[Any], m: int, eta: float, lmbda: float) -> None:
        shuffle(data)
        n = len(data)
        order = np.array([self.index[id(pair)] for pair in data])
        for k in range(0, n, m):
            rows = order[k : k + m]
            activations, _ = self._forward(self.x[:, rows])
            delta = activations[-1] - self.y[:, rows]
            grads_w, grads_b = [delta @ activations[-2].T], [delta.sum(axis=1, keepdims=True)]
            for j in range(2, len(self.weights) + 1):
                s = activations[-j]
                delta = (self.weights[-j + 1].T @ delta) * (s * (1 - s))
                grads_w.insert(0, delta @ activations[-j - 1].T)
                grads_b.insert(0, delta.sum(axis=1, keepdims=True))
            decay, rate = 1 - eta * (lmbda / n), eta / len(rows)
            self.weights = [
                decay * w - rate * g for w, g in zip(self.weights, grads_w, strict=True)
            ]
            self.biases = [b - rate * g for b, g in zip(self.biases, grads_b, strict=True)]

    def evaluate(self, x: np.ndarray, labels: np.ndarray, lmbda: float) -> tuple[float, int]:
        """Cost (targets one-hot from ``labels``) and accuracy of the columns of ``x``."""
        a = self._forward(x)[0][-1]
        targets = np.zeros_like(a)
        targets[labels, np.arange(len(labels))] = 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.nan_to_num(-targets * np.log(a) - (1 - targets) * np.log(1 - a))
        squares = sum(float(np.sum(w * w)) for w in self.weights)
        cost = float(terms.sum()) / len(labels) + 0.5 * (lmbda / len(labels)) * squares
        return cost, int(np.count_nonzero(np.argmax(a, axis=0) == labels))
