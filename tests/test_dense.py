"""convnet.dense and its kernel (runtime/kernel/dense.cc): the product, its gradients, the
L2 term's sum of squares and the fused SGD step (plain, momentum, Nesterov's; with the sum
of squares) against NumPy in float64 (odd shapes, more rows than one register block, rows
zeroed by dropout), with and without the kernel; the gradients numerically; where the
program calls the kernel's product; the same bits on one core or many; whole networks
trained with the fused step against PyTensor's own product; and no copy of the weights
for the L2 term."""

from __future__ import annotations

import os
import platform
import shutil

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from convnet import FullyConnectedLayer, Network, SoftmaxLayer, dense
from convnet.optimizers import SGD, Adam
from convnet.runtime import backend as backends
from convnet.runtime import kernel
from tests.devices import on_one_core_and_all

HAS_COMPILER = platform.machine().lower() in ("x86_64", "amd64") and any(
    shutil.which(name) for name in ("c++", "g++", "clang++")
)
# (m, k, n): the book's FC1000 layers at mini-batch 10; columns not a whole number of
# vectors (of 8 or 16) and fewer than one; rows beyond one block of 12 (and the most the
# kernel takes, 16, with columns a whole number of its 32); rows of w one beyond a block of
# 16; more rows than the kernel takes (XLA's); a single row.
SHAPES = [
    (10, 640, 1000),
    (10, 1000, 1000),
    (7, 333, 77),
    (13, 50, 37),
    (16, 70, 96),
    (4, 17, 33),
    (25, 9, 5),
    (1, 3, 1),
]


def _operands(rng, m, k, n):
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, ::3] = 0.0  # dropout's zeros
    w = rng.standard_normal((k, n)).astype(np.float32)
    g = rng.standard_normal((m, n)).astype(np.float32)
    return x, w, g


def _functions(mode):
    x, w, g, v = (pt.matrix(name, dtype="float32") for name in "xwgv")
    eta, decay, mu, nesterov = (pt.scalar(n, dtype="float32") for n in ("eta", "decay", "mu", "n"))
    return {
        "dense": pytensor.function([x, w], dense.Dense()(x, w), mode=mode),
        "grad_x": pytensor.function([g, w], dense.DenseGradX()(g, w), mode=mode),
        "grad_w": pytensor.function([x, g], dense.DenseGradW()(x, g), mode=mode),
        "sgd": pytensor.function(
            [w, x, g, eta, decay], dense.DenseSgd()(w, x, g, eta, decay), mode=mode
        ),
        "momentum": pytensor.function(
            [w, x, g, eta, decay, v, mu, nesterov],
            dense.DenseSgd(momentum=True)(w, x, g, eta, decay, v, mu, nesterov),
            mode=mode,
        ),
        "sgd_squares": pytensor.function(
            [w, x, g, eta, decay], dense.DenseSgd(squares=True)(w, x, g, eta, decay), mode=mode
        ),
        "momentum_squares": pytensor.function(
            [w, x, g, eta, decay, v, mu, nesterov],
            dense.DenseSgd(momentum=True, squares=True)(w, x, g, eta, decay, v, mu, nesterov),
            mode=mode,
        ),
        "squared_norm": pytensor.function([w], dense.squared_norm(w), mode=mode),
    }


def _check(functions, rng):
    for m, k, n in SHAPES:
        x, w, g = _operands(rng, m, k, n)
        x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
        tol = {"rtol": 1e-5, "atol": 1e-4 * np.sqrt(max(k, n))}
        np.testing.assert_allclose(functions["dense"](x, w), x64 @ w64, **tol)
        np.testing.assert_allclose(functions["grad_x"](g, w), g64 @ w64.T, **tol)
        np.testing.assert_allclose(functions["grad_w"](x, g), x64.T @ g64, **tol)
        dx, stepped = functions["sgd"](w, x, g, np.float32(0.03), np.float32(1e-3))
        np.testing.assert_allclose(dx, g64 @ w64.T, **tol)
        grad = x64.T @ g64 + 1e-3 * w64
        np.testing.assert_allclose(stepped, w64 - 0.03 * grad, rtol=1e-5, atol=1e-5)
        v = rng.standard_normal(w.shape).astype(np.float32)
        for nesterov in (0.0, 1.0):
            results = functions["momentum"](
                w,
                x,
                g,
                np.float32(0.03),
                np.float32(1e-3),
                v,
                np.float32(0.9),
                np.float32(nesterov),
            )
            moved = 0.9 * v.astype(np.float64) - 0.03 * grad
            want = w64 + 0.9 * moved - 0.03 * grad if nesterov else w64 + moved
            np.testing.assert_allclose(results[0], g64 @ w64.T, **tol)
            np.testing.assert_allclose(results[1], want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(results[2], moved, rtol=1e-5, atol=1e-5)
        # The L2 term's sum of squares of w before the step, from the same pass.
        squares = np.sum(w64**2)
        np.testing.assert_allclose(functions["squared_norm"](w), squares, rtol=1e-5)
        fused = functions["sgd_squares"](w, x, g, np.float32(0.03), np.float32(1e-3))
        np.testing.assert_allclose(fused[1], stepped, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fused[2], squares, rtol=1e-5)
        args = (np.float32(0.03), np.float32(1e-3), v, np.float32(0.9), np.float32(0.0))
        fused = functions["momentum_squares"](w, x, g, *args)
        np.testing.assert_allclose(fused[3], squares, rtol=1e-5)


@pytest.mark.parametrize("backend", ["jax", "c"])
def test_the_dense_ops_match_numpy(backend, rng):
    """Under JAX on a CPU: the kernel; under the C backend: NumPy (``perform``)."""
    _check(_functions(backends.resolve(backend, "cpu").apply()), rng)


def test_the_dense_ops_without_the_kernel_match_numpy(rng, monkeypatch):
    monkeypatch.setattr(kernel, "dense_target", lambda: None)
    _check(_functions(backends.resolve("jax", "cpu").apply()), rng)


@pytest.mark.skipif(not HAS_COMPILER, reason="needs the kernel")
def test_the_product_is_the_kernels_at_a_training_batch_and_xlas_beyond():
    """From dense.MIN_FORWARD_ROWS to MAX_FORWARD_ROWS rows the program calls the kernel;
    outside, a GEMM."""
    x, w = (pt.matrix(name, dtype="float32") for name in "xw")
    fn = pytensor.function([x, w], dense.dense(x, w), mode=backends.resolve("jax", "cpu").apply())
    weights = np.ones((30, 20), np.float32)
    low, high = dense.MIN_FORWARD_ROWS, dense.MAX_FORWARD_ROWS
    for rows, kernel_call in ((low - 1, False), (low, True), (high, True), (high + 1, False)):
        text = fn.vm.jit_fn.lower(np.ones((rows, 30), np.float32), weights).as_text()
        assert ("convnet_dense_forward" in text) == kernel_call, rows
        assert ("stablehlo.dot_general" in text) != kernel_call, rows


def test_the_products_gradient_numerically():
    rng = np.random.default_rng(3)
    x, w, _ = _operands(rng, 4, 6, 5)
    verify_grad(
        lambda a, b: dense.dense(a, b), [x.astype(np.float64), w.astype(np.float64)], rng=rng
    )
    verify_grad(dense.squared_norm, [w.astype(np.float64)], rng=rng)


def _net(implementation, monkeypatch, p_dropout=0.5):
    monkeypatch.setenv("CONVNET_DENSE", implementation)
    layers = [
        FullyConnectedLayer(784, 200, "relu", p_dropout=p_dropout),  # 156,800 weights: large
        SoftmaxLayer(200, 10, p_dropout=p_dropout),
    ]
    return Network(layers, 10, seed=4, backend="jax")


def _step(net, optimizer, lmbda=0.5):
    """``net``'s compiled one-step training function on 30 random images."""
    rng = np.random.default_rng(0)
    data = net.to_device(
        (rng.random((30, 784), dtype=np.float32), rng.integers(0, 10, 30).astype(np.int32)), "t"
    )
    order = net.backend.shared(np.arange(30), "order")
    eta = net.backend.shared(np.float32(0.1), "eta")
    cost = net.backend.shared(np.float32(0.0), "cost")
    shapes = [p.type.shape for p in net.params]
    state = [net.backend.shared(v, f"s{i}") for i, v in enumerate(optimizer.initial_state(shapes))]
    return net.train_function(data, order, eta, lmbda, cost, optimizer, state)


def _fused_ops(net, optimizer):
    return [type(node.op).__name__ for node in _step(net, optimizer).maker.fgraph.toposort()]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_training_with_the_kernel_equals_pytensors_product(rng, monkeypatch, optimizer):
    """SGD (plain, momentum, Nesterov's) takes the fused step, Adam the product's gradients:
    either way the weights after two epochs are PyTensor's own to float32 rounding."""
    x = rng.random((60, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60).astype(np.int32)
    step = {
        "sgd": SGD(0.1),
        "momentum": SGD(0.1, momentum=0.5),
        "nesterov": SGD(0.1, momentum=0.5, nesterov=True),
        "adam": Adam(0.001),
    }[optimizer]
    nets = {form: _net(form, monkeypatch) for form in ("kernel", "dot")}
    assert nets["kernel"].layers[0].dense_implementation == "kernel"
    assert nets["kernel"].layers[1].dense_implementation == "dot"  # 2,000 weights: XLA's
    ops = _fused_ops(nets["kernel"], step)
    assert ("DenseSgd" in ops) == (optimizer != "adam") and "Dense" in ops
    # The L2 term's sum comes from the fused pass, or (Adam) is its own Op.
    assert ("SquaredNorm" in ops) == (optimizer == "adam")
    assert "Dense" not in _fused_ops(nets["dot"], step)
    for net in nets.values():
        net.fit((x, y), epochs=2, optimizer=step, lmbda=0.5, verbose=False)
    for a, b in zip(nets["kernel"].get_weights(), nets["dot"].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    initial = _net("dot", monkeypatch).get_weights()[0]
    assert not np.allclose(nets["kernel"].get_weights()[0], initial)  # it trained


def _weight_copies(net, lmbda):
    """Lines of the compiled program of 3 SGD steps (one XLA loop) copying the first
    layer's weights."""
    loop = net.backend.repeat(_step(net, SGD(0.1), lmbda), 3)
    text = loop.lower(np.array(0, dtype=np.int64)).compile().as_text()
    return [line for line in text.splitlines() if "f32[784,200]{1,0} copy(" in line]


@pytest.mark.skipif(not HAS_COMPILER, reason="needs the kernel")
def test_the_l2_term_costs_no_copy_of_the_weights(monkeypatch):
    """The weights are stepped in place: a sum of their squares read outside the fused pass
    made XLA copy them (twice) before every step; taken in the pass, it adds no copy."""
    net = _net("kernel", monkeypatch)
    assert len(_weight_copies(net, 0.5)) == len(_weight_copies(net, 0.0))


THREADS_CHILD = r"""
import os, sys
os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})  # before JAX starts
import numpy as np, pytensor, pytensor.tensor as pt
from convnet import dense
from convnet.runtime import backend as backends
mode = backends.resolve("jax", "cpu").apply()
rng = np.random.default_rng(0)
x, w, g = (pt.matrix(n, dtype="float32") for n in "xwg")
fn = pytensor.function(
    [x, w, g],
    [dense.dense(x, w), dense.DenseGradX()(g, w), dense.DenseGradW()(x, g),
     *dense.DenseSgd(squares=True)(w, x, g, np.float32(0.03), np.float32(1e-3)),
     *dense.DenseSgd(momentum=True)(w, x, g, np.float32(0.03), np.float32(1e-3), 0.5 * w,
                                    np.float32(0.9), np.float32(1))],
    mode=mode,
)
arrays = fn(rng.standard_normal((10, 700)).astype(np.float32),
            rng.standard_normal((700, 1000)).astype(np.float32),
            rng.standard_normal((10, 1000)).astype(np.float32))
np.save(sys.argv[1], np.concatenate([a.ravel() for a in arrays]))
"""


@pytest.mark.skipif(
    not HAS_COMPILER or len(os.sched_getaffinity(0)) < 2, reason="needs the kernel and 2 cores"
)
def test_the_dense_kernels_do_not_depend_on_the_number_of_threads(tmp_path):
    """Each output is one sum in a fixed order, whichever thread makes it."""
    results = on_one_core_and_all(THREADS_CHILD, tmp_path)
    np.testing.assert_array_equal(results[0], results[1])
