"""Exception types users catch.

Each subclasses the builtin that fits (``ValueError``, ``TypeError``, ``OSError``) so code
written against the builtins keeps working, and each message says what was expected and
what was received, naming the layer, argument or file at fault.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class ConvnetError(Exception):
    """Base of every error convnet raises on purpose."""


class ShapeError(ConvnetError, ValueError):
    """Layers that do not chain, or data whose shape does not fit the network."""


class ArgumentError(ConvnetError, ValueError):
    """A hyper-parameter or argument outside its valid range."""


class DataError(ConvnetError, ValueError):
    """A data file or array that is truncated, corrupt, or not what it claims to be."""


class DataNotFoundError(ConvnetError, FileNotFoundError):
    """No data where convnet looked; the message lists the places and how to get MNIST."""


class UnsafePickleError(ConvnetError, ValueError):
    """A pickle that asks to build something other than numpy arrays and tuples."""


class BackendError(ConvnetError, RuntimeError):
    """A requested backend or device cannot be used on this machine."""


class DivergenceError(ConvnetError, FloatingPointError):
    """Training cost became NaN or infinite."""


class ModelFileError(ConvnetError, ValueError):
    """A saved model whose arrays do not match its architecture, or from another version."""


class DataWarning(UserWarning):
    """Data convnet can use but that is probably not what was meant (e.g. 0..255 pixels)."""


def expected(what: str, expected_: object, received: object) -> str:
    """The house message template: ``<what>: expected <x>. Received: <y>.``"""
    return f"{what}: expected {expected_}. Received: {received}."


def check_number(
    value: Any,
    what: str,
    *,
    integer: bool = False,
    low: float = 0.0,
    inclusive: bool = False,
    high: float = math.inf,
) -> None:
    """Raise ArgumentError naming ``what`` unless ``value`` is a finite number (an integer
    with ``integer``) above ``low`` (or at it, with ``inclusive``) and below ``high``."""
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int | np.integer) or bool(np.isfinite(value)))  # ints are
    ok = ok and (value >= low if inclusive else value > low) and value < high
    if not ok:
        noun = "an integer" if integer else "a number"
        bound = f"{'>=' if inclusive else '>'} {low:g}"
        if high < math.inf:  # an integer's bound reads as the largest one allowed
            bound += f" and <= {math.ceil(high) - 1:,}" if integer else f" and < {high:g}"
        raise ArgumentError(f"{what}: expected {noun} {bound}. Received: {value!r}.")
