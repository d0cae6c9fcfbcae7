"""convnet's own CPU kernel (convnet.runtime.kernel) and the Ops it serves (ConvPool for
evaluation; ConvPoolTrain and its gradient Ops for training): against the loop/scipy
reference, with and without the kernel, their gradients numerically, the build, and whole
networks' evaluation and training against the XLA formulation."""

from __future__ import annotations

import os
import platform
import shutil

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from convnet import ConvPoolLayer, Network, SoftmaxLayer
from convnet.book import layers_for
from convnet.errors import ArgumentError
from convnet.ops import conv_pool, conv_pool_train
from convnet.runtime import backend as backends
from convnet.runtime import kernel
from tests import reference
from tests.devices import device_for, on_one_core_and_all

CASES = [  # (N, C, H, W), (F, kh, kw), pool: net C's layers, ragged borders, > 48 filters
    ((3, 1, 28, 28), (20, 5, 5), (2, 2)),
    ((2, 20, 12, 12), (40, 5, 5), (2, 2)),
    ((2, 3, 9, 11), (50, 4, 3), (3, 2)),
    ((1, 2, 6, 6), (5, 6, 6), (1, 1)),
    # The weight gradient of short kernel rows (kw * c <= 8) by taps, over every window
    # place: one channel with ragged borders and a row of 8; 9 kernel rows; 100 filters
    # (7 vectors: more than one block of filter vectors).
    ((2, 1, 11, 13), (7, 3, 8), (3, 2)),
    ((1, 1, 12, 10), (3, 9, 2), (1, 1)),
    ((1, 1, 8, 8), (100, 3, 3), (2, 2)),
    # Channels-last runs of kw * c floats, for both gradients: 3 x 3 (one vector, its tail
    # reading the next pixels), 17 x 1 and 17 x 3 (2 and 4 vectors), 5 x 33 (11 vectors:
    # two blocks of segments).
    ((2, 3, 9, 9), (10, 4, 3), (2, 2)),
    ((1, 1, 20, 20), (4, 3, 17), (2, 2)),
    ((2, 3, 7, 19), (9, 2, 17), (1, 2)),
    ((1, 33, 7, 7), (6, 4, 5), (2, 2)),
    # The images' gradient, a kernel row at a time over each position's maxima: 5 and 9
    # channels with ragged pooling; 4 channels with 7 kernel rows; 30, 44 and 50 channels.
    ((2, 5, 9, 10), (7, 3, 2), (2, 3)),
    ((1, 9, 8, 8), (3, 2, 4), (3, 3)),
    ((2, 4, 9, 8), (6, 7, 1), (1, 2)),
    ((2, 30, 7, 7), (11, 3, 3), (2, 2)),
    ((1, 44, 6, 7), (5, 3, 2), (2, 2)),
    ((1, 50, 6, 6), (4, 2, 2), (2, 2)),
    # The forward by bands of positions (few filters, wide rows; AVX-512): ragged windows of
    # 3 x 2 on 2 channels, 16 pooled columns (a band's whole vector), 8 filters at a time
    # (3 vectors a band), windows of 3 x 1 with a ragged last band (net C's first layer is
    # the first case above).
    ((2, 2, 17, 23), (5, 4, 4), (3, 2)),
    ((1, 1, 36, 36), (4, 5, 5), (2, 2)),
    ((2, 1, 6, 10), (3, 3, 3), (2, 2)),
    ((2, 3, 15, 18), (17, 3, 3), (3, 1)),
]
HAS_COMPILER = platform.machine().lower() in ("x86_64", "amd64") and any(
    shutil.which(name) for name in ("c++", "g++", "clang++")
)


@pytest.fixture
def fresh_build(monkeypatch):
    """Forget this process's build, and again afterwards (the next test rebuilds or reloads)."""

    def forget():
        monkeypatch.setattr(kernel, "_build", None)
        monkeypatch.setattr(kernel, "_result", {})

    forget()
    yield forget
    forget()


def _conv_pool_function(backend, image_shape, filter_shape, pool):
    mode = backends.resolve(backend, device_for(backend)).apply()
    x = pt.tensor4("x", dtype="float32")
    w = pt.tensor4("w", dtype="float32")
    out = conv_pool(x, w, image_shape=image_shape, filter_shape=filter_shape, poolsize=pool)
    return pytensor.function([x, w], out, mode=mode)


def _check_against_reference(backend, rng):
    for (n, c, h, w), (f, kh, kw), pool in CASES:
        fn = _conv_pool_function(backend, (c, h, w), (f, c, kh, kw), pool)
        xv = rng.normal(size=(n, c, h, w)).astype(np.float32)
        wv = rng.normal(size=(f, c, kh, kw)).astype(np.float32)
        want = reference.max_pool(reference.conv_valid(xv, wv), pool)
        np.testing.assert_allclose(np.asarray(fn(xv, wv)), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["c", "jax"])
def test_conv_pool_matches_reference(backend, rng):
    """JAX: the kernel where it builds; C: the Op's NumPy perform."""
    _check_against_reference(backend, rng)


def test_conv_pool_without_the_kernel_matches_reference(rng, fresh_build, monkeypatch):
    monkeypatch.setenv("CONVNET_KERNEL", "0")
    assert kernel.conv_pool_target() is None
    assert "CONVNET_KERNEL=0" in kernel.why_not()
    _check_against_reference("jax", rng)


@pytest.mark.skipif(not HAS_COMPILER, reason="needs an x86-64 CPU and a C++ compiler")
def test_kernel_builds_where_a_compiler_exists():
    assert kernel.conv_pool_target() == kernel.TARGET, kernel.why_not()


@pytest.mark.skipif(not HAS_COMPILER, reason="needs an x86-64 CPU and a C++ compiler")
def test_failed_build_falls_back_and_says_why(tmp_path, fresh_build, monkeypatch):
    failing = tmp_path / "broken-c++"
    failing.write_text("#!/bin/sh\necho 'no compiling today' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    assert kernel.enabled()
    assert kernel.conv_pool_target() is None
    assert "no compiling today" in kernel.why_not()
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))  # no half-built file


def test_conv_pool_gradient_numerically():
    """The Op's gradient is the unfused graph's: checked against finite differences."""
    rng = np.random.default_rng(5)
    verify_grad(
        lambda x, w: conv_pool(
            x, w, image_shape=(2, 7, 6), filter_shape=(3, 2, 3, 2), poolsize=(2, 2)
        ),
        [rng.normal(size=(2, 2, 7, 6)), rng.normal(size=(3, 2, 3, 2))],
        rng=rng,
        mode=backends.resolve("c", "cpu").apply(),
    )


def test_network_evaluation_is_the_same_with_and_without_the_kernel(rng, monkeypatch):
    x = rng.random((130, 784), dtype=np.float32)
    y = rng.integers(0, 10, 130).astype(np.int32)
    monkeypatch.setenv("CONVNET_CONV", "patches")
    unfused = Network(layers_for("relu", 10), 10, seed=3, backend="jax")
    monkeypatch.delenv("CONVNET_CONV")
    fused = Network(layers_for("relu", 10), 10, seed=3, backend="jax")
    expected = "fused" if kernel.enabled() else "patches"
    assert fused.layers[0].conv_implementation == expected
    assert unfused.layers[0].conv_implementation == "patches"
    # network3 starts the softmax weights at zero (every class 0.1): give both nets the
    # same random weights, so that the convolutions decide the outputs.
    weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in fused.get_weights()]
    fused.set_weights(weights)
    unfused.set_weights(weights)
    proba = fused.predict_proba(x)
    assert proba.std() > 0.01
    np.testing.assert_allclose(proba, unfused.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert fused.accuracy((x, y)) == unfused.accuracy((x, y))


def test_bad_switch_and_missing_compiler_are_named(fresh_build, monkeypatch):
    monkeypatch.setenv("CONVNET_KERNEL", "yes")
    with pytest.raises(ArgumentError, match="CONVNET_KERNEL"):
        Network(layers_for("relu", 10), 10, backend="jax")
    monkeypatch.setenv("CONVNET_KERNEL", "1")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert not kernel.enabled()
    assert "CXX='no-such-compiler-here'" in kernel.why_not()


@pytest.mark.skipif(not HAS_COMPILER, reason="needs an x86-64 CPU and a C++ compiler")
def test_damaged_cached_kernel_is_rebuilt(tmp_path, fresh_build, monkeypatch):
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path))
    built = kernel._library()  # built into the cache, not loaded
    built.write_bytes(b"not a shared library")
    assert kernel.conv_pool_target() == kernel.TARGET, kernel.why_not()
    assert built.read_bytes()[:4] == b"\x7fELF"


# -- the training pass: convolution + pooling that marks its maxima, and its gradients ----
def _training_function(backend, image_shape, filter_shape, pool):
    """(pooled, d/dx, d/dw) of sum(pooled * g) through ConvPoolTrain and its gradient Ops."""
    mode = backends.resolve(backend, device_for(backend)).apply()
    x = pt.tensor4("x", dtype="float32")
    w = pt.tensor4("w", dtype="float32")
    g = pt.tensor4("g", dtype="float32")
    out = conv_pool_train(x, w, image_shape=image_shape, filter_shape=filter_shape, poolsize=pool)
    return pytensor.function([x, w, g], [out, *pt.grad((out * g).sum(), [x, w])], mode=mode)


def _check_training_against_reference(backend, rng):
    for (n, c, h, w), (f, kh, kw), pool in CASES:
        fn = _training_function(backend, (c, h, w), (f, c, kh, kw), pool)
        xv = rng.normal(size=(n, c, h, w)).astype(np.float32)
        xv[:, :, : h // 3] = 0.0  # a blank band, as MNIST's border: windows with ties
        wv = rng.normal(size=(f, c, kh, kw)).astype(np.float32)
        conv = reference.conv_valid(xv, wv)
        gv = rng.normal(size=reference.max_pool(conv, pool).shape).astype(np.float32)
        gv[..., ::3] = 0.0  # zero gradients, as behind ReLU's zeros: skipped by the kernel
        pooled, dx, dw = fn(xv, wv, gv)
        want_dx, want_dw = reference.conv_pool_backward(xv, wv, pool, gv)
        np.testing.assert_allclose(pooled, reference.max_pool(conv, pool), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["c", "jax"])
def test_conv_pool_training_and_its_gradients_match_the_loop_reference(backend, rng):
    """JAX: the kernel's training pass, weight and image gradients; C: NumPy perform."""
    _check_training_against_reference(backend, rng)


def test_conv_pool_training_without_the_kernel_matches_the_loop_reference(
    rng, fresh_build, monkeypatch
):
    monkeypatch.setenv("CONVNET_KERNEL", "0")
    _check_training_against_reference("jax", rng)


def test_conv_pool_training_gradient_numerically():
    rng = np.random.default_rng(6)
    verify_grad(
        lambda x, w: conv_pool_train(
            x, w, image_shape=(2, 7, 6), filter_shape=(3, 2, 3, 2), poolsize=(2, 2)
        ),
        [rng.normal(size=(2, 2, 7, 6)), rng.normal(size=(3, 2, 3, 2))],
        rng=rng,
        mode=backends.resolve("c", "cpu").apply(),
    )


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "ReLU", "linear"])
def test_training_with_the_kernel_equals_the_xla_formulation(rng, monkeypatch, activation):
    """Two conv layers (the second gets an image gradient), every book activation: the
    same weights after SGD steps as the im2col graph, to float32 rounding."""
    x = rng.random((40, 784), dtype=np.float32)
    x[:, :200] = 0.0  # MNIST's blank top rows: ties in the pooling windows
    y = rng.integers(0, 10, 40).astype(np.int32)

    def layers():
        return [
            ConvPoolLayer(
                image_shape=(10, 1, 28, 28), filter_shape=(6, 1, 5, 5), activation_fn=activation
            ),
            ConvPoolLayer(
                image_shape=(10, 6, 12, 12), filter_shape=(9, 6, 5, 5), activation_fn=activation
            ),
            SoftmaxLayer(9 * 4 * 4, 10),
        ]

    monkeypatch.setenv("CONVNET_CONV", "patches")
    unfused = Network(layers(), 10, seed=2, backend="jax")
    monkeypatch.delenv("CONVNET_CONV")
    fused = Network(layers(), 10, seed=2, backend="jax")
    assert fused.layers[0].conv_implementation == ("fused" if kernel.enabled() else "patches")
    weights = [rng.normal(0, 0.1, w.shape).astype(np.float32) for w in fused.get_weights()]
    for net in (fused, unfused):
        net.set_weights(weights)
        net.SGD((x, y), 2, 10, 0.05, lmbda=0.1, verbose=False)
    for a, b in zip(fused.get_weights(), unfused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(fused.get_weights()[0], weights[0])  # it trained


def test_the_forward_by_positions_has_the_filters_paths_bits(rng):
    """Net C's first layer (20 filters) is convolved by bands of positions, the same layer
    with 64 filters by vectors of filters: each filter's maxima, and the weight gradient
    read off their places, are the same bits either way."""
    x = pt.tensor4("x", dtype="float32")
    w = pt.tensor4("w", dtype="float32")
    g = pt.tensor4("g", dtype="float32")
    images = rng.random((3, 1, 28, 28), dtype=np.float32)
    images[:, :, :6] = 0.0  # MNIST's blank top rows: ties
    filters = rng.normal(size=(64, 1, 5, 5)).astype(np.float32)
    grad = rng.normal(size=(3, 64, 12, 12)).astype(np.float32)
    results = []
    for f in (20, 64):
        out = conv_pool_train(
            x, w, image_shape=(1, 28, 28), filter_shape=(f, 1, 5, 5), poolsize=(2, 2)
        )
        mode = backends.resolve("jax", "cpu").apply()
        fn = pytensor.function([x, w, g], [out, pt.grad((out * g).sum(), w)], mode=mode)
        pooled, dw = fn(images, filters[:f], grad[:, :f])
        results.append((pooled[:, :20], dw[:20]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


THREADS_CHILD = r"""
import os, sys
os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})  # before JAX starts
import numpy as np, pytensor, pytensor.tensor as pt
from convnet.runtime import backend as backends
from convnet.ops import conv_pool_train
mode = backends.resolve("jax", "cpu").apply()
rng = np.random.default_rng(0)
x = pt.tensor4("x", dtype="float32")
w = pt.tensor4("w", dtype="float32")
out = conv_pool_train(x, w, image_shape=(20, 12, 12), filter_shape=(40, 20, 5, 5), poolsize=(2, 2))
g = rng.normal(size=(64, 40, 4, 4)).astype(np.float32)
fn = pytensor.function([x, w], pt.grad((out * g).sum(), [x, w]), mode=mode)
images = rng.random((64, 20, 12, 12), dtype=np.float32)
dx, dw = fn(images, rng.normal(size=(40, 20, 5, 5)).astype(np.float32))
# The first layer's weight gradient (by taps, in blocks shared out over the threads).
first = conv_pool_train(x, w, image_shape=(1, 28, 28), filter_shape=(20, 1, 5, 5), poolsize=(2, 2))
g1 = rng.normal(size=(64, 20, 12, 12)).astype(np.float32)
fn1 = pytensor.function([x, w], pt.grad((first * g1).sum(), w), mode=mode)
digits = rng.random((64, 1, 28, 28), dtype=np.float32)
digits[:, :, :8] = 0.0  # a blank band: ties
dw1 = fn1(digits, rng.normal(size=(20, 1, 5, 5)).astype(np.float32))
np.save(sys.argv[1], np.concatenate([dx.ravel(), dw.ravel(), dw1.ravel()]))
"""


@pytest.mark.skipif(
    not HAS_COMPILER or len(os.sched_getaffinity(0)) < 2, reason="needs the kernel and 2 cores"
)
def test_the_kernels_gradients_do_not_depend_on_the_number_of_threads(tmp_path):
    """Each image's weight gradient is summed in image order, whichever thread made it:
    a run, and a resumed run, repeat bit for bit on one core or many."""
    results = on_one_core_and_all(THREADS_CHILD, tmp_path)
    np.testing.assert_array_equal(results[0], results[1])
