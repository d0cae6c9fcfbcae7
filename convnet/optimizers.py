"""Update rules as pure functions of (params, grads, state): SGD (with momentum or
Nesterov momentum) and Adam.

As in Lasagne's ``updates.py``, an optimizer builds expressions and owns nothing: the
trainer keeps its state (velocities, moments, step count) in shared variables, passes it
in, and stores what comes out, so a checkpoint holds the whole state and a resumed run is
bit-exact whatever the optimizer. Adding an optimizer is one class here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pytensor.tensor as pt

from convnet.errors import ArgumentError, check_number


class Optimizer:
    """An update rule. ``state_names`` name the per-parameter state slots (one array the
    shape of each parameter per slot) and ``scalar_names`` the state shared by all."""

    name = "optimizer"
    eta: float  # the step size: a field of every rule
    state_names: tuple[str, ...] = ()
    scalar_names: tuple[str, ...] = ()

    def initial_state(self, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """The state before the first step: every slot for every parameter, then scalars."""
        slots = [np.zeros(shape, np.float32) for _ in self.state_names for shape in shapes]
        return slots + [np.zeros((), np.float32) for _ in self.scalar_names]

    def state_labels(self, param_names: Sequence[str]) -> list[str]:
        """Names for the arrays of :meth:`initial_state`, for checkpoints."""
        return [f"{slot}.{p}" for slot in self.state_names for p in param_names] + list(
            self.scalar_names
        )

    def step(
        self, params: Sequence[Any], grads: Sequence[Any], state: Sequence[Any], eta: Any
    ) -> tuple[list[Any], list[Any]]:
        """(new params, new state) as expressions; ``eta`` is the (scheduled) step size."""
        raise NotImplementedError

    @property
    def sgd_momentum(self) -> tuple[float, bool] | None:
        """(momentum, nesterov) where the rule is :class:`SGD`'s, whose step a dense layer
        may take inside its backward pass (:func:`convnet.dense.fuse_sgd`); else None."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]  # subclasses are dataclasses


@dataclass(frozen=True)
class SGD(Optimizer):
    """network3's SGD; with ``momentum`` > 0 classical momentum (``v <- mu*v - eta*g;
    p <- p + v``), with ``nesterov=True`` Nesterov's (``p <- p + mu*v - eta*g`` with the new
    ``v``), both as in Lasagne."""

    eta: float
    momentum: float = 0.0
    nesterov: bool = False
    name = "sgd"

    def __post_init__(self) -> None:
        check_number(self.eta, "SGD: eta")
        check_number(self.momentum, "SGD: momentum", inclusive=True, high=1.0)
        if self.nesterov and self.momentum == 0.0:
            raise ArgumentError("SGD: nesterov=True needs a momentum > 0. Received: 0.")

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]  # a property, per momentum
        return ("velocity",) if self.momentum > 0 else ()

    @property
    def sgd_momentum(self) -> tuple[float, bool] | None:
        return self.momentum, self.nesterov

    def step(self, params, grads, state, eta):
        if self.momentum == 0.0:
            return [p - eta * g for p, g in zip(params, grads, strict=True)], []
        mu = np.float32(self.momentum)
        velocities = [mu * v - eta * g for v, g in zip(state, grads, strict=True)]
        if self.nesterov:
            moved = [
                p + mu * v - eta * g for p, v, g in zip(params, velocities, grads, strict=True)
            ]
        else:
            moved = [p + v for p, v in zip(params, velocities, strict=True)]
        return moved, velocities


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), in Lasagne's form: the step size
    ``eta * sqrt(1 - beta2**t) / (1 - beta1**t)`` folds in both bias corrections."""

    eta: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    name = "adam"
    state_names = ("m", "v")
    scalar_names = ("t",)

    def __post_init__(self) -> None:
        check_number(self.eta, "Adam: eta")
        check_number(self.beta1, "Adam: beta1", inclusive=True, high=1.0)
        check_number(self.beta2, "Adam: beta2", inclusive=True, high=1.0)
        check_number(self.epsilon, "Adam: epsilon")

    def step(self, params, grads, state, eta):
        n = len(params)
        moments, squares, (t,) = state[:n], state[n : 2 * n], state[2 * n :]
        one = np.float32(1.0)
        b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
        t_next = t + one
        size = eta * pt.sqrt(one - b2**t_next) / (one - b1**t_next)
        new_m = [b1 * m + (one - b1) * g for m, g in zip(moments, grads, strict=True)]
        new_v = [b2 * v + (one - b2) * g**2 for v, g in zip(squares, grads, strict=True)]
        eps = np.float32(self.epsilon)
        moved = [
            p - size * m / (pt.sqrt(v) + eps) for p, m, v in zip(params, new_m, new_v, strict=True)
        ]
        return moved, [*new_m, *new_v, t_next]


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


def from_description(description: dict[str, Any]) -> Optimizer:
    """The optimizer :meth:`Optimizer.describe` described (checkpoints store it)."""
    values = dict(description)
    kind = OPTIMIZERS.get(values.pop("name", None))
    if kind is None:
        raise ArgumentError(
            f"optimizer: expected one of {', '.join(OPTIMIZERS)}. Received: {description!r}."
        )
    return kind(**values)
