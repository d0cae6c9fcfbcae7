"""A restricted unpickler for the book's ``mnist.pkl.gz``.

Unpickling runs whatever constructors a file names, so a crafted pickle can execute
code. This one admits only the few globals numpy needs to rebuild plain arrays; the
result must be nested tuples/lists of non-object numpy arrays.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from convnet.errors import DataError, UnsafePickleError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Protocol-2 pickles written by Python 3 carry array bytes as latin-1 text re-encoded
    # with codecs.encode: a pure data transform.
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to load {module}.{name}: this pickle asks for "
            "something other than numpy arrays, so it was not loaded (no code from it ran)."
        )


def _check_arrays(value: Any, source: str) -> None:
    """Only data: nested tuples/lists of non-object arrays and numbers (the book's
    ``expand_mnist.py`` left its labels as a list of ``np.int64`` scalars)."""
    if isinstance(value, tuple | list):
        for item in value:
            _check_arrays(item, source)
    elif isinstance(value, np.ndarray | np.generic):
        if value.dtype.hasobject:
            raise UnsafePickleError(f"{source}: object arrays are not accepted.")
    elif not isinstance(value, int | float) or isinstance(value, bool):
        raise UnsafePickleError(
            f"{source}: expected tuples or lists of numpy arrays and numbers. "
            f"Received: {type(value).__name__}."
        )


def load(path: Path) -> Any:
    """Load a (possibly gzipped) pickle of tuples of numpy arrays, and nothing else."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            value = _RestrictedUnpickler(handle, str(path)).load()
    except UnsafePickleError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable pickle of numpy arrays ({exc}).") from None
    _check_arrays(value, str(path))
    return value
