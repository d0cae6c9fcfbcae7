"""Turning what users pass as data into checked numpy arrays.

The book passes ``(shared_x, shared_y)`` pairs from ``load_data_shared``; modern code
passes numpy ``(x, y)``. Both become float32 images and int32 labels, checked here so a
bad dataset fails with its name in the message, not inside a compiled function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convnet.errors import DataError, ShapeError


def _host_value(value: Any) -> np.ndarray:
    if hasattr(value, "get_value"):
        return np.asarray(value.get_value(borrow=True))
    if hasattr(value, "eval") and not isinstance(value, np.ndarray):
        return np.asarray(value.eval())  # network3's T.cast(shared_y, "int32")
    return np.asarray(value)


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
    x, y = _host_value(x_raw), _host_value(y_raw)
    if x.ndim != 2:
        x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ShapeError(
            f"{what}: images must have {n_features} features each to fit the first layer: "
            f"expected shape (n, {n_features}). Received: {x.shape}."
        )
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what}: images must be numbers. Received dtype {x.dtype}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError(f"{what}: images contain NaN or inf (first at example {bad}).")
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
