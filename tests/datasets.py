"""Small learnable MNIST-shaped data for tests: faint noise and one bright pixel per class."""

from __future__ import annotations

import numpy as np


def learnable_splits(
    seed: int, sizes: tuple[int, ...], label_dtype: type = np.int64
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """One (x, y) split per size, drawn in order from one generator seeded ``seed``."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n).astype(label_dtype)
        x = rng.random((n, 784), dtype=np.float32) * 0.2
        x[np.arange(n), y * 70] = 1.0
        return x, y

    return tuple(split(n) for n in sizes)
