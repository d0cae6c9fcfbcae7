"""The book's expanded training set: every image plus its four one-pixel shifts.

As in the book's ``expand_mnist.py``: 50,000 -> 250,000 images, a pixel shifted in
leaves a row or column of zeros (not a wrap-around), and the result is shuffled.
The expansion is cached as ``.npz`` so later runs load it in a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from convnet import config
from convnet.files import atomic_write

SIDE = 28


def shift(images: np.ndarray, d_row: int, d_col: int) -> np.ndarray:
    """Shift (n, 784) images by one pixel, filling the uncovered edge with zeros."""
    square = images.reshape(-1, SIDE, SIDE)
    moved = np.zeros_like(square)
    rows = slice(max(d_row, 0), SIDE + min(d_row, 0))
    cols = slice(max(d_col, 0), SIDE + min(d_col, 0))
    src_rows = slice(max(-d_row, 0), SIDE + min(-d_row, 0))
    src_cols = slice(max(-d_col, 0), SIDE + min(-d_col, 0))
    moved[:, rows, cols] = square[:, src_rows, src_cols]
    return moved.reshape(len(images), -1)


def expand(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Originals plus shifts down, up, right and left, shuffled with ``seed``."""
    moves = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    images = np.concatenate([x, *(shift(x, r, c) for r, c in moves)])
    labels = np.concatenate([y] * (1 + len(moves)))
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], labels[order]


def default_cache(training: tuple[np.ndarray, np.ndarray]) -> Path:
    """The cache of ``training``'s expansion, named by a digest of its images and labels:
    another training set of the same size (Fashion-MNIST, say) never gets MNIST's."""
    x, y = training
    digest = hashlib.blake2b(digest_size=8)
    for array in (x, y):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data.cast("B"))
    return config.cache_root() / f"mnist_expanded_{len(x)}_{digest.hexdigest()}.npz"


def load_expanded(
    training: tuple[np.ndarray, np.ndarray], cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The expanded set for ``training``, from the cache when it matches, else built."""
    x, y = training
    cache = cache or default_cache(training)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if stored["x"].shape == (5 * len(x), x.shape[1]):
                images = stored["x"]
                if images.dtype == np.uint8:
                    images = images.astype(np.float32) / np.float32(255.0)
                return images, stored["y"]
    images, labels = expand(x, y)
    as_bytes = np.round(images * 255)
    # MNIST pixels are k/255: store them as bytes (196 MB instead of 784 MB) when exact.
    stored_x = as_bytes.astype(np.uint8) if np.array_equal(as_bytes / 255, images) else images
    atomic_write(cache, lambda handle: np.savez(handle, x=stored_x, y=labels))
    return images, labels
