"""Layers: network3's three, each described once and built with or without dropout.

A layer owns its parameters (declared with tags, as in Lasagne: weights are
``regularizable``, biases are not), knows its static per-example input and output shapes,
and has one method, :meth:`Layer.get_output_for`, with a ``deterministic`` switch. The
book's attributes (``output``, ``output_dropout``, ``y_out``) are filled in by
:meth:`Layer.set_inpt`, which :class:`~convnet.network.Network` calls.

Dropout follows network3: during training a unit is zeroed with probability ``p``; at
inference the layer's input is scaled by ``1 - p`` instead, so the expected
pre-activation is the same on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from convnet import activations, dense, init, limits, noise, ops
from convnet.activations import Activation, sigmoid
from convnet.errors import ArgumentError, ShapeError, check_number


@dataclass(frozen=True)
class DropoutSource:
    """What a layer needs to draw its dropout mask: seed, its own salt, the step counter.

    ``first_row`` places a micro-batch inside its mini-batch, so that the micro-batch's
    mask is exactly those rows of the whole mini-batch's mask.
    """

    seed: int | TensorVariable
    salt: int
    step: TensorVariable
    batch_size: int
    first_row: TensorVariable | int = 0

    def drop(self, x: TensorVariable, p: float, n_units: int) -> TensorVariable:
        return noise.dropout(
            x,
            p,
            shape=(self.batch_size, n_units),
            seed=self.seed,
            salt=self.salt,
            step=self.step,
            first_element=self.first_row * n_units,
        )


def _positive_int(value: Any, what: str) -> int:
    check_number(value, what, integer=True)
    return int(value)


def _shape(value: object, length: int, what: str) -> tuple[int, ...]:
    items: tuple[Any, ...] = ()
    if isinstance(value, Iterable):
        items = tuple(value)
    if len(items) != length:
        raise ArgumentError(
            f"{what}: expected a tuple of {length} positive integers. Received: {value!r}."
        )
    return tuple(_positive_int(v, what) for v in items)


def _check_size(layer: str, shape: tuple[int, ...]) -> None:
    """A layer's weights are refused, naming it, before an absurd size is allocated."""
    try:
        limits.check_bytes(prod(shape) * 4, f"its weights, shape {shape} in float32,")
    except limits.TooLargeError as exc:
        raise ArgumentError(f"{layer}: {exc}.") from None


def _dropout_probability(p: Any, layer: str) -> float:
    check_number(p, f"{layer}: p_dropout", inclusive=True, high=1.0)
    return float(p)


class Layer:
    """Base class: parameter bookkeeping, static shapes and the book's attributes."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    p_dropout: float = 0.0

    def __init__(self, *, name: str | None = None, init_scheme: str = "network3") -> None:
        self.name = name or type(self).__name__
        self.init_scheme = init.check_scheme(init_scheme)
        self.param_tags: dict[SharedVariable, frozenset[str]] = {}
        self.output: TensorVariable | None = None
        self.output_dropout: TensorVariable | None = None
        self.inpt: TensorVariable | None = None
        self.inpt_dropout: TensorVariable | None = None
        self.network: Callable[[], object] | None = None  # weakref to the Network using it

    # -- parameters -------------------------------------------------------------------
    def add_param(self, value: np.ndarray, name: str, *, regularizable: bool) -> SharedVariable:
        tags = {"trainable"} | ({"regularizable"} if regularizable else set())
        # A static shape lets PyTensor fold every shape computation into constants,
        # which JAX's tracing requires.
        value = value.astype(np.float32)
        param = pytensor.shared(value, name=name, borrow=True, shape=value.shape)
        self.param_tags[param] = frozenset(tags)
        return param

    def get_params(self, **tags: bool) -> list[SharedVariable]:
        """Parameters carrying every tag set True and none set False (Lasagne's rule)."""
        return [
            p
            for p, have in self.param_tags.items()
            if all((tag in have) == wanted for tag, wanted in tags.items())
        ]

    @property
    def params(self) -> list[SharedVariable]:
        return self.get_params(trainable=True)

    def initialize(self, rng: np.random.Generator) -> None:
        """Draw fresh parameter values (subclasses know their fan-in and fan-out)."""
        raise NotImplementedError

    # -- shapes -----------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return prod(self.input_shape)

    @property
    def n_out(self) -> int:
        return prod(self.output_shape)

    @property
    def n_params(self) -> int:
        """Trainable values (weights and biases)."""
        return sum(prod(p.type.shape) for p in self.params)

    def multiply_adds(self) -> int:
        """Multiply-adds per example of the forward pass (the weights' products)."""
        raise NotImplementedError

    # -- computation ------------------------------------------------------------------
    def get_output_for(
        self,
        inpt: TensorVariable,
        *,
        deterministic: bool,
        dropout: DropoutSource | None = None,
    ) -> TensorVariable:
        """The layer's output for a batch; the dropout path needs a ``dropout`` source."""
        raise NotImplementedError

    def set_inpt(
        self,
        inpt: TensorVariable,
        inpt_dropout: TensorVariable,
        mini_batch_size: int,
        *,
        dropout: DropoutSource | None = None,
    ) -> None:
        """network3's wiring call: fills ``output``, ``output_dropout`` and ``y_out``."""
        if dropout is None:
            step = pytensor.shared(np.int64(0), name=f"{self.name}.step")
            dropout = DropoutSource(0, 0, step, mini_batch_size)
        output = self.get_output_for(inpt, deterministic=True)
        output_dropout = self.get_output_for(inpt_dropout, deterministic=False, dropout=dropout)
        self.attach(inpt, inpt_dropout, output, output_dropout, dropout)

    def attach(
        self,
        inpt: TensorVariable,
        inpt_dropout: TensorVariable,
        output: TensorVariable,
        output_dropout: TensorVariable,
        dropout: DropoutSource,
    ) -> None:
        """Keep the graphs network3's scripts read (``output``, ``output_dropout``,
        ``y_out``), computed by the caller's walk over the layers."""
        self._dropout_source = dropout
        self.inpt, self.inpt_dropout = inpt, inpt_dropout
        self.output, self.output_dropout = output, output_dropout
        self.y_out = pt.argmax(output, axis=1)

    def accuracy(self, y: TensorVariable) -> TensorVariable:
        """Fraction of the mini-batch classified correctly (deterministic path)."""
        return pt.mean(pt.eq(y, self.y_out))

    def describe(self) -> dict[str, object]:
        """The constructor arguments, for saving architectures as JSON."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "type")
        return f"{type(self).__name__}({args})"


class _Dense(Layer):
    """Affine map + activation; shared by the fully connected and softmax layers."""

    _softmax_zeros = False

    def __init__(
        self,
        n_in: int,
        n_out: int,
        p_dropout: float,
        *,
        init_scheme: str,
        rng: np.random.Generator | None,
        name: str | None,
    ) -> None:
        super().__init__(name=name, init_scheme=init_scheme)
        self.input_shape = (_positive_int(n_in, f"{self.name}: n_in"),)
        self.output_shape = (_positive_int(n_out, f"{self.name}: n_out"),)
        self.p_dropout = _dropout_probability(p_dropout, self.name)
        _check_size(self.name, (n_in, n_out))
        self.w = self.add_param(np.zeros((n_in, n_out), np.float32), "w", regularizable=True)
        self.b = self.add_param(np.zeros(n_out, np.float32), "b", regularizable=False)
        # "kernel": convnet's dense Ops (convnet.dense), set by the network for large layers
        # where its backend chooses them; "dot": PyTensor's product, the book's.
        self.dense_implementation = "dot"
        self.initialize(rng or np.random.default_rng())

    def initialize(self, rng: np.random.Generator) -> None:
        n_in, n_out = self.n_in, self.n_out
        self.w.set_value(
            init.weights(
                rng,
                (n_in, n_out),
                init=self.init_scheme,
                fan_in=n_in,
                network3_fan_out=n_out,
                zeros=self._softmax_zeros,
            )
        )
        self.b.set_value(init.biases(rng, n_out, init=self.init_scheme, zeros=self._softmax_zeros))

    def multiply_adds(self) -> int:
        return self.n_in * self.n_out

    def logits_for(
        self,
        inpt: TensorVariable,
        *,
        deterministic: bool,
        dropout: DropoutSource | None = None,
    ) -> TensorVariable:
        x = inpt.reshape((-1, self.n_in))
        if self.p_dropout > 0.0:
            if deterministic:
                x = x * np.float32(1.0 - self.p_dropout)
            else:
                if dropout is None:
                    raise ValueError(f"{self.name}: the dropout path needs a DropoutSource.")
                x = dropout.drop(x, self.p_dropout, self.n_in)
        if self.dense_implementation == "kernel":
            return dense.dense(x, self.w) + self.b
        return pt.dot(x, self.w) + self.b


class FullyConnectedLayer(_Dense):
    """network3's ``FullyConnectedLayer(n_in, n_out, activation_fn, p_dropout)``."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation_fn: Activation | str = sigmoid,
        p_dropout: float = 0.0,
        *,
        init: str = "network3",
        rng: np.random.Generator | None = None,
        name: str | None = None,
    ) -> None:
        self.activation_fn = activations.resolve(activation_fn)
        super().__init__(n_in, n_out, p_dropout, init_scheme=init, rng=rng, name=name)

    def get_output_for(self, inpt, *, deterministic, dropout=None):
        logits = self.logits_for(inpt, deterministic=deterministic, dropout=dropout)
        return self.activation_fn(logits)

    def describe(self) -> dict[str, object]:
        return {
            "type": "FullyConnectedLayer",
            "n_in": self.n_in,
            "n_out": self.n_out,
            "activation_fn": activations.name_of(self.activation_fn),
            "p_dropout": self.p_dropout,
        }


def _mean_nll(logits: TensorVariable, y: TensorVariable) -> TensorVariable:
    log_probs = pt.special.log_softmax(logits, axis=-1)
    return -pt.mean(log_probs[pt.arange(y.shape[0]), y])


class SoftmaxLayer(_Dense):
    """network3's ``SoftmaxLayer(n_in, n_out, p_dropout)``; its weights start at zero."""

    _softmax_zeros = True

    def __init__(
        self,
        n_in: int,
        n_out: int,
        p_dropout: float = 0.0,
        *,
        init: str = "network3",
        rng: np.random.Generator | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(n_in, n_out, p_dropout, init_scheme=init, rng=rng, name=name)

    def get_output_for(self, inpt, *, deterministic, dropout=None):
        logits = self.logits_for(inpt, deterministic=deterministic, dropout=dropout)
        return pt.special.softmax(logits, axis=-1)

    def cost(self, net: Any) -> TensorVariable:
        """Mean negative log-likelihood of ``net.y`` on the dropout path (network3's);
        ``net``: the Model (layers sit below model.py, so it is not named here)."""
        return self.cost_for(self.inpt_dropout, net.y, dropout=self._dropout_source)

    def cost_for(
        self, inpt: TensorVariable, y: TensorVariable, *, dropout: DropoutSource
    ) -> TensorVariable:
        """:meth:`cost` for any batch ``inpt`` with labels ``y`` (e.g. a micro-batch): the
        log-likelihood from the logits, so log(softmax(z)) is computed as log_softmax(z)."""
        return _mean_nll(self.logits_for(inpt, deterministic=False, dropout=dropout), y)

    def describe(self) -> dict[str, object]:
        return {
            "type": "SoftmaxLayer",
            "n_in": self.n_in,
            "n_out": self.n_out,
            "p_dropout": self.p_dropout,
        }


# The smallest pooled maps (qh * qw values) a ConvPoolLayer adds its bias and applies its
# activation to as rows of qh * qw rather than of qw: XLA's CPU fusions took a quarter of
# the time on the book's first layer's rows of 144 than on rows of 12, and more on its
# second layer's rows of 16 than on 4 x 4 (``python benchmarks/experiments.py
# fusion-shapes``; benchmarks/RESULTS.md, "The fifth round").
FLAT_MAPS = 64


class ConvPoolLayer(Layer):
    """network3's ``ConvPoolLayer(filter_shape, image_shape, poolsize, activation_fn)``.

    ``image_shape`` is (mini_batch_size, channels, height, width), as in the book;
    ``filter_shape`` is (n_filters, channels, kh, kw). Output:
    ``activation_fn(max_pool(conv2d(x, w)) + b)``, in network3's order.
    """

    def __init__(
        self,
        filter_shape: tuple[int, ...],
        image_shape: tuple[int, ...],
        poolsize: tuple[int, ...] = (2, 2),
        activation_fn: Activation | str = sigmoid,
        *,
        init: str = "network3",
        rng: np.random.Generator | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, init_scheme=init)
        self.filter_shape = _shape(filter_shape, 4, f"{self.name}: filter_shape")
        self.image_shape = _shape(image_shape, 4, f"{self.name}: image_shape")
        self.poolsize = _shape(poolsize, 2, f"{self.name}: poolsize")
        self.activation_fn = activations.resolve(activation_fn)
        n_filters, filter_channels, kh, kw = self.filter_shape
        _, channels, height, width = self.image_shape
        if filter_channels != channels:
            raise ShapeError(
                f"{self.name}: filter_shape[1] (input channels of the filters) must equal "
                f"image_shape[1]: expected {channels}. Received: filter_shape={self.filter_shape}, "
                f"image_shape={self.image_shape}."
            )
        if kh > height or kw > width:
            raise ShapeError(
                f"{self.name}: filters larger than the image: expected kh <= {height} and "
                f"kw <= {width}. Received: filter_shape={self.filter_shape}."
            )
        conv_hw = ops.conv_output_shape((height, width), (kh, kw))
        pooled = ops.pool_output_shape(conv_hw, self.poolsize)
        if min(pooled) < 1:
            raise ShapeError(
                f"{self.name}: poolsize {self.poolsize} is larger than the convolution "
                f"output {conv_hw}."
            )
        self.input_shape = (channels, height, width)
        self.output_shape = (n_filters, *pooled)
        self._conv_shape = (n_filters, *conv_hw)
        _check_size(self.name, self.filter_shape)
        self.w = self.add_param(np.zeros(self.filter_shape, np.float32), "w", regularizable=True)
        self.b = self.add_param(np.zeros(n_filters, np.float32), "b", regularizable=False)
        # How the convolution is built for training and for evaluation: set by the Network
        # from its backend and device (see Backend.conv_implementation).
        self.conv_implementation = "im2col"
        self.initialize(rng or np.random.default_rng())

    def initialize(self, rng: np.random.Generator) -> None:
        n_filters, channels, kh, kw = self.filter_shape
        fan_out = n_filters * kh * kw // prod(self.poolsize)
        self.w.set_value(
            init.weights(
                rng,
                self.filter_shape,
                init=self.init_scheme,
                fan_in=channels * kh * kw,
                network3_fan_out=max(fan_out, 1),
            )
        )
        self.b.set_value(init.biases(rng, n_filters, init=self.init_scheme))

    def multiply_adds(self) -> int:
        n_filters, channels, kh, kw = self.filter_shape
        return n_filters * channels * kh * kw * prod(self._conv_shape[1:])

    def get_output_for(self, inpt, *, deterministic, dropout=None):
        images = inpt.reshape((-1, *self.input_shape))
        shapes = {"image_shape": self.input_shape, "filter_shape": self.filter_shape}
        implementation = self.conv_implementation
        if implementation == "fused" and deterministic:
            pooled = ops.conv_pool(images, self.w, poolsize=self.poolsize, **shapes)
        elif implementation == "fused" and prod(self.poolsize) <= ops.MAX_WINDOW:
            pooled = ops.conv_pool_train(images, self.w, poolsize=self.poolsize, **shapes)
        else:
            if implementation == "fused":  # windows too large to mark: the unfused graph
                implementation = "patches"
            conv = ops.conv2d(images, self.w, implementation=implementation, **shapes)
            pooled = ops.max_pool(conv, image_shape=self._conv_shape, poolsize=self.poolsize)
        n_filters, qh, qw = self.output_shape
        if qh * qw < FLAT_MAPS:
            return self.activation_fn(pooled + self.b.dimshuffle("x", 0, "x", "x"))
        # Over (n, f, qh * qw): a static batch (lockstep's members) is spelled out, as the
        # vectorised graph cannot size -1.
        rows = -1 if pooled.type.shape[0] is None else pooled.type.shape[0]
        flat = pooled.reshape((rows, n_filters, qh * qw))
        out = self.activation_fn(flat + self.b.dimshuffle("x", 0, "x"))
        return out.reshape((rows, n_filters, qh, qw))

    def describe(self) -> dict[str, object]:
        return {
            "type": "ConvPoolLayer",
            "filter_shape": list(self.filter_shape),
            "image_shape": list(self.image_shape),
            "poolsize": list(self.poolsize),
            "activation_fn": activations.name_of(self.activation_fn),
        }


LAYER_TYPES: dict[str, type[Layer]] = {
    "FullyConnectedLayer": FullyConnectedLayer,
    "SoftmaxLayer": SoftmaxLayer,
    "ConvPoolLayer": ConvPoolLayer,
}
