"""Convolution and max-pooling built from PyTensor primitives.

PyTensor 3 ships neither a CNN ``conv2d`` nor pooling. Both are written here as small
graphs of strided slices, one ``dot`` and a reshape+max, so that every backend (C, Numba,
JAX) compiles them and PyTensor derives their gradients. Measured on a 2-core machine,
this im2col formulation beat three others (loops of dots, a numpy ``perform`` Op, and
tensordot over taps) in every mode.
"""

from __future__ import annotations

import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable


def conv_output_shape(image_hw: tuple[int, int], filter_hw: tuple[int, int]) -> tuple[int, int]:
    """Height and width of a stride-1 "valid" convolution."""
    return image_hw[0] - filter_hw[0] + 1, image_hw[1] - filter_hw[1] + 1


def pool_output_shape(image_hw: tuple[int, int], poolsize: tuple[int, int]) -> tuple[int, int]:
    """Height and width after non-overlapping pooling that ignores a ragged border."""
    return image_hw[0] // poolsize[0], image_hw[1] // poolsize[1]


def conv2d(
    images: TensorVariable,
    filters: TensorVariable,
    *,
    image_shape: tuple[int, int, int],
    filter_shape: tuple[int, int, int, int],
) -> TensorVariable:
    """Stride-1 valid 2-D *convolution* (kernels flipped, as Theano's ``conv2d`` did).

    ``images`` is (batch, channels, height, width) with any batch size; ``image_shape``
    gives the static (channels, height, width) and ``filter_shape`` is
    (n_filters, channels, kh, kw). Returns (batch, n_filters, out_h, out_w).

    The kernel taps become rows of one matrix (im2col) so the whole layer is a single
    GEMM: (n_filters, channels*kh*kw) @ (channels*kh*kw, batch*out_h*out_w).
    """
    channels, height, width = image_shape
    n_filters, _, kh, kw = filter_shape
    out_h, out_w = conv_output_shape((height, width), (kh, kw))
    per_channel_first = images.dimshuffle(1, 0, 2, 3)
    taps = [
        per_channel_first[:, :, a : a + out_h, b : b + out_w] for a in range(kh) for b in range(kw)
    ]
    columns = pt.stack(taps, axis=1).reshape((channels * kh * kw, -1))
    flipped = filters[:, :, ::-1, ::-1].reshape((n_filters, channels * kh * kw))
    out = pt.dot(flipped, columns).reshape((n_filters, -1, out_h, out_w))
    return out.dimshuffle(1, 0, 2, 3)


def max_pool(
    images: TensorVariable,
    *,
    image_shape: tuple[int, int, int],
    poolsize: tuple[int, int],
) -> TensorVariable:
    """Non-overlapping max-pooling; rows/columns that don't fill a window are dropped.

    That is network3's ``pool_2d(..., ignore_border=True)``. ``image_shape`` is the static
    (channels, height, width); the batch size may vary. Reshapes use only static sizes
    and -1, which JAX requires.
    """
    ph, pw = poolsize
    if (ph, pw) == (1, 1):
        return images
    channels, height, width = image_shape
    out_h, out_w = pool_output_shape((height, width), poolsize)
    cropped = images[:, :, : out_h * ph, : out_w * pw]
    windows = cropped.reshape((-1, out_h, ph, out_w, pw))
    return windows.max(axis=(2, 4)).reshape((-1, channels, out_h, out_w))
