"""Photos of digits, rendered: what a phone or scanner makes of a digit on paper.

Each picture is an MNIST digit drawn as dark ink on paper several times its size, then
put through what real pictures go through: a small rotation, uneven lighting (a ramp
across the page, or a vignette), blur, sensor noise, and one of the formats people
actually send (JPEG with an EXIF rotation, RGBA on a transparent background, 16-bit
greyscale PNG, plain PNG and JPEG).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

FORMATS = ("jpeg-exif", "rgba", "png16", "png", "jpeg")
# Orientation tag -> the transpose that turns the upright picture into the stored one
# (Pillow's exif_transpose undoes it).
_STORED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _ink(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit's ink (0..1) on a page 8-10x its size, rotated and blurred."""
    scale = int(rng.integers(6, 9))
    ink = Image.fromarray((digit.reshape(28, 28) * 255).astype(np.uint8))
    ink = ink.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    page = Image.new("L", (int(28 * scale * rng.uniform(1.3, 1.7)),) * 2, 0)
    room = page.size[0] - ink.size[0]
    page.paste(ink, (int(rng.integers(0, room)), int(rng.integers(0, room))))
    page = page.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC)
    page = page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.0))))
    return np.asarray(page, dtype=np.float64) / 255.0


def _lighting(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """How brightly each point of the page is lit: a ramp or a vignette, down to 25-45%."""
    rows, cols = np.indices(shape) / max(shape)
    low = rng.uniform(0.25, 0.45)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * rows + np.sin(angle) * cols
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    else:
        centre = rng.uniform(0.2, 0.8, 2)
        ramp = 1 - np.hypot(rows - centre[0], cols - centre[1]) / np.sqrt(2)
    return low + (1 - low) * ramp


def render(digit: np.ndarray, path: Path, style: str, rng: np.random.Generator) -> Path:
    """Write ``digit`` (784 MNIST values) as a photo in ``style`` (one of FORMATS)."""
    ink = _ink(digit, rng)
    if style == "rgba":
        rgba = np.zeros((*ink.shape, 4), np.uint8)
        rgba[..., :3] = (20, 30, 90)  # dark blue ink; the background is transparent
        rgba[..., 3] = np.clip(ink * 255, 0, 255).astype(np.uint8)
        target = path.with_suffix(".png")
        Image.fromarray(rgba, mode="RGBA").save(target)
        return target
    paper = rng.uniform(0.75, 0.95)
    photo = paper * (1 - 0.8 * ink) * _lighting(ink.shape, rng)
    photo = np.clip(photo + rng.normal(0, 0.03, ink.shape), 0, 1)
    if style == "png16":
        target = path.with_suffix(".png")
        Image.fromarray((photo * 65535).astype(np.uint16)).save(target)
        return target
    picture = Image.fromarray((photo * 255).astype(np.uint8))
    if style == "png":
        target = path.with_suffix(".png")
        picture.save(target)
        return target
    target = path.with_suffix(".jpg")
    if style == "jpeg-exif":
        orientation = int(rng.choice(list(_STORED)))
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.transpose(_STORED[orientation]).save(target, quality=85, exif=exif)
    else:
        picture.save(target, quality=80)
    return target
