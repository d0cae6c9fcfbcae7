"""Python 2's ``random.shuffle``, which the book's seeded figure data was made with.

Python 3 draws its swap positions with ``randbelow`` (rejection sampling of random bits),
so from the same seed it gives another order than Python 2, which took
``int(random() * (i + 1))``. The book's figures can be reproduced only with Python 2's
order, so the book's programs shuffle with this function.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, MutableSequence
from typing import Any


def shuffle(items: MutableSequence[Any], random: Callable[[], float] | None = None) -> None:
    """Shuffle ``items`` in place exactly as Python 2.7's ``random.shuffle`` did, drawing
    from ``random`` (default: the global generator's ``random.random``)."""
    draw = _random.random if random is None else random
    for i in reversed(range(1, len(items))):
        j = int(draw() * (i + 1))
        items[i], items[j] = items[j], items[i]
