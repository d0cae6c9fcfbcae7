"""Dropout masks from a counter-based hash instead of a stateful generator.

A mask is a pure function of (seed, layer salt, training step, element index): the same
bits on the C, Numba and JAX backends, nothing to copy to a device, and a checkpoint only
needs the step counter to resume the exact same masks. The mixer is a 32-bit integer
hash (xor-shift-multiply, "lowbias32"), which passes the usual avalanche tests and is
far more than dropout needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

_MUL_1 = np.uint32(0x7FEB352D)
_MUL_2 = np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)


_LOW_32 = np.uint64(0xFFFFFFFF)


def _shift_right(x: TensorVariable, bits: int) -> TensorVariable:
    return pt.int_div(x, pt.constant(np.uint64(1 << bits)))


def _mul_low32(x: TensorVariable, factor: np.uint32) -> TensorVariable:
    # Backends disagree on whether fused integer expressions wrap at 32 bits (Numba's
    # composites widen), so the product is taken in 64 bits and masked explicitly.
    return pt.bitwise_and(x * pt.constant(np.uint64(factor)), pt.constant(_LOW_32))


def hash32(x: TensorVariable) -> TensorVariable:
    """Bijective avalanche mix of 32-bit values held in uint64 tensors."""
    x = pt.bitwise_xor(x, _shift_right(x, 16))
    x = _mul_low32(x, _MUL_1)
    x = pt.bitwise_xor(x, _shift_right(x, 15))
    x = _mul_low32(x, _MUL_2)
    return pt.bitwise_xor(x, _shift_right(x, 16))


def hash32_numpy(x: np.ndarray | int) -> np.ndarray:
    """The same mix in NumPy (uint32 wraps natively), for tests and host-side keys."""
    h: Any = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * _MUL_1
        h = h ^ (h >> np.uint32(15))
        h = h * _MUL_2
        return np.asarray(h ^ (h >> np.uint32(16)))


def layer_key(seed: int | TensorVariable, salt: int) -> TensorVariable:
    """The key of one layer of one network: ``seed`` may be symbolic (a uint64 scalar),
    so that one graph can draw the masks of several networks (see convnet.lockstep)."""
    salt_key = hash32_numpy(salt)
    if isinstance(seed, (int, np.integer)):
        return pt.constant(np.uint64(hash32_numpy(np.uint32(seed & 0xFFFFFFFF) ^ salt_key)))
    low = pt.bitwise_and(pt.cast(seed, "uint64"), pt.constant(_LOW_32))
    return hash32(pt.bitwise_xor(low, pt.constant(np.uint64(salt_key))))


def uniform(
    shape: tuple[int, ...],
    *,
    seed: int | TensorVariable,
    salt: int,
    step: TensorVariable,
    first_element: TensorVariable | int = 0,
) -> TensorVariable:
    """float32 uniforms in [0, 1) for this (seed, salt, step), one per element.

    ``first_element`` numbers the elements from there: a slice of rows of a larger batch
    draws exactly the numbers the whole batch would draw for those rows.
    """
    step_key = hash32(_mul_low32(pt.cast(step, "uint64"), _GOLDEN))
    key = pt.bitwise_xor(step_key, layer_key(seed, salt))
    index = pt.arange(int(np.prod(shape)), dtype="uint64")
    if not (isinstance(first_element, int) and first_element == 0):
        index = index + pt.cast(first_element, "uint64")
    mixed = hash32(pt.bitwise_xor(index, key))
    bits = hash32(pt.bitwise_and(mixed + key, pt.constant(_LOW_32)))
    # The top 24 bits fit a float32 mantissa exactly, so the result is never 1.0.
    top = pt.cast(_shift_right(bits, 8), "float32")
    return (top * np.float32(2.0**-24)).reshape(shape)


def dropout(
    x: TensorVariable,
    p_drop: float,
    *,
    shape: tuple[int, ...],
    seed: int | TensorVariable,
    salt: int,
    step: TensorVariable,
    first_element: TensorVariable | int = 0,
) -> TensorVariable:
    """Zero each unit with probability ``p_drop`` (no rescaling: see layers.py).

    ``shape`` is static because JAX needs the mask size at trace time.
    """
    uniforms = uniform(shape, seed=seed, salt=salt, step=step, first_element=first_element)
    keep = uniforms >= np.float32(p_drop)
    return x * pt.cast(keep, x.dtype)
