"""The process-wide changes convnet makes to PyTensor and JAX, applied by one explicit call.

Nothing here runs at import: :func:`apply` is called by :meth:`Backend.apply
<convnet.runtime.backend.Backend.apply>` when a network is built, so ``import convnet``
alone leaves PyTensor's registries and JAX's configuration as they were (as Keras reads
its backend once, into one config, rather than patching on import).
"""

from __future__ import annotations

import ctypes.util
import os
from typing import Any

import pytensor

from convnet import config
from convnet.runtime import jax_dispatch, kernel, numba_c

_APPLIED: set[str] = set()


def applied(name: str) -> bool:
    """Whether :func:`apply` has run for backend ``name`` in this process."""
    return name in _APPLIED


def apply(name: str, device: str) -> None:
    """Ready PyTensor (and JAX) to run convnet's graphs on backend ``name`` (c | numba |
    jax) and ``device``; each step happens once per process.

    convnet's Ops get their Numba and C implementations whatever the backend: the book's
    code compiles its own functions over convnet's graphs in PyTensor's default mode.
    """
    if f"{name}:{device}" in _APPLIED:
        return
    numba_c.register()
    if name == "c":
        _configure_blas()
    if name == "jax":
        _jax_outputs_keep_dtype()
        _persistent_xla_cache()
        jax_dispatch.register()
        if device == "cpu" and kernel.enabled() and not config.setting("CONVNET_CONV"):
            kernel.start_build()  # compiles beside PyTensor's graph building
    _APPLIED.update((name, f"{name}:{device}"))


def _configure_blas() -> None:
    """Link the C backend to the system OpenBLAS unless the user chose a BLAS.

    PyTensor's own detection misses a pip-installed numpy's BLAS and then falls back to
    slow NumPy C-API calls. (Reading the flag first would trigger that detection and
    its warning, so the user's choice is read from PYTENSOR_FLAGS.)
    """
    if "blas__ldflags" in os.environ.get("PYTENSOR_FLAGS", ""):
        return
    if ctypes.util.find_library("openblas"):
        pytensor.config.blas__ldflags = "-lopenblas"


def _jax_outputs_keep_dtype() -> None:
    """Make PyTensor's JAX reductions and allocations return their declared dtype.

    PyTensor 3.0 returns a float32 sum's float64 accumulator in JAX mode, and an
    ``Alloc``'s Python-float fill value makes ``zeros(..., dtype=float32)`` float64: the
    weights turned float64 after one step (half the speed), and the native conv's input
    gradient refused to mix dtypes. The cast restores the declared dtype.
    """
    if "jax-dtypes" in _APPLIED:
        return
    from pytensor.link.jax.dispatch import jax_funcify
    from pytensor.tensor.basic import Alloc
    from pytensor.tensor.elemwise import CAReduce

    def keep_declared_dtype(op_type: type) -> None:
        upstream = jax_funcify.dispatch(op_type)

        @jax_funcify.register(op_type)
        def _cast(op: Any, node: Any = None, **kwargs: Any) -> Any:
            compute = upstream(op, node=node, **kwargs)
            if node is None:
                return compute
            dtype = node.outputs[0].dtype
            return lambda *inputs: compute(*inputs).astype(dtype)

    keep_declared_dtype(CAReduce)
    keep_declared_dtype(Alloc)
    _APPLIED.add("jax-dtypes")


def _persistent_xla_cache() -> None:
    """Keep XLA's compiled programs on disk (``CONVNET_CACHE``, default ~/.cache/convnet),
    so a second run skips XLA's compilation; a cache that can't be written is not used.
    Why: benchmarks/RESULTS.md, "Optimisation log", row `xla-cache`."""
    if "xla-cache" in _APPLIED:
        return
    _APPLIED.add("xla-cache")
    import jax

    folder = config.cache_root() / "xla"
    try:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except (OSError, AttributeError, ValueError):
        pass
