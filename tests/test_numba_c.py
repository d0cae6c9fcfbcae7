"""convnet's Ops compiled by PyTensor's own linkers (Numba and C), against the reference.

The book's code compiles functions over convnet's graphs in PyTensor's default mode; an Op
that mode can't compile would run its Python ``perform`` in Numba's object mode.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.builders import OpFromGraph
from pytensor.gradient import verify_grad

from convnet import ops
from convnet.runtime import backend as backends
from tests import reference

IMAGE, FILTERS, POOL = (2, 9, 8), (5, 2, 3, 4), (2, 3)  # odd sizes, ragged pooling


def _compile(inputs, outputs, mode):
    """The function, failing the test if Numba fell back to object mode for any node."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn = pytensor.function(inputs, outputs, mode=mode)
    fallbacks = [str(w.message) for w in caught if "object mode" in str(w.message)]
    assert not fallbacks, fallbacks
    return fn


def _graph(mode_name: str):
    x = pt.tensor4("x", dtype="float32", shape=(None, *IMAGE))
    w = pt.tensor4("w", dtype="float32", shape=FILTERS)
    shapes = {"image_shape": IMAGE, "filter_shape": FILTERS}
    pooled = ops.conv_pool(x, w, poolsize=POOL, **shapes)
    patches = ops.conv2d(x, w, implementation="patches", **shapes)
    native = ops.conv2d(x, w, implementation="native", **shapes)
    return x, w, [pooled, patches, native]


@pytest.mark.parametrize("mode", ["NUMBA", "CVM"])
def test_ops_match_the_reference_when_compiled(mode, rng):
    x, w, outputs = _graph(mode)
    fn = _compile([x, w], outputs, mode)
    xv = rng.normal(size=(3, *IMAGE)).astype(np.float32)
    wv = rng.normal(size=FILTERS).astype(np.float32)
    conv = reference.conv_valid(xv, wv)
    pooled, patches, native = (np.asarray(v) for v in fn(xv, wv))
    np.testing.assert_allclose(pooled, reference.max_pool(conv, POOL), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(patches, conv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(native, conv, rtol=1e-4, atol=1e-4)
    kinds = {type(node.op) for node in fn.maker.fgraph.apply_nodes}
    assert ops.ConvPool not in kinds  # lowered to Im2Col + dot + max-pooling
    assert ops.Im2Col in kinds


def _no_blas() -> bool:
    """PyTensor found no BLAS to link (no libopenblas-dev): its own Dot22 then runs NumPy
    in Python, which is PyTensor's choice, not convnet's."""
    return not pytensor.config.blas__ldflags


def test_the_c_backend_runs_c_code_for_every_node_of_a_conv_pool_and_its_gradient():
    """No Python ``perform`` on the C backend's path, forward or backward."""
    x, w, (pooled, *_) = _graph("CVM")
    outputs = [pooled, *pytensor.grad((pooled**2).sum(), [x, w])]
    fn = _compile([x, w], outputs, backends.resolve("c").apply())
    python = [
        str(n.op)
        for n, t in zip(fn.vm.nodes, fn.vm.thunks, strict=True)
        if not getattr(t, "cthunk", None) and not (_no_blas() and str(n.op) == "Dot22")
    ]
    assert not python, python
    xv = np.random.default_rng(0).normal(size=(2, *IMAGE)).astype(np.float32)
    wv = np.random.default_rng(1).normal(size=FILTERS).astype(np.float32)
    expected = reference.max_pool(reference.conv_valid(xv, wv), POOL)
    np.testing.assert_allclose(fn(xv, wv)[0], expected, rtol=1e-4, atol=1e-4)


def test_the_c_backend_compiles_softmax_and_its_gradient_with_the_rest():
    """PyTensor's softmax and log-softmax are Ops defined by a graph, without C code; C mode
    would run each as a Numba function (a Ctrl-C landing in Numba's callbacks was lost).
    (The gradient's AdvancedIncSubtensor runs in Python: PyTensor has no C code for it.)"""
    x = pt.matrix("x", dtype="float32")
    y = pt.vector("y", dtype="int32")
    log_p = pt.special.log_softmax(x, axis=-1)[pt.arange(y.shape[0]), y]
    outputs = [pt.special.softmax(x, axis=-1), *pytensor.grad(-log_p.sum(), [x])]
    fn = _compile([x, y], outputs, backends.resolve("c").apply())
    graph_ops = [str(n.op) for n in fn.maker.fgraph.toposort() if isinstance(n.op, OpFromGraph)]
    assert not graph_ops, graph_ops
    xv = np.random.default_rng(2).normal(size=(4, 10)).astype(np.float32) * 30
    yv = np.array([0, 3, 9, 3], dtype=np.int32)
    e = np.exp(xv - xv.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    probabilities, gradient = fn(xv, yv)
    np.testing.assert_allclose(probabilities, p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gradient, p - np.eye(10, dtype=np.float32)[yv], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["NUMBA", "CVM"])
def test_im2col_and_col2im_are_adjoint_when_compiled(mode, rng):
    x = pt.tensor4("x", dtype="float64")
    y = pt.matrix("y", dtype="float64")
    fn = _compile([x, y], [ops.Im2Col(3, 2)(x), ops.Col2Im(3, 2)(y, x)], mode)
    xv = rng.normal(size=(2, 3, 6, 5))
    yv = rng.normal(size=(3 * 3 * 2, 2 * 4 * 4))
    columns, back = fn(xv, yv)
    expected = ops.im2col_columns(xv, xv.shape[1:], 3, 2, np.stack)
    np.testing.assert_array_equal(columns, expected)
    np.testing.assert_allclose(np.sum(columns * yv), np.sum(xv * back), rtol=1e-10)


@pytest.mark.parametrize("mode", ["NUMBA", "CVM"])
def test_conv_pool_gradient_matches_finite_differences(mode, rng):
    xv = rng.normal(size=(2, *IMAGE))
    wv = rng.normal(size=FILTERS)

    def conv_pool(x, w):
        x = pt.specify_shape(x, (None, *IMAGE))
        w = pt.specify_shape(w, FILTERS)
        return ops.conv_pool(x, w, image_shape=IMAGE, filter_shape=FILTERS, poolsize=POOL)

    verify_grad(conv_pool, [xv, wv], rng=rng, mode=mode, eps=1e-6)
