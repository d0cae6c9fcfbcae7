"""Turning an arbitrary picture of a digit into an MNIST-style 28x28 input.

MNIST digits are white ink on black, scaled so the digit fits a 20x20 box, then placed
in a 28x28 image with their centre of mass at the centre. Photos and scans are usually
dark ink on light paper, of any size, often unevenly lit, and come as JPEGs with an EXIF
rotation, RGBA with a transparent background, or 16-bit greyscale: each is read the way
it is meant to be seen (Pillow's ``exif_transpose``, alpha composited against a
contrasting background, 16-bit read as 16-bit), the paper's shading is estimated and
subtracted, and the ink is cut out and placed as MNIST places it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from convnet.errors import DataError

SIDE, BOX = 28, 20
MAX_PIXELS = 50_000_000  # larger pictures are refused before they are decoded
WORKING_SIDE = 400  # pictures are shrunk to this longest side before reading the ink
BACKGROUND_SIDE = 64  # the shading estimate works on a picture this small


def _resized(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` (float, any range) resized to ``size`` = (width, height)."""
    from PIL import Image

    return np.asarray(
        Image.fromarray(a.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )


def _background(ink: np.ndarray) -> np.ndarray:
    """The paper's own brightness under ``ink`` (ink bright): a grey opening, far wider
    than a stroke, of a small copy, blurred and scaled back up. Subtracting it removes
    shading that changes slowly across the picture and keeps the strokes."""
    from PIL import Image, ImageFilter

    height, width = ink.shape
    scale = BACKGROUND_SIDE / max(height, width)
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(_resized(ink, small_size), mode="F")
    size = 2 * (BACKGROUND_SIDE // 8) + 1  # wider than a stroke of a digit filling the box
    opened = small.filter(ImageFilter.MinFilter(size)).filter(ImageFilter.MaxFilter(size))
    smooth = _box_blur(_box_blur(np.asarray(opened), size // 2), size // 2)
    return _resized(smooth, (width, height))


def _box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2 radius + 1)-square window, edges repeated (Pillow blurs no floats)."""
    width = 2 * radius + 1
    for axis in (0, 1):
        padded = np.pad(a, [(radius + 1, radius) if k == axis else (0, 0) for k in (0, 1)], "edge")
        sums = np.cumsum(padded, axis=axis)
        a = (
            np.take(sums, range(width, sums.shape[axis]), axis)
            - np.take(sums, range(0, sums.shape[axis] - width), axis)
        ) / width
    return a


def _otsu(values: np.ndarray) -> float:
    """The threshold that best splits ``values`` (in [0, 1]) into two classes."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    return float(centres[int(np.nanargmax(between))])


def _span(mass: np.ndarray, cut: float = 0.005) -> tuple[int, int]:
    """The rows (or columns) holding all but ``cut`` of the ink at each end: a stray
    speck of noise far from the digit does not stretch the crop."""
    cumulative = np.cumsum(mass) / mass.sum()
    return int(np.searchsorted(cumulative, cut)), int(np.searchsorted(cumulative, 1 - cut)) + 1


def to_mnist(pixels: np.ndarray, source: str = "image") -> np.ndarray:
    """A 2-D grayscale array (any range) -> float32 (784,) in [0, 1], MNIST-style."""
    from PIL import Image

    a = np.asarray(pixels, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 1:
        raise DataError(f"{source}: expected a 2-D grayscale image. Received shape {a.shape}.")
    if not np.isfinite(a).all():
        raise DataError(f"{source}: the image holds NaN or infinite pixel values.")
    span = a.max() - a.min()
    if span == 0:
        raise DataError(f"{source}: the image is blank (a single colour); no digit to read.")
    a = (a - a.min()) / span
    if max(a.shape) > WORKING_SIDE:
        scale = WORKING_SIDE / max(a.shape)
        a = _resized(a, (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale))))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    ink = 1.0 - a if np.median(border) > 0.5 else a  # light paper: the ink is the dark part
    if min(ink.shape) >= 8:
        ink = ink - _background(ink)
    ink = np.clip(ink, 0.0, None)
    strongest = np.percentile(ink, 99.9)
    if strongest <= 0:
        raise DataError(f"{source}: no ink found; the picture is too faint or empty.")
    ink = np.clip(ink / strongest, 0.0, 1.0)
    threshold = _otsu(ink)
    # Below the threshold is paper (and its noise); above it, strokes keep their soft edges.
    ink = np.clip((ink - threshold / 2) / (1 - threshold / 2), 0.0, 1.0) * (ink > threshold / 2)
    strokes = ink * (ink > threshold)
    if strokes.sum() == 0:
        raise DataError(f"{source}: no ink found; the picture is too faint or empty.")
    top, bottom = _span(strokes.sum(axis=1))
    left, right = _span(strokes.sum(axis=0))
    crop = ink[top:bottom, left:right]
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
    if mass == 0:
        raise DataError(f"{source}: no ink found; the picture is too faint or empty.")
    centre = (rows * small).sum() / mass, (cols * small).sum() / mass
    top = int(np.clip(round(SIDE / 2 - centre[0]), 0, SIDE - small.shape[0]))
    left = int(np.clip(round(SIDE / 2 - centre[1]), 0, SIDE - small.shape[1]))
    out = np.zeros((SIDE, SIDE))
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out.astype(np.float32).reshape(-1)


def _grayscale(image, source: str) -> np.ndarray:
    """The picture as it is meant to be seen, as one float channel (any range)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image  # a phone's "rotate me" tag
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(image, dtype=np.float64)  # 16-bit and 32-bit scans keep their range
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0
        alpha = rgba[..., 3]
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
        if alpha.min() < alpha.max():
            # Composite against the colour that contrasts with the opaque part (the ink).
            opaque = alpha > 0.5
            ink_is_dark = gray[opaque].mean() < 0.5 if opaque.any() else True
            paper = 1.0 if ink_is_dark else 0.0
            return gray * alpha + paper * (1 - alpha)
        return gray
    try:
        return np.asarray(image.convert("L"), dtype=np.float64)
    except (ValueError, OSError) as exc:
        raise DataError(f"{source}: cannot convert its {image.mode} pixels ({exc}).") from None


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG/JPEG (or anything Pillow opens) and convert it with :func:`to_mnist`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DataError(
                    f"{path}: {width} x {height} pixels is too large to read "
                    f"(convnet reads pictures up to {MAX_PIXELS / 1e6:.0f} megapixels); "
                    "shrink it first."
                )
            image.load()
            gray = _grayscale(image, str(path))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file.") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"{path}: too large to read (convnet reads pictures up to "
            f"{MAX_PIXELS / 1e6:.0f} megapixels); shrink it first."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not an image Pillow can read ({exc}).") from None
    return to_mnist(gray, str(path))
