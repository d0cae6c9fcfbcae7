"""Turning what users pass as data into checked numpy arrays.

The book passes ``(shared_x, shared_y)`` pairs from ``load_data_shared``; modern code
passes numpy ``(x, y)``. Both become float32 images and int32 labels, checked here so a
bad dataset fails with its name in the message, not inside a compiled function.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from convnet.errors import DataError, DataWarning, ShapeError

OUTSIDE = 0.01  # how far past [0, 1] pixels may stray (rounding, resampling) unremarked


def _host_value(value: Any) -> np.ndarray:
    if hasattr(value, "get_value"):
        return np.asarray(value.get_value(borrow=True))
    if hasattr(value, "eval") and not isinstance(value, np.ndarray):
        return np.asarray(value.eval())  # network3's T.cast(shared_y, "int32")
    return np.asarray(value)


def images(x_raw: Any, what: str, n_features: int) -> np.ndarray:
    """``x_raw`` as float32 [n, n_features] in MNIST's [0, 1]: NaN and inf are refused,
    whole-number images in 0..255 (a common slip: MNIST as bytes) are divided by 255 with
    a warning, other values outside [0, 1] are warned about (they may be meant)."""
    x = _host_value(x_raw)
    if x.ndim != 2:
        x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ShapeError(
            f"{what}: images must have {n_features} features each to fit the first layer: "
            f"expected shape (n, {n_features}). Received: {x.shape}."
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{what}: images must be real numbers. Received dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.integer) and x.size and x.max() > 1:
        if x.min() < 0 or x.max() > 255:
            raise DataError(
                f"{what}: integer images must hold pixels 0..255 (or 0/1). "
                f"Received values from {x.min()} to {x.max()}."
            )
        warnings.warn(
            f"{what}: images are whole numbers 0..255; divided by 255 to MNIST's [0, 1], "
            "as the networks expect. Pass float images in [0, 1] to silence this.",
            DataWarning,
            stacklevel=3,
        )
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError(f"{what}: images contain NaN or inf (first at example {bad}).")
    if x.size and (x.min() < -OUTSIDE or x.max() > 1 + OUTSIDE):
        warnings.warn(
            f"{what}: pixel values run from {x.min():g} to {x.max():g}, outside MNIST's "
            "[0, 1]; networks trained on MNIST read such images wrongly (divide 0..255 "
            "images by 255).",
            DataWarning,
            stacklevel=3,
        )
    return x


def as_arrays(
    data: Any, what: str, *, n_features: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as (float32 [n, n_features], int32 [n]) or a DataError naming ``what``."""
    try:
        x_raw, y_raw = data
    except (TypeError, ValueError):
        raise DataError(
            f"{what}: expected a pair (images, labels). Received: {type(data).__name__}."
        ) from None
    x, y = images(x_raw, what, n_features), _host_value(y_raw)
    if y.ndim != 1 or len(y) != len(x):
        raise ShapeError(
            f"{what}: expected one label per image, shape ({len(x)},). Received: {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what}: labels must be integers. Received dtype {y.dtype}.")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(
            f"{what}: labels must lie in [0, {n_classes}). Received values from "
            f"{int(y.min())} to {int(y.max())}."
        )
    return x, y.astype(np.int32)
