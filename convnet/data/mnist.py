"""MNIST in the book's split, from canonical IDX files or the book's ``mnist.pkl.gz``.

training = the first 50,000 training images, validation = the last 10,000, test = the
10,000 t10k images; pixels are float32 in [0, 1], labels int32.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from convnet import config, limits
from convnet.data import book_format, download
from convnet.errors import DataError, DataNotFoundError

Split = tuple[np.ndarray, np.ndarray]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
BOOK_PICKLES = ("mnist.pkl.gz", "mnist.pkl")
N_TRAIN = 50_000

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

HOW_TO_GET = (
    "Get MNIST with `convnet download mnist`, or copy the four IDX files "
    "(train-images-idx3-ubyte.gz, ...) into one of those folders, or set CONVNET_DATA "
    "to a folder that has them."
)


def default_locations() -> list[Path]:
    """Where MNIST is looked for when no path is given, in order."""
    places = []
    if config.setting("CONVNET_DATA"):
        places.append(Path(config.setting("CONVNET_DATA")).expanduser())
    places.append(config.cache_root() / "mnist")
    return places


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or raw): its header first, then exactly the bytes it
    promises (a gzip stream is inflated no further), checked against :mod:`convnet.limits`
    before anything is allocated."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise DataError(
                    f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})."
                )
            dims = handle.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise DataError(f"{path}: truncated IDX header.")
            shape = tuple(int.from_bytes(dims[4 * k : 4 * k + 4], "big") for k in range(magic[3]))
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            nbytes = math.prod(shape) * dtype.itemsize
            try:
                limits.check_bytes(nbytes, f"its header's shape {shape}")
            except limits.TooLargeError as exc:
                raise DataError(f"{path}: {exc}.") from None
            raw = handle.read(nbytes + 1)  # one byte more than promised: there must be none
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'} ({exc})."
        ) from None
    if len(raw) != nbytes:
        header = 4 + len(dims)
        raise DataError(
            f"{path}: truncated or corrupt: its header promises shape {shape} "
            f"({header + nbytes} bytes). Received: "
            + ("more than that." if len(raw) > nbytes else f"{header + len(raw)} bytes.")
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _from_idx_folder(folder: Path, divisor: float) -> tuple[Split, Split, Split]:
    found = {key: _find_idx(folder, stem) for key, stem in IDX_FILES.items()}
    paths = {key: path for key, path in found.items() if path is not None}
    missing = [IDX_FILES[k] for k in found if k not in paths]
    if missing:
        raise DataNotFoundError(
            f"{folder}: missing {', '.join(missing)} (.gz or raw). {HOW_TO_GET}"
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for kind in ("train", "test"):
        images, labels = arrays[f"{kind}_images"], arrays[f"{kind}_labels"]
        if images.ndim != 3:
            raise DataError(
                f"{paths[f'{kind}_images']}: expected images (a 3-d IDX array: count x rows x "
                f"columns). Received: {images.ndim}-d data of shape {images.shape}."
            )
        if labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{folder}: {kind} images {images.shape} and labels {labels.shape} don't pair up."
            )

    def pixels(a: np.ndarray) -> np.ndarray:
        return a.reshape(len(a), -1).astype(np.float32) / np.float32(divisor)

    train_x, train_y = pixels(arrays["train_images"]), arrays["train_labels"].astype(np.int32)
    test = (pixels(arrays["test_images"]), arrays["test_labels"].astype(np.int32))
    return (
        (train_x[:N_TRAIN], train_y[:N_TRAIN]),
        (train_x[N_TRAIN:], train_y[N_TRAIN:]),
        test,
    )


def find_mnist(path: str | os.PathLike[str] | None = None) -> Path:
    """The file or IDX folder :func:`load_mnist` reads for ``path`` (see there)."""
    candidates = [Path(path).expanduser()] if path is not None else default_locations()
    for place in candidates:
        if place.is_file():
            return place
        if place.is_dir():
            if any(_find_idx(place, stem) for stem in IDX_FILES.values()):
                return place
            for name in BOOK_PICKLES:
                if (place / name).is_file():
                    return place / name
    if path is not None and "expanded" in Path(path).name:
        raise DataNotFoundError(
            f"{path}: no such file. Make the book's expanded training set there with: "
            f"convnet expand-mnist --out {path}"
        )
    looked = ", ".join(str(p) for p in candidates)
    if path is not None or config.setting("CONVNET_DATA"):  # a place the user named
        raise DataNotFoundError(f"MNIST not found. Looked in: {looked}. {HOW_TO_GET}")
    return _fetch_on_first_use(candidates[-1])


def _fetch_on_first_use(cache: Path) -> Path:
    """MNIST fetched and verified into the cache (as Keras's ``mnist.load_data()`` does),
    when no path was given and neither ``CONVNET_DATA`` nor the cache has it."""
    print(
        f"convnet: MNIST is not in {cache} yet; fetching it (about 11 MB, each file checked).",
        file=sys.stderr,
    )
    try:
        return download.download_mnist(cache)
    except OSError as exc:  # DownloadError is one; so is a cache that cannot be written
        raise DataNotFoundError(
            f"MNIST not found in {cache}, and fetching it failed: {exc}\nOffline, set "
            "CONVNET_DATA to a folder that has the four IDX files "
            "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)."
        ) from None


def load_mnist(
    path: str | os.PathLike[str] | None = None, *, divisor: float = 255.0
) -> tuple[Split, Split, Split]:
    """``(training, validation, test)`` as numpy ``(x, y)`` pairs.

    ``path`` may be a folder of IDX files, the book's ``mnist.pkl.gz`` /
    ``mnist_expanded.pkl.gz``, or a ``.npz`` of the same splits (see
    :mod:`convnet.data.book_format`). With no path: ``$CONVNET_DATA``, then
    ``~/.cache/convnet/mnist``, fetched there on first use when ``CONVNET_DATA`` is
    unset. IDX pixels (bytes) are divided by ``divisor``: 255 gives
    [0, 1]; the book's ``mnist.pkl.gz``, which chapters 1-5 train on, holds them / 256.
    """
    place = find_mnist(path)
    return _from_file(place) if place.is_file() else _from_idx_folder(place, divisor)


def _from_file(path: Path) -> tuple[Split, Split, Split]:
    if path.suffix == ".npz":
        return book_format.read_npz(path)
    return book_format.read_pickle(path)


def load_data_shared(filename: str | os.PathLike[str] | None = None) -> list:
    """The book's loader: ``[(shared_x, shared_y)] * 3`` for training, validation, test."""
    import pytensor

    return [
        (
            pytensor.shared(x, name=f"{what}_x", borrow=True),
            pytensor.shared(y, name=f"{what}_y", borrow=True),
        )
        for (x, y), what in zip(
            load_mnist(filename), ("training", "validation", "test"), strict=True
        )
    ]
