"""Weight initialisers: network3's scheme, and network2.py's "default" and "large".

network3 scales weights by the *fan-out* (1/n_out, with conv fan-out divided by the pool
area); network2 scales by the fan-in. Both are kept so the book's experiments reproduce.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("network3", "default", "large")

FLOAT = np.float32


def check_scheme(init: str) -> str:
    if init not in SCHEMES:
        raise ValueError(f"init: expected one of {SCHEMES}. Received: {init!r}.")
    return init


def weights(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    init: str,
    fan_in: int,
    network3_fan_out: int,
    zeros: bool = False,
) -> np.ndarray:
    """Gaussian weights whose scale follows the named scheme.

    ``zeros`` is network3's choice for the softmax layer and applies only to that scheme.
    """
    if init == "network3":
        if zeros:
            return np.zeros(shape, dtype=FLOAT)
        std = np.sqrt(1.0 / network3_fan_out)
    elif init == "default":
        std = 1.0 / np.sqrt(fan_in)
    else:
        std = 1.0
    return rng.normal(0.0, std, size=shape).astype(FLOAT)


def biases(rng: np.random.Generator, n: int, *, init: str, zeros: bool = False) -> np.ndarray:
    """N(0, 1) biases in every scheme (network2 and network3 agree), zeros for softmax."""
    if zeros and init == "network3":
        return np.zeros(n, dtype=FLOAT)
    return rng.normal(0.0, 1.0, size=n).astype(FLOAT)
