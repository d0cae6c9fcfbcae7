"""Symbolic activation functions, under the names network3.py used."""

from __future__ import annotations

from collections.abc import Callable

import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

Activation = Callable[[TensorVariable], TensorVariable]


def sigmoid(z: TensorVariable) -> TensorVariable:
    return pt.sigmoid(z)


def tanh(z: TensorVariable) -> TensorVariable:
    return pt.tanh(z)


def ReLU(z: TensorVariable) -> TensorVariable:  # noqa: N802 - the book's name
    return pt.maximum(z, 0.0)


def linear(z: TensorVariable) -> TensorVariable:
    return z


BY_NAME: dict[str, Activation] = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": ReLU,
    "ReLU": ReLU,
    "linear": linear,
}


def name_of(fn: Activation) -> str:
    """The registered name of an activation, for saving architectures as JSON."""
    for name, candidate in BY_NAME.items():
        if candidate is fn:
            return name.lower() if name == "ReLU" else name
    raise ValueError(f"activation_fn: expected one of {sorted(set(BY_NAME))}. Received: {fn!r}.")


def resolve(fn: Activation | str) -> Activation:
    """Accept an activation function or its name."""
    if isinstance(fn, str):
        try:
            return BY_NAME[fn]
        except KeyError:
            raise ValueError(
                f"activation_fn: expected one of {sorted(set(BY_NAME))}. Received: {fn!r}."
            ) from None
    if not callable(fn):
        raise TypeError(f"activation_fn: expected a function or a name. Received: {fn!r}.")
    return fn
