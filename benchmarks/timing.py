"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from typing import Any


def evaluation_seconds(net: Any, data: Any, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` full evaluation passes, after one warm-up pass."""
    net.accuracy(data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.accuracy(data)
        times.append(time.perf_counter() - start)
    return times
