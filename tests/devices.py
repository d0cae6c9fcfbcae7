"""Where a test runs: the device it asks for with a given backend (C and Numba run only on
CPUs, so a suite run with ``CONVNET_DEVICE=gpu`` keeps their cases there and moves only the
JAX cases onto the GPU), one core or all of them, and a local Dask cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def device_for(backend: str | None) -> str | None:
    return "cpu" if backend in ("c", "numba") else None


def on_one_core_and_all(child: str, tmp_path: Path) -> list[np.ndarray]:
    """The array ``child`` (Python source) saves to ``argv[1]``, run pinned to one core
    and to every core this process may use (``argv[2]``: the cores, comma-separated)."""
    results = []
    for cores in ({min(os.sched_getaffinity(0))}, os.sched_getaffinity(0)):
        out = tmp_path / f"{len(cores)}.npy"
        cores_arg = ",".join(map(str, sorted(cores)))
        subprocess.run([sys.executable, "-c", child, str(out), cores_arg], check=True)
        results.append(np.load(out))
    return results


def local_cluster() -> Any:
    """A real Dask cluster on 127.0.0.1: a scheduler and 2 worker processes, 1 thread each
    (skips the test where Dask's distributed is not installed)."""
    distributed = pytest.importorskip("distributed")
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
