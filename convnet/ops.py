"""Convolution and max-pooling built from PyTensor primitives.

PyTensor 3 ships neither a CNN ``conv2d`` nor pooling. Both are written here as small
graphs of strided slices, one ``dot`` and a reshape+max, so that every backend (C, Numba,
JAX) compiles them and PyTensor derives their gradients. Measured on a 2-core machine,
this im2col formulation beat three others (loops of dots, a numpy ``perform`` Op, and
tensordot over taps) in every mode. The Ops below serve particular backends: ``Im2Col``
(JAX on CPUs), ``Conv2D`` (cuDNN on GPUs) and ``ConvPool`` (convnet's own CPU kernel, for
evaluation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.c.op import COp
from pytensor.tensor.variable import TensorVariable


def conv_output_shape(image_hw: tuple[int, ...], filter_hw: tuple[int, ...]) -> tuple[int, int]:
    """Height and width of a stride-1 "valid" convolution."""
    return image_hw[0] - filter_hw[0] + 1, image_hw[1] - filter_hw[1] + 1


def pool_output_shape(image_hw: tuple[int, ...], poolsize: tuple[int, ...]) -> tuple[int, int]:
    """Height and width after non-overlapping pooling that ignores a ragged border."""
    return image_hw[0] // poolsize[0], image_hw[1] // poolsize[1]


def conv2d(
    images: TensorVariable,
    filters: TensorVariable,
    *,
    image_shape: tuple[int, ...],
    filter_shape: tuple[int, ...],
    implementation: str = "im2col",
) -> TensorVariable:
    """Stride-1 valid 2-D *convolution* (kernels flipped, as Theano's ``conv2d`` did).

    ``images`` is (batch, channels, height, width) with any batch size; ``image_shape``
    gives the static (channels, height, width) and ``filter_shape`` is
    (n_filters, channels, kh, kw). Returns (batch, n_filters, out_h, out_w).

    The kernel taps become rows of one matrix (im2col) so the whole layer is a single
    GEMM: (n_filters, channels*kh*kw) @ (channels*kh*kw, batch*out_h*out_w).
    ``implementation="native"`` uses the :class:`Conv2D` Op instead (cuDNN under JAX on
    a GPU).
    """
    if implementation == "native":
        images = pt.specify_shape(images, (None, *image_shape))
        return conv2d_op(images, pt.specify_shape(filters, filter_shape))
    channels, height, width = image_shape
    n_filters, _, kh, kw = filter_shape
    out_h, out_w = conv_output_shape((height, width), (kh, kw))
    if implementation == "patches":
        columns = Im2Col(kh, kw)(pt.specify_shape(images, (None, *image_shape)))
    else:
        columns = im2col_columns(images, image_shape, kh, kw, pt.stack)
    flipped = filters[:, :, ::-1, ::-1].reshape((n_filters, channels * kh * kw))
    out = pt.dot(flipped, columns).reshape((n_filters, -1, out_h, out_w))
    return out.dimshuffle(1, 0, 2, 3)


def max_pool(
    images: TensorVariable,
    *,
    image_shape: tuple[int, ...],
    poolsize: tuple[int, ...],
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


class Conv2D(Op):
    """Stride-1 valid true convolution as one Op, for backends with a native convolution.

    Its JAX implementation is ``lax.conv_general_dilated``, which XLA hands to cuDNN on
    NVIDIA GPUs; ``perform`` (NumPy) serves the other modes and the tests. On CPUs the
    im2col graph of :func:`conv2d` measured faster (XLA's CPU convolution ran the book's
    nets 2-3x slower), so the Op is chosen per device by :mod:`convnet.runtime.backend`.
    Gradients are convolutions again, written with this same Op.
    """

    __props__ = ()

    def make_node(self, images, filters):
        images = pt.as_tensor_variable(images)
        filters = pt.as_tensor_variable(filters)
        if images.type.ndim != 4 or filters.type.ndim != 4:
            raise TypeError("Conv2D: expected 4-D images and filters.")
        n, _, h, w = images.type.shape
        f, _, kh, kw = filters.type.shape
        out_h = None if h is None or kh is None else h - kh + 1
        out_w = None if w is None or kw is None else w - kw + 1
        out = pt.tensor(dtype=images.type.dtype, shape=(n, f, out_h, out_w))
        return Apply(self, [images, filters], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _convolve_numpy(*inputs).astype(node.outputs[0].dtype)

    def infer_shape(self, fgraph, node, shapes):
        (n, _, h, w), (f, _, kh, kw) = shapes
        return [(n, f, h - kh + 1, w - kw + 1)]

    def pullback(self, inputs, outputs, cotangents):
        images, filters = inputs
        (grad_out,) = cotangents
        kh, kw = filters.shape[2], filters.shape[3]
        # d/d images: a "full" convolution of the output gradient with the filters.
        padded = pt.zeros(
            (
                grad_out.shape[0],
                grad_out.shape[1],
                grad_out.shape[2] + 2 * (kh - 1),
                grad_out.shape[3] + 2 * (kw - 1),
            ),
            dtype=grad_out.dtype,
        )
        padded = pt.set_subtensor(
            padded[:, :, kh - 1 : kh - 1 + grad_out.shape[2], kw - 1 : kw - 1 + grad_out.shape[3]],
            grad_out,
        )
        grad_images = self(padded, filters[:, :, ::-1, ::-1].dimshuffle(1, 0, 2, 3))
        # d/d filters: correlate images with the output gradient, batch as channels.
        correlation = self(
            images.dimshuffle(1, 0, 2, 3), grad_out.dimshuffle(1, 0, 2, 3)[:, :, ::-1, ::-1]
        )
        grad_filters = correlation.dimshuffle(1, 0, 2, 3)[:, :, ::-1, ::-1]
        return [grad_images, grad_filters]


conv2d_op = Conv2D()


def conv_pool(
    images: TensorVariable,
    filters: TensorVariable,
    *,
    image_shape: tuple[int, ...],
    filter_shape: tuple[int, ...],
    poolsize: tuple[int, ...],
) -> TensorVariable:
    """``max_pool(conv2d(images, filters))`` as one :class:`ConvPool` Op (same shapes and
    arguments as those two): under JAX on a CPU, one call of convnet's own kernel."""
    return ConvPool(tuple(poolsize))(*_static(images, filters, image_shape, filter_shape))


def _static(images: Any, filters: Any, image_shape: tuple, filter_shape: tuple) -> tuple:
    """The Ops' inputs with the static shapes they need (any batch size)."""
    return pt.specify_shape(images, (None, *image_shape)), pt.specify_shape(filters, filter_shape)


class ConvPool(Op):
    """Convolution followed by max-pooling, for the evaluation path of conv layers.

    Its JAX implementation calls :mod:`convnet.runtime.kernel`'s kernel when that is built (else
    it is the im2col formulation of :func:`conv2d` in JAX); ``perform`` (NumPy) serves
    the other modes and the tests. Its gradient is that of the unfused graph, so it can
    stand anywhere :func:`conv2d` + :func:`max_pool` can.
    """

    __props__ = ("poolsize",)

    def __init__(self, poolsize: tuple[int, ...]) -> None:
        self.poolsize = (int(poolsize[0]), int(poolsize[1]))

    def make_node(self, images, filters):
        images = pt.as_tensor_variable(images)
        filters = pt.as_tensor_variable(filters)
        n, _, h, w = images.type.shape
        f, _, kh, kw = filters.type.shape
        if None in (h, w, kh, kw):
            raise TypeError("ConvPool: image and filter heights and widths must be static.")
        (oh, ow), (ph, pw) = conv_output_shape((h, w), (kh, kw)), self.poolsize
        out = pt.tensor(dtype=images.type.dtype, shape=(n, f, oh // ph, ow // pw))
        return Apply(self, [images, filters], [out])

    def perform(self, node, inputs, output_storage):
        pooled = _pool_numpy(_convolve_numpy(*inputs), self.poolsize)
        output_storage[0][0] = pooled.astype(node.outputs[0].dtype)

    def pullback(self, inputs, outputs, cotangents):
        images, filters = inputs
        _, c, h, w = images.type.shape
        f, _, kh, kw = filters.type.shape
        conv = conv2d(images, filters, image_shape=(c, h, w), filter_shape=(f, c, kh, kw))
        unfused = max_pool(
            conv, image_shape=(f, *conv_output_shape((h, w), (kh, kw))), poolsize=self.poolsize
        )
        return pytensor.gradient.grad(None, [images, filters], known_grads={unfused: cotangents[0]})


def conv_pool_train(
    images: TensorVariable,
    filters: TensorVariable,
    *,
    image_shape: tuple[int, ...],
    filter_shape: tuple[int, ...],
    poolsize: tuple[int, ...],
) -> TensorVariable:
    """``max_pool(conv2d(images, filters))`` for the training path: one
    :class:`ConvPoolTrain` Op, whose gradient is :class:`ConvPoolGradW` (and
    :class:`ConvPoolGradX` where the images need one), each one call of convnet's kernel
    under JAX on a CPU."""
    return ConvPoolTrain(tuple(poolsize))(*_static(images, filters, image_shape, filter_shape))[0]


MAX_WINDOW = 31  # places in a pooling window ConvPoolTrain marks (one bit each of an int32)


class ConvPoolTrain(Op):
    """Convolution + max-pooling that also returns ``ties`` (int32): which places of each
    window hold its maximum, bit ``a * pw + b``, so the backward pass sends the gradient
    straight there. Every tied place gets it, as from Theano's pooling (the book's) and
    PyTensor's max: MNIST's blank border and ReLU's zeros make ties common."""

    __props__ = ("poolsize",)

    def __init__(self, poolsize: tuple[int, ...]) -> None:
        self.poolsize = (int(poolsize[0]), int(poolsize[1]))
        if self.poolsize[0] * self.poolsize[1] > MAX_WINDOW:
            raise ValueError(f"ConvPoolTrain: pooling windows of at most {MAX_WINDOW} places.")

    def make_node(self, images, filters):
        node = ConvPool(self.poolsize).make_node(images, filters)
        pooled = node.outputs[0]
        where = pt.tensor(dtype="int32", shape=pooled.type.shape)
        return Apply(self, node.inputs, [pooled.type(), where])

    def perform(self, node, inputs, output_storage):
        pooled, ties = pool_with_ties(_convolve_numpy(*inputs), self.poolsize, np)
        output_storage[0][0] = pooled.astype(node.outputs[0].dtype)
        output_storage[1][0] = ties

    def connection_pattern(self, node):
        return [[True, False], [True, False]]  # ``ties`` are bits: no gradient

    def pullback(self, inputs, outputs, cotangents):
        images, filters = inputs
        grad = cotangents[0]
        ties = outputs[1]
        _, c, h, w = images.type.shape
        _, _, kh, kw = filters.type.shape
        return [
            ConvPoolGradX((c, h, w), self.poolsize)(images, filters, ties, grad),
            ConvPoolGradW((kh, kw), self.poolsize)(images, filters, ties, grad),
        ]


class ConvPoolGradW(Op):
    """The filters' gradient of :class:`ConvPoolTrain` from the pooled gradient. Both
    gradient Ops take (images, filters, ties, grad): the kernel reads the ties, the
    C and Numba modes' lowering (:mod:`convnet.runtime.numba_c`) the images and filters."""

    __props__ = ("filter_hw", "poolsize")

    def __init__(self, filter_hw: tuple[int, ...], poolsize: tuple[int, ...]) -> None:
        self.filter_hw = (int(filter_hw[0]), int(filter_hw[1]))
        self.poolsize = (int(poolsize[0]), int(poolsize[1]))

    def make_node(self, images, filters, ties, grad):
        inputs = list(map(pt.as_tensor_variable, (images, filters, ties, grad)))
        shape = (grad.type.shape[1], images.type.shape[1], *self.filter_hw)
        return Apply(self, inputs, [pt.tensor(dtype=grad.type.dtype, shape=shape)])

    def perform(self, node, inputs, output_storage):
        images, _, ties, grad = inputs
        conv_hw = conv_output_shape(images.shape[2:], self.filter_hw)
        dconv = unpool(ties, grad, conv_hw, self.poolsize, np)
        windows = np.lib.stride_tricks.sliding_window_view(images, self.filter_hw, axis=(2, 3))
        dflipped = np.einsum("nfyx,ncyxab->fcab", dconv, windows, optimize=True)
        output_storage[0][0] = dflipped[:, :, ::-1, ::-1].astype(node.outputs[0].dtype)


class ConvPoolGradX(Op):
    """The images' gradient of :class:`ConvPoolTrain` from the pooled gradient."""

    __props__ = ("image_shape", "poolsize")

    def __init__(self, image_shape: tuple[int, ...], poolsize: tuple[int, ...]) -> None:
        self.image_shape = tuple(int(v) for v in image_shape)
        self.poolsize = (int(poolsize[0]), int(poolsize[1]))

    def make_node(self, images, filters, ties, grad):
        inputs = list(map(pt.as_tensor_variable, (images, filters, ties, grad)))
        shape = (grad.type.shape[0], *self.image_shape)
        return Apply(self, inputs, [pt.tensor(dtype=grad.type.dtype, shape=shape)])

    def perform(self, node, inputs, output_storage):
        _, filters, ties, grad = inputs
        _, h, w = self.image_shape
        kh, kw = filters.shape[2:]
        oh, ow = conv_output_shape((h, w), (kh, kw))
        dconv = unpool(ties, grad, (oh, ow), self.poolsize, np)
        flipped = filters[:, :, ::-1, ::-1]
        dx = np.zeros((len(grad), *self.image_shape), dtype=np.float64)
        for a in range(kh):
            for b in range(kw):
                dx[:, :, a : a + oh, b : b + ow] += np.einsum(
                    "nfyx,fc->ncyx", dconv, flipped[:, :, a, b]
                )
        output_storage[0][0] = dx.astype(node.outputs[0].dtype)


def pool_with_ties(conv: Any, poolsize: tuple[int, ...], xp: Any) -> tuple[Any, Any]:
    """(pooled, ties) of (n, f, oh, ow) ``conv``, for NumPy and JAX alike (``xp``)."""
    n, f, oh, ow = conv.shape
    (ph, pw), (qh, qw) = poolsize, (oh // poolsize[0], ow // poolsize[1])
    windows = conv[:, :, : qh * ph, : qw * pw].reshape(n, f, qh, ph, qw, pw)
    places = windows.transpose(0, 1, 2, 4, 3, 5).reshape(n, f, qh, qw, ph * pw)
    pooled = places.max(axis=-1)
    bits = (places == pooled[..., None]).astype(xp.int32) * window_bits(poolsize)
    return pooled, bits.sum(axis=-1, dtype=xp.int32)


def window_bits(poolsize: tuple[int, ...]) -> np.ndarray:
    """The bit of each place a * pw + b of a pooling window in ``ties``."""
    return np.left_shift(1, np.arange(poolsize[0] * poolsize[1], dtype=np.int32))


def unpool(ties: Any, grad: Any, conv_hw: tuple[int, ...], poolsize: tuple[int, ...], xp: Any):
    """The pooled gradient spread onto (n, f, oh, ow): at every place marked in ``ties``."""
    n, f, qh, qw = grad.shape
    ph, pw = poolsize
    marked = (ties[..., None] // window_bits(poolsize)) % 2
    spread = (grad[..., None] * marked).reshape(n, f, qh, qw, ph, pw)
    spread = spread.transpose(0, 1, 2, 4, 3, 5).reshape(n, f, qh * ph, qw * pw)
    pad = ((0, 0), (0, 0), (0, conv_hw[0] - qh * ph), (0, conv_hw[1] - qw * pw))
    return xp.pad(spread, pad)


def _convolve_numpy(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(images, filters.shape[2:], axis=(2, 3))
    return np.einsum("nchwab,fcab->nfhw", windows, filters[:, :, ::-1, ::-1], optimize=True)


def _pool_numpy(conv: np.ndarray, poolsize: tuple[int, ...]) -> np.ndarray:
    n, f, h, w = conv.shape
    (ph, pw), (qh, qw) = poolsize, (h // poolsize[0], w // poolsize[1])
    windows = conv[:, :, : qh * ph, : qw * pw].reshape(n, f, qh, ph, qw, pw)
    return windows.max(axis=(3, 5))


def im2col_columns(images: Any, image_shape: tuple[int, ...], kh: int, kw: int, stack: Any) -> Any:
    """(batch, c, h, w) -> (c*kh*kw, batch*oh*ow): one row per (channel, kernel tap).

    Written once for PyTensor graphs, NumPy and JAX alike; ``stack`` is the library's."""
    channels, height, width = image_shape
    out_h, out_w = conv_output_shape((height, width), (kh, kw))
    per_channel_first = images.transpose(1, 0, 2, 3)
    taps = [
        per_channel_first[:, :, a : a + out_h, b : b + out_w] for a in range(kh) for b in range(kw)
    ]
    return stack(taps, axis=1).reshape((channels * kh * kw, -1))


class Im2Col(COp):
    """The im2col columns of :func:`conv2d` as one Op: (n, c, h, w) -> (c*kh*kw, n*oh*ow).

    The same slices as the graph form, but one node instead of ~60 (with its gradient), so
    PyTensor has far less to rewrite; under JAX it lowers to the same slicing program, and
    its gradient :class:`Col2Im` to JAX's exact transpose of it. Its C code serves
    PyTensor's C linker; :mod:`convnet.runtime.numba_c` gives it a Numba loop.
    """

    __props__ = ("kh", "kw")

    def __init__(self, kh: int, kw: int) -> None:
        self.kh, self.kw = int(kh), int(kw)

    def make_node(self, images):
        images = pt.as_tensor_variable(images)
        if images.type.ndim != 4:
            raise TypeError("Im2Col: expected 4-D images.")
        n, c, h, w = images.type.shape
        rows = None if c is None else c * self.kh * self.kw
        cols = None
        if None not in (n, h, w):
            cols = n * (h - self.kh + 1) * (w - self.kw + 1)
        out = pt.tensor(dtype=images.type.dtype, shape=(rows, cols))
        return Apply(self, [images], [out])

    def perform(self, node, inputs, output_storage):
        images = inputs[0]
        output_storage[0][0] = im2col_columns(images, images.shape[1:], self.kh, self.kw, np.stack)

    def infer_shape(self, fgraph, node, shapes):
        # Lets PyTensor fold the shapes below it to constants (JAX needs them), also in a
        # graph vectorized over several networks (convnet.lockstep).
        n, c, h, w = shapes[0]
        return [(c * self.kh * self.kw, n * (h - self.kh + 1) * (w - self.kw + 1))]

    def pullback(self, inputs, outputs, cotangents):
        return [Col2Im(self.kh, self.kw)(cotangents[0], inputs[0])]

    def c_code_cache_version(self):
        return (1,)

    def c_code(self, node, name, inputs, outputs, sub):
        (images,), (columns,) = inputs, outputs
        return _c_im2col_loops(
            node, self.kh, self.kw, images, columns, sub["fail"], to_columns=True
        )


class Col2Im(COp):
    """The transpose of :class:`Im2Col`: columns summed back onto the image they came from.

    Its second input only lends its shape (static under JAX)."""

    __props__ = ("kh", "kw")

    def __init__(self, kh: int, kw: int) -> None:
        self.kh, self.kw = int(kh), int(kw)

    def make_node(self, columns, images):
        images = pt.as_tensor_variable(images)
        columns = pt.as_tensor_variable(columns)
        if columns.type.dtype != images.type.dtype:
            columns = pt.cast(columns, images.type.dtype)
        return Apply(self, [columns, images], [images.type()])

    def connection_pattern(self, node):
        return [[True], [False]]

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[1]]

    def perform(self, node, inputs, output_storage):
        columns, images = inputs
        n, c, h, w = images.shape
        out_h, out_w = h - self.kh + 1, w - self.kw + 1
        taps = columns.reshape(c, self.kh, self.kw, n, out_h, out_w)
        out = np.zeros((c, n, h, w), dtype=columns.dtype)
        for a in range(self.kh):
            for b in range(self.kw):
                out[:, :, a : a + out_h, b : b + out_w] += taps[:, a, b]
        output_storage[0][0] = out.transpose(1, 0, 2, 3).copy()

    def pullback(self, inputs, outputs, cotangents):
        from pytensor.gradient import disconnected_type

        return [Im2Col(self.kh, self.kw)(cotangents[0]), disconnected_type()]

    def c_code_cache_version(self):
        return (1,)

    def c_code(self, node, name, inputs, outputs, sub):
        (columns, images), (out,) = inputs, outputs
        return _c_im2col_loops(
            node, self.kh, self.kw, images, out, sub["fail"], to_columns=False, columns=columns
        )


def _c_im2col_loops(
    node: Apply,
    kh: int,
    kw: int,
    images: str,
    out: str,
    fail: str,
    *,
    to_columns: bool,
    columns: str = "",
) -> str:
    """C for :class:`Im2Col` (images -> columns) or :class:`Col2Im` (columns summed back
    onto an image-shaped output): the same loop nest, read one way or the other."""
    ctype = node.outputs[0].type.dtype_specs()[1]
    typenum = node.outputs[0].type.dtype_specs()[2]
    op = "Im2Col" if to_columns else "Col2Im"
    if to_columns:
        make = "npy_intp dims[2] = {c * kh * kw, n * oh * ow};\n"
        make += f"{out} = (PyArrayObject*)PyArray_EMPTY(2, dims, {typenum}, 0);"
        source, move = images, "dst[row * cols + first + x] = src[(image + y + a) * w + x + b];"
    else:
        make = f"{out} = (PyArrayObject*)PyArray_ZEROS(4, PyArray_DIMS({images}), {typenum}, 0);"
        source, move = columns, "dst[(image + y + a) * w + x + b] += src[row * cols + first + x];"
    return f"""
    {{
    if (PyArray_NDIM({images}) != 4) {{
        PyErr_SetString(PyExc_ValueError, "{op}: expected 4-D images");
        {fail}
    }}
    const npy_intp n = PyArray_DIMS({images})[0], c = PyArray_DIMS({images})[1];
    const npy_intp h = PyArray_DIMS({images})[2], w = PyArray_DIMS({images})[3];
    const npy_intp kh = {kh}, kw = {kw}, oh = h - kh + 1, ow = w - kw + 1;
    if (oh < 1 || ow < 1) {{
        PyErr_SetString(PyExc_ValueError, "{op}: images smaller than the kernel");
        {fail}
    }}
    const npy_intp cols = n * oh * ow;
    Py_XDECREF({out});
    {make}
    if (!{out}) {{ {fail} }}
    PyArrayObject* contiguous = PyArray_GETCONTIGUOUS({source});
    if (!contiguous) {{ {fail} }}
    const {ctype}* src = (const {ctype}*)PyArray_DATA(contiguous);
    {ctype}* dst = ({ctype}*)PyArray_DATA({out});
    for (npy_intp ch = 0; ch < c; ++ch)
      for (npy_intp a = 0; a < kh; ++a)
        for (npy_intp b = 0; b < kw; ++b) {{
          const npy_intp row = (ch * kh + a) * kw + b;
          for (npy_intp i = 0; i < n; ++i)
            for (npy_intp y = 0; y < oh; ++y) {{
              const npy_intp image = (i * c + ch) * h, first = (i * oh + y) * ow;
              for (npy_intp x = 0; x < ow; ++x) {move}
            }}
        }}
    Py_DECREF(contiguous);
    }}
    """
