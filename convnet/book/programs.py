"""The compiled programs behind the book's ``network.py`` and ``network2.py``.

A network of sigmoid layers is a PyTensor graph, examples as rows: ``z = a @ w.T + b.T``.
The gradient is PyTensor's symbolic gradient from the output layer's error ``delta`` (the
book's ``cost.delta(z, a, y)``, called on symbolic variables), and one SGD step is the
book's update, ``w' = (1 - eta * lmbda / n) * w - (eta / m) * nabla_w``. Each program is
compiled once per network shape, cost and dtype (in PyTensor's JAX mode), and an epoch is
one call: every mini-batch's step inside one XLA loop over the data, which stays on the
device (:meth:`convnet.book.examples.Store.on_device`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from convnet.errors import BackendError

Params = tuple[Any, ...]  # the weights, then the biases, in the book's shapes


def _jax_mode() -> Any:
    import jax
    from pytensor.compile.mode import get_mode
    from pytensor.link.jax import dispatch  # noqa: F401 - sets JAX's float64 from floatX

    if not jax.config.jax_enable_x64:
        raise BackendError(
            "the book's networks compute in float64, which JAX has turned off here "
            "(PyTensor turns it off when floatX is float32: PYTENSOR_FLAGS=floatX=float32). "
            "Unset floatX, or pass dtype='float32' to Network for float32 arithmetic."
        )
    return get_mode("JAX")


class Programs:
    """The compiled functions of one network: ``sizes``, the output error ``delta``
    (a function of symbolic ``z, a, y``), and ``dtype``."""

    def __init__(self, sizes: Sequence[int], delta: Callable[..., Any], dtype: str) -> None:
        import pytensor
        import pytensor.tensor as pt

        self.sizes, self.dtype = tuple(sizes), np.dtype(dtype)
        self.mode = _jax_mode()  # first: JAX's float64 is on before any data is put on it
        pairs = list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        self.w = [pt.tensor(f"w{k}", dtype=dtype, shape=(y, x)) for k, (x, y) in enumerate(pairs)]
        self.b = [pt.tensor(f"b{k}", dtype=dtype, shape=(y, 1)) for k, (_, y) in enumerate(pairs)]
        self.x = pt.matrix("x", dtype=dtype, shape=(None, self.sizes[0]))
        self.y = pt.matrix("y", dtype=dtype, shape=(None, self.sizes[-1]))
        a, z = self.x, None
        for w, b in zip(self.w, self.b, strict=True):
            z = a @ w.T + b.T
            a = 1.0 / (1.0 + pt.exp(-z))  # the book's sigmoid
        self.output, self.z = a, z
        self._pytensor = pytensor
        self._delta = delta

    def _function(self, inputs: list[Any], outputs: list[Any]) -> Any:
        return self._pytensor.function(inputs, outputs, mode=self.mode, on_unused_input="ignore")

    @cached_property
    def gradients(self) -> list[Any]:
        """The sums over the examples of ``nabla_w`` then ``nabla_b``, symbolically."""
        try:
            delta = self._delta(self.z, self.output, self.y)
        except Exception as exc:  # a cost written with NumPy calls that need arrays
            raise BackendError(
                f"cost.delta(z, a, y) could not be compiled ({type(exc).__name__}: {exc}). "
                "Write it with arithmetic and this module's sigmoid / sigmoid_prime, as the "
                "book's costs are."
            ) from None
        return self._pytensor.grad(None, [*self.w, *self.b], known_grads={self.z: delta})

    @cached_property
    def backprop(self) -> Any:
        """``(weights, biases, x, y) -> nabla_w + nabla_b`` summed over the rows."""
        return self._function([*self.w, *self.b, self.x, self.y], self.gradients)

    @cached_property
    def _step(self) -> Any:
        import pytensor.tensor as pt

        decay = pt.scalar("decay", dtype=self.dtype.name)
        rate = pt.scalar("rate", dtype=self.dtype.name)
        params = [*self.w, *self.b]
        layers = len(self.w)
        new = [
            decay * p - rate * g if k < layers else p - rate * g
            for k, (p, g) in enumerate(zip(params, self.gradients, strict=True))
        ]
        return self._function([*params, self.x, self.y, decay, rate], new)

    def step(self, params: Params, x: np.ndarray, y: np.ndarray, decay: float, rate: float):
        """One SGD step on the mini-batch ``x, y`` (rows): the new weights and biases."""
        return self._step(*params, x, y, self._scalar(decay), self._scalar(rate))

    @cached_property
    def _epoch(self) -> Any:
        import jax

        one_step = self._step.vm.jit_fn

        def epoch(params: Params, x: Any, y: Any, order: Any, decay: Any, rate: Any) -> Any:
            def advance(k: Any, carried: Params) -> Params:
                rows = order[k]
                new = one_step(*carried, x[rows], y[rows], decay, rate)
                # PyTensor's JAX sums return their float64 accumulator for float32 biases
                return tuple(v.astype(c.dtype) for v, c in zip(new, carried, strict=True))

            return jax.lax.fori_loop(0, order.shape[0], advance, tuple(params))

        return jax.jit(epoch)

    def epoch(
        self, params: Params, x: Any, y: Any, order: np.ndarray, decay: float, rate: float
    ) -> Params:
        """One step per row of ``order`` (the rows of ``x``, ``y`` of each mini-batch)."""
        d, r = self._scalar(decay), self._scalar(rate)
        return self._epoch(params, x, y, order.astype(np.int32), d, r)

    @cached_property
    def _forward(self) -> Any:
        import jax

        forward = self._function([*self.w, *self.b, self.x], [self.output]).vm.jit_fn

        def outputs(params: Params, x: Any) -> Any:
            return forward(*params, x)[0]

        def gathered(params: Params, x: Any, rows: Any) -> Any:
            return forward(*params, x[rows])[0]

        return jax.jit(outputs), jax.jit(gathered)

    def outputs(self, params: Params, x: Any, rows: np.ndarray | None = None) -> np.ndarray:
        """The output activations for the rows ``rows`` of ``x`` (all rows: None)."""
        whole, gathered = self._forward
        if rows is None:
            return np.asarray(whole(params, x))
        return np.asarray(gathered(params, x, rows.astype(np.int32)))

    def _scalar(self, value: float) -> np.ndarray:
        return np.asarray(value, dtype=self.dtype)


_PROGRAMS: dict[tuple[Any, ...], Programs] = {}


def programs_for(sizes: Sequence[int], delta: Callable[..., Any], dtype: str) -> Programs:
    """The :class:`Programs` of this shape, error and dtype, compiled on first use."""
    key = (tuple(sizes), delta, np.dtype(dtype).name)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Programs(sizes, delta, dtype)
    return _PROGRAMS[key]
