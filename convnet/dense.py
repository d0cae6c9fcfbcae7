"""A dense layer's product as Ops: :class:`Dense` (``x . w``), its two gradients, and
:class:`DenseSgd`, the inputs' gradient and an SGD step of ``w`` (with or without momentum)
in one pass over ``w`` (convnet's CPU kernel, ``runtime/kernel/dense.cc``); :func:`fuse_sgd`
puts it in place of the gradient, the separate step and the inputs' gradient of a training
graph, and takes the L2 term's :class:`SquaredNorm` of ``w`` from the same pass.

Why: at the book's mini-batch of 10 each pass over a large weight matrix is as fast as the
matrix streams through the core, and XLA makes four passes for a layer's backward and step
where the fused Op makes one (benchmarks/RESULTS.md, "The dense kernel"). ``perform``
(NumPy) serves the other modes and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.op import Op

# The smallest weight matrix (values) a layer's product is a Dense Op for: from the book's
# FC100 layers (640 x 100, 784 x 100) up, where the fused step and the forward took less
# time than XLA's at mini-batch 10 (``python benchmarks/experiments.py dense-sgd`` and
# ``dense-forward``; benchmarks/RESULTS.md, "The fifth round"); smaller ones (the softmax
# layers) keep PyTensor's product and XLA's step.
MIN_WEIGHTS = 1 << 15
# The largest mini-batch the fused step is used at: beyond 16 rows XLA's GEMMs are faster
# (``python benchmarks/experiments.py dense-sgd``; benchmarks/RESULTS.md, "The dense kernel").
MAX_ROWS = 16
# The mini-batches the kernel's forward product is used at: up to one block of rows in
# registers (12), so w streams through once; from 6, where it beat XLA's GEMM by 1.25-1.55x
# (at 1-4 rows both stream w as fast as it comes, at 16 XLA is as fast; ``python
# benchmarks/experiments.py dense-forward``).
MIN_FORWARD_ROWS = 6
MAX_FORWARD_ROWS = 12


def _matrix(value: Any) -> Any:
    value = pt.as_tensor_variable(value)
    if value.type.ndim != 2:
        raise TypeError(f"dense: expected a matrix. Received: {value.type}.")
    return value


class Dense(Op):
    """``x (m, k) . w (k, n)``; its gradients are :class:`DenseGradX` and :class:`DenseGradW`."""

    __props__ = ()

    def make_node(self, x, w):
        x, w = _matrix(x), _matrix(w)
        out = pt.tensor(dtype=x.type.dtype, shape=(x.type.shape[0], w.type.shape[1]))
        return Apply(self, [x, w], [out])

    def perform(self, node, inputs, output_storage):
        x, w = inputs
        output_storage[0][0] = np.dot(x, w).astype(node.outputs[0].dtype)

    def pullback(self, inputs, outputs, cotangents):
        x, w = inputs
        (g,) = cotangents
        return [DenseGradX()(g, w), DenseGradW()(x, g)]


class DenseGradX(Op):
    """``g (m, n) . w (k, n)^T``: the inputs' gradient of :class:`Dense`."""

    __props__ = ()

    def make_node(self, g, w):
        g, w = _matrix(g), _matrix(w)
        out = pt.tensor(dtype=g.type.dtype, shape=(g.type.shape[0], w.type.shape[0]))
        return Apply(self, [g, w], [out])

    def perform(self, node, inputs, output_storage):
        g, w = inputs
        output_storage[0][0] = np.dot(g, w.T).astype(node.outputs[0].dtype)


class DenseGradW(Op):
    """``x (m, k)^T . g (m, n)``: the weights' gradient of :class:`Dense`."""

    __props__ = ()

    def make_node(self, x, g):
        x, g = _matrix(x), _matrix(g)
        out = pt.tensor(dtype=g.type.dtype, shape=(x.type.shape[1], g.type.shape[1]))
        return Apply(self, [x, g], [out])

    def perform(self, node, inputs, output_storage):
        x, g = inputs
        output_storage[0][0] = np.dot(x.T, g).astype(node.outputs[0].dtype)


class SquaredNorm(Op):
    """``sum(w * w)``, the L2 term of a weight that :func:`fuse_sgd` may step in the
    kernel: there the fused pass makes it too, so the term neither reads ``w`` again nor
    makes XLA copy ``w`` before stepping it in place (it cannot know the sum is read first)."""

    __props__ = ()

    def make_node(self, w):
        w = _matrix(w)
        return Apply(self, [w], [pt.tensor(dtype=w.type.dtype, shape=())])

    def perform(self, node, inputs, output_storage):
        (w,) = inputs
        output_storage[0][0] = np.asarray(np.sum(w * w), dtype=node.outputs[0].dtype)

    def pullback(self, inputs, outputs, cotangents):
        (w,) = inputs
        (g,) = cotangents
        return [2 * g * w]


class DenseSgd(Op):
    """``(w, x, g, eta, decay) -> (g . w^T, w - eta * grad)`` with ``grad = x^T . g + decay
    * w``: the inputs' gradient (from ``w`` before the step) and an SGD step of ``w`` with
    the L2 term's gradient. With ``momentum``, three more inputs ``(v, mu, nesterov)`` and a
    third result: ``v' = mu * v - eta * grad``, ``w' = w + v'`` (or Nesterov's ``w + mu * v'
    - eta * grad``), as :class:`convnet.optimizers.SGD` steps. With ``squares``, a last
    result: ``sum(w * w)`` before the step. Only in update graphs: it has no gradient."""

    __props__ = ("momentum", "squares")

    def __init__(self, momentum: bool = False, squares: bool = False) -> None:
        self.momentum = bool(momentum)
        self.squares = bool(squares)

    def make_node(self, w, x, g, eta, decay, *velocity):
        w, x, g = _matrix(w), _matrix(x), _matrix(g)
        scalars = [pt.as_tensor_variable(s).astype(w.type.dtype) for s in (eta, decay)]
        inputs = [w, x, g, *scalars]
        outputs = [
            pt.tensor(dtype=g.type.dtype, shape=(g.type.shape[0], w.type.shape[0])),
            w.type(),
        ]
        if self.momentum:
            v, mu, nesterov = velocity
            v = _matrix(v)
            inputs += [v, *(pt.as_tensor_variable(s).astype(w.type.dtype) for s in (mu, nesterov))]
            outputs.append(v.type())
        if self.squares:
            outputs.append(pt.tensor(dtype=w.type.dtype, shape=()))
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, output_storage):
        w, x, g, eta, decay = inputs[:5]
        output_storage[0][0] = np.dot(g, w.T).astype(node.outputs[0].dtype)
        if self.squares:
            output_storage[-1][0] = np.asarray(np.sum(w * w), dtype=node.outputs[-1].dtype)
        grad = np.dot(x.T, g).astype(w.dtype) + decay * w
        if not self.momentum:
            output_storage[1][0] = (w - eta * grad).astype(node.outputs[1].dtype)
            return
        v, mu, nesterov = inputs[5:]
        velocity = (mu * v - eta * grad).astype(v.dtype)
        stepped = w + mu * velocity - eta * grad if nesterov else w + velocity
        output_storage[1][0] = stepped.astype(node.outputs[1].dtype)
        output_storage[2][0] = velocity


def dense(x: Any, w: Any) -> Any:
    """``x . w`` as one :class:`Dense` Op."""
    return Dense()(x, w)


def squared_norm(w: Any) -> Any:
    """``sum(w * w)`` as one :class:`SquaredNorm` Op."""
    return SquaredNorm()(w)


def fuse_sgd(
    outputs: Sequence[Variable],
    steps: Mapping[Variable, int],
    eta: Variable,
    decays: Mapping[Variable, float],
    velocities: Mapping[Variable, tuple[Variable, int]] | None = None,
    mu: float = 0.0,
    nesterov: bool = False,
) -> list[Variable]:
    """``outputs`` with each SGD step of a :class:`Dense` weight made by :class:`DenseSgd`.

    ``steps[w]`` is the position in ``outputs`` of ``w``'s new value (the SGD rule's, with
    the product's gradient plus ``decays[w] * w``); that value and every use of the inputs'
    gradient of ``w``'s product are replaced by the fused Op's results. With momentum
    ``mu``, ``velocities[w]`` is ``w``'s velocity and the position of its new value, which
    the fused Op makes too. Each :class:`SquaredNorm` of ``w`` (the L2 term's) becomes the
    fused Op's too. Layers are fused from the last one back, so each fused Op reads
    a gradient already made by the fused Ops after it. A weight used by more than one
    product is left alone."""
    # The step's graph is this function's own clone, so it is edited in place: every use of
    # a replaced variable, wherever it is, then sees the fused Op's result.
    graph = FunctionGraph(outputs=list(outputs), clone=False)
    done: set[Variable] = set()
    while True:
        nodes = graph.toposort()
        products = [
            n
            for n in nodes
            if isinstance(n.op, Dense)
            and n.inputs[1] in steps
            and n.inputs[1] not in done
            and sum(isinstance(m.op, Dense) and m.inputs[1] is n.inputs[1] for m in nodes) == 1
        ]
        if not products:
            break
        x, w = products[-1].inputs  # the last in topological order: nearest the cost
        done.add(w)
        grad_w = [n for n in nodes if isinstance(n.op, DenseGradW) and n.inputs[0] is x]
        if len(grad_w) != 1:
            continue
        g = grad_w[0].inputs[1]
        decay = np.float32(decays.get(w, 0.0))
        # (Without an L2 term, lmbda 0, the graph's rewrites drop its 0 * sum.)
        norms = [
            n.outputs[0]
            for n in nodes
            if decay and isinstance(n.op, SquaredNorm) and n.inputs[0] is w
        ]
        fused = DenseSgd(momentum=bool(mu), squares=bool(norms))
        if mu:
            velocity, moved = (velocities or {})[w]
            flag = np.float32(nesterov)
            dx, stepped, *rest = fused(w, x, g, eta, decay, velocity, np.float32(mu), flag)
            pairs = [(graph.outputs[moved], rest[0])]
        else:
            dx, stepped, *rest = fused(w, x, g, eta, decay)
            pairs = []
        pairs += [(norm, rest[-1]) for norm in norms]
        pairs += [
            (n.outputs[0], dx)
            for n in nodes
            if isinstance(n.op, DenseGradX) and n.inputs[0] is g and n.inputs[1] is w
        ]
        graph.replace_all([*pairs, (graph.outputs[steps[w]], stepped)], import_missing=True)
    return list(graph.outputs)
