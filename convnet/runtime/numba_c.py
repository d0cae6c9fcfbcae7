"""convnet's Ops on PyTensor's own linkers: Numba (PyTensor's default mode) and C.

The book's code compiles its own functions over convnet's graphs (``conv.py``'s
ensemble vote, ``layer.w.eval()``), in whatever mode PyTensor defaults to. Without this
module Numba runs an Op it has no implementation for through its Python ``perform`` in
object mode: 7-18 s for one call over net C, and a first compile of minutes. Here:

* :class:`~convnet.ops.Im2Col` and :class:`~convnet.ops.Col2Im` get Numba loops (their
  C code lives on the Ops themselves);
* :class:`~convnet.ops.ConvPool`, the kernel's training Ops (:class:`~convnet.ops.ConvPoolTrain`
  and its gradients) and a statically shaped :class:`~convnet.ops.Conv2D`
  are lowered, in Numba and C modes only, to ``Im2Col`` + one ``dot`` (+ max-pooling),
  so that Numba's ``np.dot`` or C's BLAS ``gemm`` does the arithmetic;
* ``Conv2D`` of unknown shapes (inside its own gradient) gets a Numba loop over images;
* in C mode PyTensor's softmax and log-softmax (Ops defined by a graph, without C code)
  are replaced by their graphs, which C mode compiles with the rest; left alone, each call
  ran them as a Numba function, compiled in that mode at first use (and Numba's callbacks
  into Python drop a Ctrl-C that lands in them).

JAX mode is untouched: its implementations are in :mod:`convnet.runtime.jax_dispatch`.
:func:`register` registers everything, once (a network's first build calls it).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile import optdb
from pytensor.graph.rewriting.basic import in2out, node_rewriter
from pytensor.link.numba.dispatch.basic import (
    numba_njit,
    register_funcify_default_op_cache_key,
)
from pytensor.tensor.rewriting.ofg import inline_ofg_node
from pytensor.tensor.special import LogSoftmax, Softmax

from convnet import ops

# Salts the cache keys of the implementations below: bump it when one changes. Numba's
# disk cache also records the module that defined a function, and a moved module would
# be imported by that name, so the key includes this module's name too.
CACHE_VERSION = zlib.crc32(f"{__name__}:2".encode())


@numba_njit
def _im2col_loops(images: Any, columns: Any, kh: int, kw: int, to_columns: bool) -> None:
    """Im2Col (images -> columns) or Col2Im (columns summed onto images): one loop nest,
    read one way or the other, like the Ops' C code."""
    n, c, h, w = images.shape
    oh, ow = h - kh + 1, w - kw + 1
    for ch in range(c):
        for a in range(kh):
            for b in range(kw):
                row = (ch * kh + a) * kw + b
                for i in range(n):
                    for y in range(oh):
                        first = (i * oh + y) * ow
                        for x in range(ow):
                            if to_columns:
                                columns[row, first + x] = images[i, ch, y + a, x + b]
                            else:
                                images[i, ch, y + a, x + b] += columns[row, first + x]


@numba_njit
def _im2col(images: Any, kh: int, kw: int) -> Any:
    n, c, h, w = images.shape
    columns = np.empty((c * kh * kw, n * (h - kh + 1) * (w - kw + 1)), dtype=images.dtype)
    _im2col_loops(images, columns, kh, kw, True)
    return columns


def _numba_im2col(op: ops.Im2Col, node: Any = None, **kwargs: Any) -> Any:
    kh, kw = op.kh, op.kw

    @numba_njit
    def im2col(images: Any) -> Any:
        return _im2col(images, kh, kw)

    return im2col, CACHE_VERSION


def _numba_col2im(op: ops.Col2Im, node: Any = None, **kwargs: Any) -> Any:
    kh, kw = op.kh, op.kw

    @numba_njit
    def col2im(columns: Any, images: Any) -> Any:
        out = np.zeros(images.shape, dtype=columns.dtype)
        _im2col_loops(out, columns, kh, kw, False)
        return out

    return col2im, CACHE_VERSION


def _numba_conv2d(op: ops.Conv2D, node: Any = None, **kwargs: Any) -> Any:
    @numba_njit
    def conv2d(images: Any, filters: Any) -> Any:
        n, c, h, w = images.shape
        f, _, kh, kw = filters.shape
        oh, ow = h - kh + 1, w - kw + 1
        flipped = np.ascontiguousarray(filters[:, :, ::-1, ::-1]).reshape((f, c * kh * kw))
        out = np.empty((n, f, oh, ow), dtype=images.dtype)
        for i in range(n):
            columns = _im2col(images[i : i + 1], kh, kw)
            out[i] = np.dot(flipped, columns).reshape((f, oh, ow))
        return out

    return conv2d, CACHE_VERSION


@node_rewriter([ops.ConvPool, ops.Conv2D])
def lower_to_im2col(fgraph: Any, node: Any) -> list[Any] | None:
    """``ConvPool`` / ``Conv2D`` as ``Im2Col`` + ``dot`` (+ max-pooling), shapes permitting."""
    images, filters = node.inputs
    if None in images.type.shape[1:] or None in filters.type.shape:
        return None
    poolsize = node.op.poolsize if isinstance(node.op, ops.ConvPool) else (1, 1)
    conv, pooled = _unfused(images, filters, poolsize)
    return [pt.cast(pooled if isinstance(node.op, ops.ConvPool) else conv, node.outputs[0].dtype)]


def _unfused(images: Any, filters: Any, poolsize: tuple[int, int]) -> tuple[Any, Any]:
    """(convolution, max-pooled) as ``Im2Col`` + ``dot`` + max-pooling."""
    _, c, h, w = images.type.shape
    f, _, kh, kw = filters.type.shape
    conv = ops.conv2d(
        images,
        filters,
        image_shape=(c, h, w),
        filter_shape=(f, c, kh, kw),
        implementation="patches",
    )
    conv_hw = ops.conv_output_shape((h, w), (kh, kw))
    return conv, ops.max_pool(conv, image_shape=(f, *conv_hw), poolsize=poolsize)


def _ties(conv: Any, poolsize: tuple[int, int]) -> Any:
    """ConvPoolTrain's marks as a graph (left dead, and removed, once the gradient Ops are
    lowered to the unfused graph's gradient, which does not read them)."""
    _, f, oh, ow = conv.type.shape
    (ph, pw), (qh, qw) = poolsize, (oh // poolsize[0], ow // poolsize[1])
    windows = conv[:, :, : qh * ph, : qw * pw].reshape((-1, f, qh, ph, qw, pw))
    places = windows.dimshuffle(0, 1, 2, 4, 3, 5).reshape((-1, f, qh, qw, ph * pw))
    best = places.max(axis=-1, keepdims=True)
    marks = pt.cast(pt.eq(places, best), "int32") * ops.window_bits(poolsize)
    return pt.cast(marks.sum(axis=-1), "int32")


@node_rewriter([ops.ConvPoolTrain, ops.ConvPoolGradW, ops.ConvPoolGradX])
def lower_training(fgraph: Any, node: Any) -> list[Any] | None:
    """The kernel's training Ops as the unfused graph: the pooled output and its marks
    from ``Im2Col`` + ``dot`` + max-pooling, the gradients as that graph's own."""
    images, filters = node.inputs[:2]
    if None in images.type.shape[1:] or None in filters.type.shape:
        return None
    conv, pooled = _unfused(images, filters, node.op.poolsize)
    if isinstance(node.op, ops.ConvPoolTrain):
        return [pt.cast(pooled, node.outputs[0].dtype), _ties(conv, node.op.poolsize)]
    wrt = filters if isinstance(node.op, ops.ConvPoolGradW) else images
    result = pytensor.gradient.grad(None, wrt, known_grads={pooled: node.inputs[3]})
    return [pt.cast(result, node.outputs[0].dtype)]


@node_rewriter([Softmax, LogSoftmax])
def inline_softmax(fgraph: Any, node: Any) -> list[Any]:
    """Softmax and log-softmax as their graphs (max, exp, sum, log), for C mode."""
    return inline_ofg_node(node)


_REGISTERED: list[bool] = []


def register() -> None:
    """Give convnet's Ops to PyTensor's Numba and C modes (process-wide, once; called by
    :func:`convnet.runtime.patches.apply`, never at import)."""
    if _REGISTERED:
        return
    register_funcify_default_op_cache_key(ops.Im2Col)(_numba_im2col)
    register_funcify_default_op_cache_key(ops.Col2Im)(_numba_col2im)
    register_funcify_default_op_cache_key(ops.Conv2D)(_numba_conv2d)
    # Before BlasOpt (1.7), so C mode turns the dot into a gemm. "cxx_only" keeps the C
    # entries out of JAX and Numba modes; the "numba" entries are only in Numba's query.
    for name, rewriter, position in (
        ("lower_to_im2col", lower_to_im2col, 1.55),
        ("lower_training", lower_training, 1.54),
    ):
        optdb.register(
            f"convnet_{name}_c", in2out(rewriter), "fast_run", "cxx_only", position=position
        )
        optdb.register(f"convnet_{name}_numba", in2out(rewriter), "numba", position=position)
    # After stabilize and specialize (which build softmax and log-softmax from their parts),
    # before the elemwise fusion (49), which fuses the graphs' pieces.
    optdb.register(
        "convnet_inline_softmax_c", in2out(inline_softmax), "fast_run", "cxx_only", position=47.5
    )
    _REGISTERED.append(True)
