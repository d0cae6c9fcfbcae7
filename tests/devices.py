"""The device a test asks for with a given backend.

C and Numba run only on CPUs, so a suite run with ``CONVNET_DEVICE=gpu`` keeps their cases
there and moves only the JAX cases onto the GPU.
"""

from __future__ import annotations


def device_for(backend: str | None) -> str | None:
    return "cpu" if backend in ("c", "numba") else None
