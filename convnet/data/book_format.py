"""The book's dataset files: ``mnist.pkl.gz``-style pickles, and the same splits as ``.npz``.

The book's code reads ``((x, y), (x, y), (x, y))`` for training, validation and test from
a gzipped pickle: its ``mnist.pkl.gz``, and the ``mnist_expanded.pkl.gz`` its
``expand_mnist.py`` writes (lists of images, labels a list of ``np.int64``). convnet reads
both through a restricted unpickler and writes the same layout, so the book's
``load_data_shared("../data/mnist_expanded.pkl.gz")`` finds what ``convnet expand-mnist
--out`` made. The ``.npz`` form holds the same six arrays without pickle, pixels as bytes
when they are exact multiples of 1/255 (a quarter of the size).
"""

from __future__ import annotations

import gzip
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from convnet import limits
from convnet.data import safe_pickle
from convnet.errors import DataError
from convnet.files import atomic_write

Split = tuple[np.ndarray, np.ndarray]
SPLITS = ("training", "validation", "test")


def _as_split(x: object, y: object, path: Path, what: str) -> Split:
    try:
        images = np.asarray(x, dtype=np.float32)
        labels = np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {what} is not a pair of arrays ({exc}).") from None
    if images.ndim != 2 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{path}: {what} images and labels don't pair up: expected shapes (n, pixels) "
            f"and (n,). Received: {images.shape} and {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {what} labels must be integers. Received dtype {labels.dtype}.")
    return images, labels.astype(np.int32)


def read_pickle(path: Path) -> tuple[Split, Split, Split]:
    """The three splits of a book-format pickle (gzipped or not)."""
    value = safe_pickle.load(path)
    if not isinstance(value, tuple | list) or len(value) != 3:
        count = len(value) if isinstance(value, tuple | list) else type(value).__name__
        raise DataError(
            f"{path}: expected 3 splits (training, validation, test) like the book's "
            f"mnist.pkl.gz. Received: {count}."
        )
    splits = []
    for what, pair in zip(SPLITS, value, strict=True):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise DataError(f"{path}: {what} should be a pair (images, labels).")
        splits.append(_as_split(pair[0], pair[1], path, what))
    return splits[0], splits[1], splits[2]


def read_npz(path: Path) -> tuple[Split, Split, Split]:
    """The three splits of a ``.npz`` written by :func:`write`."""
    try:
        arrays = limits.read_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}).") from None
    if set(arrays) == {"x", "y"}:
        whole = path.with_name("mnist_expanded.npz")
        raise DataError(
            f"{path}: this is convnet's cache of the expanded training images alone. To make "
            f"a file with all three splits, run: convnet expand-mnist --out {whole}"
        )
    wanted = [f"{split}_{part}" for split in SPLITS for part in ("x", "y")]
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)}. Received: {sorted(arrays)}.")
    splits = []
    for what in SPLITS:
        images = arrays[f"{what}_x"]
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / np.float32(255.0)
        splits.append(_as_split(images, arrays[f"{what}_y"], path, what))
    return splits[0], splits[1], splits[2]


def write(path: Path, splits: tuple[Split, Split, Split]) -> Path:
    """Write ``splits`` as a book-format gzipped pickle, or as ``.npz`` if ``path`` ends so.

    Images are float32 in [0, 1] and labels int64, the book's types. The pickle is
    protocol 4, not the book's 2: numpy 2 names its array constructors in a module old
    numpy lacks, so no Python 2 reader could load the file either way, and protocol 2
    stores array bytes as text (measured for the 250,000-image set: 4.5 GB peak memory)."""
    path = writable(Path(path))
    pairs = tuple((np.asarray(x, np.float32), np.asarray(y, np.int64)) for x, y in splits)
    if path.suffix == ".npz":
        arrays: dict[str, Any] = {}
        for what, (x, y) in zip(SPLITS, pairs, strict=True):
            as_bytes = np.round(x * 255)
            exact = np.array_equal(as_bytes / 255, x)
            arrays[f"{what}_x"] = as_bytes.astype(np.uint8) if exact else x
            arrays[f"{what}_y"] = y
        _write(path, lambda handle: np.savez(handle, **arrays))
        return path

    def dump(handle) -> None:
        if path.suffix != ".gz":  # a plain .pkl (GzipFile would write its header regardless)
            pickle.dump(pairs, handle, protocol=4)
            return
        with gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=1) as opened:
            pickle.dump(pairs, opened, protocol=4)

    _write(path, dump)
    return path


def writable(path: Path) -> Path:
    """``path``, if its suffix is one :func:`write` writes (checked before any work)."""
    if path.suffix not in (".npz", ".pkl", ".gz"):
        raise DataError(
            f"{path}: convnet writes the book's format as .pkl.gz (the book's), .pkl or .npz. "
            f"Received: {path.suffix or 'no suffix'}; nothing was written."
        )
    return path


def _write(path: Path, write) -> None:
    """:func:`atomic_write`, with a folder that can't be written named in a DataError."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise DataError(f"{path}: cannot be written ({exc.strerror or exc}).") from None
