"""The book's sigmoid networks on convnet's CPU kernel (``convnet/runtime/kernel/book_sigmoid.cc``).

The book's nets are too small for XLA on a CPU: a step of [784, 30, 10] at mini-batch 10 is
half a million multiply-adds, far less than what XLA's loop spends around them. The kernel
runs a whole epoch in one call and reads only each image's lit pixels, with the book's
arithmetic (its file says how): 2.3x the XLA loop's speed on a 50,000-image epoch
(benchmarks/RESULTS.md, "The book's network.py and network2.py"). It serves the book's two
output errors; another cost, ``CONVNET_KERNEL=0`` or a machine without a C++ compiler keep
the PyTensor/JAX programs (:mod:`convnet.book.programs`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from convnet.runtime import kernel

CROSS_ENTROPY, QUADRATIC = 0, 1

_P = ctypes.c_void_p
_I = ctypes.c_int64


def available() -> bool:
    return kernel.book_library() is not None


def _aligned(shape: tuple[int, int], dtype: np.dtype, to: int = 64) -> np.ndarray:
    """Zeros whose rows start on cache lines: a row of whole vectors is whole lines."""
    size = shape[0] * shape[1] * dtype.itemsize
    raw = np.zeros(size + to, dtype=np.uint8)
    skip = -raw.ctypes.data % to
    return raw[skip : skip + size].view(dtype).reshape(shape)


class Layout:
    """The kernel's copy of a network: the first layer's weights transposed and padded to
    whole vectors, the others as they are, biases flat; ``weights()`` / ``biases()`` give
    the book's lists back."""

    def __init__(self, params: tuple[Any, ...], sizes: list[int], dtype: str) -> None:
        library = kernel.book_library()
        assert library is not None
        self.dtype = np.dtype(dtype)
        lanes = int(library.ConvnetBookLanes(self.dtype.itemsize))
        self.hidden = sizes[1]
        self.hp = -(-self.hidden // lanes) * lanes
        layers = len(params) // 2
        first = _aligned((sizes[0], self.hp), self.dtype)
        first[:, : self.hidden] = params[0].T
        self.ws = [first] + [np.ascontiguousarray(w, dtype=self.dtype) for w in params[1:layers]]
        self.bs = [np.ascontiguousarray(b[:, 0], dtype=self.dtype) for b in params[layers:]]
        self.sizes = np.array(sizes, dtype=np.int64)
        self._w = (_P * layers)(*(w.ctypes.data for w in self.ws))
        self._b = (_P * layers)(*(b.ctypes.data for b in self.bs))
        self._library = library
        self._suffix = "F64" if self.dtype == np.float64 else "F32"
        self.chunk_shift = int(library.ConvnetBookChunkShift(self.hp * self.dtype.itemsize))

    def params(self) -> tuple[np.ndarray, ...]:
        first = np.ascontiguousarray(self.ws[0][:, : self.hidden].T)
        return (first, *self.ws[1:], *(b[:, None].copy() for b in self.bs))

    def _head(self) -> list[Any]:
        return [_I(len(self.ws)), _P(self.sizes.ctypes.data), _I(self.hp), self._w, self._b]

    def epoch(
        self, sparse: tuple[np.ndarray, ...], targets: np.ndarray, rows: np.ndarray,
        mini_batch: int, eta: float, decay: float, cost: int,
    ) -> None:  # fmt: skip
        """SGD over ``rows`` in order, ``mini_batch`` examples a step (the last may be
        fewer), updating this copy in place."""
        indptr, indices, values = sparse
        values = np.ascontiguousarray(values, dtype=self.dtype)
        targets = np.ascontiguousarray(targets, dtype=self.dtype)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        function = getattr(self._library, f"ConvnetBookEpoch{self._suffix}")
        function(
            *self._head(), _P(indptr.ctypes.data), _P(indices.ctypes.data),
            _P(values.ctypes.data), _P(targets.ctypes.data), _P(rows.ctypes.data),
            _I(len(rows)), _I(mini_batch), ctypes.c_double(eta), ctypes.c_double(decay),
            _I(cost),
        )  # fmt: skip

    def evaluate(
        self, sparse: tuple[np.ndarray, ...], bounds: np.ndarray, rows: np.ndarray,
        targets: np.ndarray | None = None, cost: int = CROSS_ENTROPY,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:  # fmt: skip
        """For each of ``rows``: the output layer's activations, the index of the largest
        (numpy.argmax's), and given one-hot ``targets``, the example's ``cost``.
        ``bounds``: the store's ``chunk_bounds(self.chunk_shift)``."""
        _, indices, values = sparse
        chunks = -(-int(self.sizes[0]) // (1 << self.chunk_shift))
        bounds = np.ascontiguousarray(bounds, dtype=np.int64)
        if len(bounds) != (len(sparse[0]) - 1) * chunks + 1:
            raise ValueError(f"bounds: {len(bounds)} entries, not one per row and chunk")
        values = np.ascontiguousarray(values, dtype=self.dtype)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty((len(rows), int(self.sizes[-1])), dtype=self.dtype)
        guess = np.empty(len(rows), dtype=np.int64)
        costs = np.empty(len(rows), dtype=self.dtype) if targets is not None else None
        if targets is not None:
            targets = np.ascontiguousarray(targets, dtype=self.dtype)
        function = getattr(self._library, f"ConvnetBookOutputs{self._suffix}")
        function(
            *self._head(), _P(bounds.ctypes.data), _I(chunks), _P(indices.ctypes.data),
            _P(values.ctypes.data), _P(rows.ctypes.data), _I(len(rows)), _P(out.ctypes.data),
            _P(guess.ctypes.data), _P(targets.ctypes.data if targets is not None else None),
            _I(cost), _P(costs.ctypes.data if costs is not None else None),
        )  # fmt: skip
        return out, guess, costs
