"""Turning an arbitrary picture of a digit into an MNIST-style 28x28 input.

MNIST digits are white ink on black, scaled so the digit fits a 20x20 box, then placed
in a 28x28 image with their centre of mass at the centre. Photos and scans are usually
dark ink on light paper, of any size: they are converted the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convnet.errors import DataError

SIDE, BOX = 28, 20


def to_mnist(pixels: np.ndarray, source: str = "image") -> np.ndarray:
    """A 2-D grayscale array (any range) -> float32 (784,) in [0, 1], MNIST-style."""
    from PIL import Image

    a = np.asarray(pixels, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 1:
        raise DataError(f"{source}: expected a 2-D grayscale image. Received shape {a.shape}.")
    span = a.max() - a.min()
    if span == 0:
        raise DataError(f"{source}: the image is blank (a single colour); no digit to read.")
    a = (a - a.min()) / span
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 0.5:  # light background: make the ink the bright part
        a = 1.0 - a
    ink = np.argwhere(a > 0.25)
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    crop = a[top:bottom, left:right]
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = (
        np.asarray(
            Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS),
            dtype=np.float64,
        )
        / 255.0
    )
    rows, cols = np.indices(small.shape)
    mass = small.sum()
    centre = (rows * small).sum() / mass, (cols * small).sum() / mass
    top = int(np.clip(round(SIDE / 2 - centre[0]), 0, SIDE - small.shape[0]))
    left = int(np.clip(round(SIDE / 2 - centre[1]), 0, SIDE - small.shape[1]))
    out = np.zeros((SIDE, SIDE))
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out.astype(np.float32).reshape(-1)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG/JPEG (or anything Pillow opens) and convert it with :func:`to_mnist`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not an image Pillow can read ({exc}).") from None
    return to_mnist(gray, str(path))
