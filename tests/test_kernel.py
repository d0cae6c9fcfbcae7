"""convnet's own CPU kernel (convnet.kernel) and the ConvPool Op it serves: against the
loop/scipy reference, with and without the kernel, its gradient, its build, and a whole
network's evaluation against the XLA formulation."""

from __future__ import annotations

import platform
import shutil

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from convnet import Network, kernel
from convnet import backend as backends
from convnet.book import layers_for
from convnet.errors import ArgumentError
from convnet.ops import conv_pool
from tests import reference
from tests.devices import device_for

CASES = [  # (N, C, H, W), (F, kh, kw), pool: net C's layers, ragged borders, > 48 filters
    ((3, 1, 28, 28), (20, 5, 5), (2, 2)),
    ((2, 20, 12, 12), (40, 5, 5), (2, 2)),
    ((2, 3, 9, 11), (50, 4, 3), (3, 2)),
    ((1, 2, 6, 6), (5, 6, 6), (1, 1)),
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
    mode = backends.resolve(backend, device_for(backend)).mode  # registers the JAX implementations
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
        mode=backends.resolve("c", "cpu").mode,
    )


def test_network_evaluation_is_the_same_with_and_without_the_kernel(rng, monkeypatch):
    x = rng.random((130, 784), dtype=np.float32)
    y = rng.integers(0, 10, 130).astype(np.int32)
    monkeypatch.setenv("CONVNET_CONV", "patches")
    unfused = Network(layers_for("relu", 10), 10, seed=3, backend="jax")
    monkeypatch.delenv("CONVNET_CONV")
    fused = Network(layers_for("relu", 10), 10, seed=3, backend="jax")
    expected = "fused" if kernel.enabled() else "patches"
    assert fused.layers[0].eval_conv_implementation == expected
    assert unfused.layers[0].eval_conv_implementation == "patches"
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
