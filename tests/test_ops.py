"""conv2d and max_pool against loop/scipy references, on every backend, plus gradients."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from convnet.ops import conv2d, max_pool
from convnet.runtime import backend as backends
from tests import reference
from tests.devices import device_for

CASES = [  # (N, C, H, W), (F, kh, kw), pool
    ((2, 1, 7, 9), (3, 3, 2), (2, 2)),
    ((3, 4, 9, 7), (5, 5, 3), (2, 3)),
    ((1, 3, 6, 6), (2, 1, 1), (3, 3)),
]


@pytest.mark.parametrize("backend", ["c", "numba", "jax"])
def test_conv_and_pool_match_reference(backend, rng):
    mode = backends.resolve(backend, device_for(backend)).apply()
    for (n, c, h, w), (f, kh, kw), pool in CASES:
        x = pt.tensor4("x", dtype="float32")
        filters = pt.tensor4("w", dtype="float32")
        conv = conv2d(x, filters, image_shape=(c, h, w), filter_shape=(f, c, kh, kw))
        pooled = max_pool(conv, image_shape=(f, h - kh + 1, w - kw + 1), poolsize=pool)
        fn = pytensor.function([x, filters], [conv, pooled], mode=mode)
        xv = rng.normal(size=(n, c, h, w)).astype(np.float32)
        wv = rng.normal(size=(f, c, kh, kw)).astype(np.float32)
        got_conv, got_pool = (np.asarray(v) for v in fn(xv, wv))
        want_conv = reference.conv_valid(xv, wv)
        np.testing.assert_allclose(got_conv, want_conv, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(
            got_pool, reference.max_pool(want_conv, pool), rtol=1e-5, atol=1e-4
        )


def test_conv_is_true_convolution_not_correlation(rng):
    """Theano's conv2d flipped kernels; so does ours (an asymmetric kernel tells)."""
    x = pt.tensor4("x", dtype="float64")
    w = pt.tensor4("w", dtype="float64")
    out = conv2d(x, w, image_shape=(1, 5, 5), filter_shape=(1, 1, 2, 2)).eval(
        {x: np.arange(25.0).reshape(1, 1, 5, 5), w: np.array([[[[1.0, 0.0], [0.0, 0.0]]]])}
    )
    # Convolution with a kernel whose only weight is at [0, 0] picks x[i + 1, j + 1].
    np.testing.assert_array_equal(out[0, 0], np.arange(25.0).reshape(5, 5)[1:, 1:])


def test_pool_ignores_ragged_border():
    x = pt.tensor4("x", dtype="float64")
    value = np.arange(35.0).reshape(1, 1, 5, 7)
    out = max_pool(x, image_shape=(1, 5, 7), poolsize=(2, 3)).eval({x: value})
    np.testing.assert_array_equal(out[0, 0], [[9.0, 12.0], [23.0, 26.0]])


@pytest.mark.parametrize("pool", [(2, 2), (1, 1)])
def test_gradients_numerically(pool):
    rng = np.random.default_rng(7)
    c, h, w, f, kh, kw = 2, 7, 6, 3, 3, 2
    shape_after = (f, h - kh + 1, w - kw + 1)

    def layer(x, filters):
        conv = conv2d(x, filters, image_shape=(c, h, w), filter_shape=(f, c, kh, kw))
        return max_pool(conv, image_shape=shape_after, poolsize=pool)

    verify_grad(
        layer,
        [rng.normal(size=(2, c, h, w)), rng.normal(size=(f, c, kh, kw))],
        rng=rng,
        mode=backends.resolve("c", "cpu").apply(),
    )
