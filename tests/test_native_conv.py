"""The native Conv2D Op (cuDNN under JAX on GPUs) against the reference and the im2col graph.

CI has no GPU, so this runs the Op's JAX implementation on JAX's CPU device: the same
lax.conv program XLA would give cuDNN, plus the Op's NumPy perform."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from convnet.ops import Col2Im, Im2Col, conv2d, conv2d_op
from convnet.runtime import backend as backends
from convnet.runtime import kernel
from tests import reference
from tests.devices import device_for


@pytest.mark.parametrize("backend", ["c", "jax"])
def test_native_conv_matches_reference(backend, rng):
    mode = backends.resolve(backend, device_for(backend)).apply()
    x = pt.tensor4("x", dtype="float32")
    w = pt.tensor4("w", dtype="float32")
    fn = pytensor.function([x, w], conv2d_op(x, w), mode=mode)
    xv = rng.normal(size=(2, 3, 9, 7)).astype(np.float32)
    wv = rng.normal(size=(4, 3, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(fn(xv, wv)), reference.conv_valid(xv, wv), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("implementation", ["native", "patches"])
@pytest.mark.parametrize("backend", ["c", "jax"])
def test_conv_ops_match_reference_with_numerical_gradients(implementation, backend, rng):
    """The Ops' NumPy ``perform`` (C mode) and their JAX implementations alike."""
    mode = backends.resolve(backend, device_for(backend)).apply()
    x = pt.tensor4("x", dtype="float32")
    w = pt.tensor4("w", dtype="float32")
    out = conv2d(
        x, w, image_shape=(3, 9, 7), filter_shape=(4, 3, 5, 3), implementation=implementation
    )
    fn = pytensor.function([x, w], out, mode=mode)
    xv = rng.normal(size=(2, 3, 9, 7)).astype(np.float32)
    wv = rng.normal(size=(4, 3, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(fn(xv, wv)), reference.conv_valid(xv, wv), rtol=1e-4, atol=1e-4
    )
    grad_rng = np.random.default_rng(3)
    verify_grad(
        lambda x, w: conv2d(
            x, w, image_shape=(2, 6, 5), filter_shape=(3, 2, 3, 2), implementation=implementation
        ),
        [grad_rng.normal(size=(2, 2, 6, 5)), grad_rng.normal(size=(3, 2, 3, 2))],
        rng=grad_rng,
        mode=mode,
    )


@pytest.mark.parametrize("backend", ["c", "jax"])
def test_col2im_is_the_transpose_of_im2col(backend, rng):
    """<im2col(x), y> == <x, col2im(y)> for random x, y: the gradient is the adjoint."""
    mode = backends.resolve(backend, device_for(backend)).apply()
    x = pt.tensor4("x", dtype="float64")
    y = pt.matrix("y", dtype="float64")
    fn = pytensor.function([x, y], [Im2Col(3, 2)(x), Col2Im(3, 2)(y, x)], mode=mode)
    xv = rng.normal(size=(2, 3, 6, 5))
    yv = rng.normal(size=(3 * 3 * 2, 2 * 4 * 4))
    columns, back = fn(xv, yv)
    assert np.asarray(columns).shape == yv.shape and np.asarray(back).shape == xv.shape
    np.testing.assert_allclose(np.sum(columns * yv), np.sum(xv * np.asarray(back)), rtol=1e-10)


@pytest.mark.parametrize(
    ("backend", "steps_per_call"), [("jax", 1), ("jax", 2), ("c", 1), ("numba", 1)]
)
def test_native_and_im2col_train_alike(monkeypatch, backend, steps_per_call):
    """Two conv layers (a float64 Alloc once broke the second one's input gradient), one
    and several steps per call; on the C and Numba backends the Ops run their C code and
    Numba loops (linkers.py)."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 144), dtype=np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    results = {}
    for implementation in ("im2col", "native", "patches"):
        monkeypatch.setenv("CONVNET_CONV", implementation)
        net = Network(
            [
                ConvPoolLayer(
                    filter_shape=(4, 1, 3, 3), image_shape=(4, 1, 12, 12), activation_fn=ReLU
                ),
                # A second conv layer: its input gradient is the "full" convolution.
                ConvPoolLayer(
                    filter_shape=(4, 4, 2, 2), image_shape=(4, 4, 5, 5), activation_fn=ReLU
                ),
                FullyConnectedLayer(4 * 2 * 2, 12, ReLU),
                SoftmaxLayer(12, 10),
            ],
            4,
            backend=backend,
            seed=1,
        )
        assert {layer.conv_implementation for layer in net.layers[:2]} == {implementation}
        net.SGD((x, y), 2, 4, 0.1, verbose=False, steps_per_call=steps_per_call)
        results[implementation] = net.get_weights()
    for other in ("native", "patches"):
        for a, b in zip(results["im2col"], results[other], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=other)


def test_networks_choose_the_im2col_op_on_every_backend_and_device(monkeypatch):
    monkeypatch.delenv("CONVNET_CONV", raising=False)
    gpu = backends.Backend("jax", "gpu")
    assert gpu.conv_implementation == "patches"  # measured faster than cuDNN on an H200
    fused = "fused" if kernel.enabled() else "patches"  # convnet's kernel is CPU-only
    assert backends.Backend("jax", "cpu").conv_implementation == fused
    monkeypatch.setenv("CONVNET_CONV", "native")
    assert gpu.conv_implementation == "patches"  # a backend's choices are fixed once made
    again = backends.Backend("jax", "gpu")
    assert again.conv_implementation == "native"
    monkeypatch.delenv("CONVNET_CONV")
    for name in ("c", "numba"):  # the Op has C and Numba implementations (linkers.py)
        assert backends.Backend(name, "cpu").conv_implementation == "patches"
    monkeypatch.setenv("CONVNET_CONV", "fft")
    with pytest.raises(ValueError, match="CONVNET_CONV"):
        backends.Backend("jax", "cpu").conv_implementation  # noqa: B018
