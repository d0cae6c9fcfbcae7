"""The book's data sets, Python lists of ``(x, y)`` pairs, as the matrices a compiled pass reads.

The book keeps data as lists of column vectors and shuffles the training list in place
every epoch; a compiled pass reads one matrix. The pairs of a list are copied into a
:class:`Store` once, and a list seen later (shuffled, sliced, or the same) is read as row
numbers into a store that holds all its pairs: one dictionary look-up per example, no copy
of its images. Images changed in place after a store has copied them are not seen again
(the book's code never does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnet.errors import ArgumentError, BackendError, ShapeError

MAX_STORES = 4  # the most recently used stores kept; a figure script uses two or three


def _is_label(y: Any) -> bool:
    return isinstance(y, int | np.integer) and not isinstance(y, bool)


class Store:
    """The images of a list of pairs as one matrix (a row an example; float32 when every
    image is, as the book's are, else float64: never rounded), with their targets: one-hot
    rows (the book's training format, ``y`` a vector) or integer labels (its validation
    and test format, ``y`` a digit)."""

    def __init__(self, pairs: Sequence[Any], what: str, n_in: int, n_out: int) -> None:
        self.pairs = list(pairs)  # holds the pairs, so that their ids stay theirs
        ids = np.fromiter(map(id, self.pairs), np.uint64, len(self.pairs))
        self.order = np.argsort(ids)
        self.ids = ids[self.order]
        self.n_out = n_out
        single = all(
            isinstance(p, tuple | list) and len(p) == 2 and getattr(p[0], "dtype", 0) == np.float32
            for p in self.pairs
        )
        self.x = np.empty((len(self.pairs), n_in), dtype=np.float32 if single else np.float64)
        first_y = _example(self.pairs, 0, what)[1]
        self.vectors = not _is_label(first_y)
        targets = np.empty((len(self.pairs), n_out)) if self.vectors else None
        labels = np.empty(len(self.pairs), dtype=np.int64)
        for row in range(len(self.pairs)):
            x, y = _example(self.pairs, row, what)
            self.x[row] = _column(x, n_in, f"{what}[{row}]: x")
            if self.vectors:
                assert targets is not None
                targets[row] = _target(y, n_out, what, row)
            else:
                labels[row] = _label(y, n_out, what, row)
        self.targets = targets
        self.labels = np.argmax(targets, axis=1) if targets is not None else labels
        self._device: dict[str, Any] = {}
        self.last: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.uint64), np.empty(0, int))

    def rows(self, ids: np.ndarray) -> np.ndarray | None:
        """The row of each pair (by its ``id``), or None if a pair is not in this store."""
        at = np.searchsorted(self.ids, ids)
        at[at == len(self.ids)] = 0
        if not np.array_equal(self.ids[at], ids):
            return None
        return self.order[at]

    def one_hot(self) -> np.ndarray:
        """The targets as one-hot rows (the book's ``vectorized_result`` of each label)."""
        if self.targets is None:
            self.targets = np.zeros((len(self.labels), self.n_out))
            self.targets[np.arange(len(self.labels)), self.labels] = 1.0
        return self.targets

    def sparse(self, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The images as compressed rows: ``(indptr, indices, values)`` of the non-zeros."""
        key = f"sparse:{np.dtype(dtype).name}"
        if key not in self._device:
            rows, columns = np.nonzero(self.x)
            indptr = np.zeros(len(self.x) + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=len(self.x)), out=indptr[1:])
            values = self.x[rows, columns].astype(dtype)
            self._device[key] = (indptr, columns.astype(np.int32), values)
        return self._device[key]

    def chunk_bounds(self, shift: int, dtype: Any = np.float64) -> np.ndarray:
        """Where each row's non-zeros of each chunk of ``2 ** shift`` inputs start in
        ``sparse()``'s arrays: entry ``row * chunks + chunk`` (the next entry: where they
        end), for the kernel's forward pass over a data set."""
        key = f"bounds:{shift}"
        if key not in self._device:
            indptr, indices, _ = self.sparse(dtype)
            chunks = -(-self.x.shape[1] // (1 << shift))
            row = np.repeat(np.arange(len(self.x), dtype=np.int64), np.diff(indptr))
            key_of_pixel = row * chunks + (indices >> shift)
            wanted = np.arange(len(self.x) * chunks + 1, dtype=np.int64)
            self._device[key] = np.searchsorted(key_of_pixel, wanted).astype(np.int64)
        return self._device[key]

    def on_device(self, name: str, dtype: np.dtype) -> Any:
        """``x`` or ``targets`` as a JAX array of ``dtype``, put on the device once."""
        key = f"{name}:{np.dtype(dtype).name}"
        if key not in self._device:
            import jax

            value = self.x if name == "x" else self.one_hot()
            placed = jax.device_put(value.astype(dtype, copy=False))
            if placed.dtype != np.dtype(dtype):  # JAX's float64 was off: never round silently
                raise BackendError(f"{name}: JAX holds {placed.dtype}, not {np.dtype(dtype)}")
            self._device[key] = placed
        return self._device[key]


def _example(pairs: Sequence[Any], row: int, what: str) -> tuple[Any, Any]:
    pair = pairs[row]
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ShapeError(
            f"{what}[{row}]: expected a pair (x, y), as mnist_loader.load_data_wrapper() "
            f"gives. Received: {type(pair).__name__}."
        )
    return pair[0], pair[1]


def _column(x: Any, n: int, what: str, size: str = "sizes[0]") -> np.ndarray:
    shape = getattr(x, "shape", None)
    if not isinstance(x, np.ndarray) or shape != (n, 1):
        received = f"shape {shape}" if shape is not None else type(x).__name__
        raise ShapeError(
            f"{what}: expected a {n}x1 column vector (the network's {size} = {n}). "
            f"Received: {received}."
        )
    return x[:, 0]


def _target(y: Any, n_out: int, what: str, row: int) -> np.ndarray:
    if _is_label(y):
        raise ShapeError(
            f"{what}[{row}]: y is the digit {int(y)}, where this data needs a one-hot "
            f"{n_out}x1 vector (the book's training format; mnist_loader.vectorized_result "
            f"makes one). Received: {int(y)!r}."
        )
    return _column(y, n_out, f"{what}[{row}]: y", "sizes[-1]")


def _label(y: Any, n_out: int, what: str, row: int) -> int:
    if not _is_label(y):
        shape = getattr(y, "shape", type(y).__name__)
        raise ShapeError(
            f"{what}[{row}]: y is {shape}, where this data needs a digit 0..{n_out - 1} (the "
            f"book's validation and test format). Received: {type(y).__name__}."
        )
    if not 0 <= int(y) < n_out:
        raise ShapeError(f"{what}[{row}]: y: expected a digit 0..{n_out - 1}. Received: {y!r}.")
    return int(y)


_STORES: list[Store] = []


def check_list(data: Any, what: str, *, shuffled: bool = False) -> None:
    """A clear error unless ``data`` is a non-empty list (a tuple too, unless ``shuffled``:
    the training list is shuffled in place) of pairs."""
    if not isinstance(data, list if shuffled else list | tuple):
        raise ArgumentError(
            f"{what}: expected a list of (x, y) pairs, as mnist_loader.load_data_wrapper() "
            f"gives (in Python 3 a zip() must be made a list: list(zip(...))). "
            f"Received: {type(data).__name__}."
        )
    if not data:
        raise ArgumentError(f"{what}: expected at least one (x, y) pair. Received: empty.")


def lookup(
    data: Any, what: str, n_in: int, n_out: int, *, vectors: bool | None = None
) -> tuple[Store, np.ndarray]:
    """The store holding every pair of ``data`` (made if none does) and the pairs' rows.

    ``vectors`` asks for the book's training format (True: ``y`` one-hot vectors) or its
    evaluation format (False: ``y`` digits); None takes either."""
    check_list(data, what)
    found = None
    ids = np.fromiter(map(id, data), np.uint64, len(data))
    for store in _STORES:
        if np.array_equal(ids, store.last[0]):  # the list the store saw last, unchanged
            found = store, store.last[1]
            break
        rows = store.rows(ids)
        if rows is not None:
            found = store, rows
            break
    if found is None:
        store = Store(data, what, n_in, n_out)
        found = store, np.arange(len(data))
    store = found[0]
    store.last = ids, found[1]
    if store in _STORES:
        _STORES.remove(store)
    _STORES.insert(0, store)
    del _STORES[MAX_STORES:]
    if store.x.shape[1] != n_in:
        raise ShapeError(
            f"{what}: x: expected {n_in}x1 column vectors (the network's sizes[0] = {n_in}). "
            f"Received: {store.x.shape[1]}x1."
        )
    width = store.targets.shape[1] if store.targets is not None else None
    if store.vectors and width != n_out:
        raise ShapeError(
            f"{what}: y: expected {n_out}x1 vectors (the network's sizes[-1] = {n_out}). "
            f"Received: {width}x1."
        )
    if not store.vectors and int(store.labels.max()) >= n_out:
        raise ShapeError(
            f"{what}: y: expected digits 0..{n_out - 1} (the network's sizes[-1] = {n_out}). "
            f"Received: {int(store.labels.max())}."
        )
    if vectors is not None and vectors != store.vectors:
        _wrong_format(store, what, vectors, n_out)
    return found


def _wrong_format(store: Store, what: str, vectors: bool, n_out: int) -> None:
    if vectors:
        raise ShapeError(
            f"{what}: y is a digit, where this needs a one-hot {n_out}x1 vector (the book's "
            f"training format, from mnist_loader.load_data_wrapper()'s first list). "
            f"Received: {store.labels[0]!r} (for accuracy() and total_cost() on data like "
            f"this, the book passes convert=False and convert=True)."
        )
    raise ShapeError(
        f"{what}: y is a {n_out}x1 vector, where this needs a digit (the book's validation "
        f"and test format). Received: a vector (for training data, the book passes "
        f"convert=True to accuracy() and convert=False to total_cost())."
    )
