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
from typing import Any, ClassVar

import numpy as np

from convnet import limits
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


class _Budget:
    """The file as the unpickler reads it: in chunks of at most 16 MB (a count the file
    names is never allocated before the bytes are there), and never more than
    :data:`convnet.limits.MAX_ARRAY_BYTES` in all (a gzip stream is inflated no further)."""

    CHUNK = 16 * 2**20

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        self.file, self.source, self.left = file, source, limits.MAX_ARRAY_BYTES

    def _spend(self, n: int) -> None:
        if n > self.left:
            raise DataError(
                f"{self.source}: asks for more than the {limits.MAX_ARRAY_BYTES:,} bytes "
                "convnet allows any one file; it was not loaded."
            )
        self.left -= n

    def read(self, n: int) -> bytes:
        self._spend(n)
        parts, wanted = [], n
        while wanted > 0:
            part = self.file.read(min(wanted, self.CHUNK))
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)

    def readline(self) -> bytes:
        line = self.file.readline(self.CHUNK)
        self._spend(len(line))
        return line


class _RestrictedUnpickler(pickle._Unpickler):  # the Python one: its steps can be checked
    stack: list[Any]  # the Python unpickler's own

    def __init__(self, file: _Budget, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to load {module}.{name}: this pickle asks for "
            "something other than numpy arrays, so it was not loaded (no code from it ran)."
        )

    def load_reduce(self) -> None:
        """A call the pickle makes: never ``numpy.ndarray(shape)``, which would allocate a
        size the file names (numpy's own pickles build arrays from their bytes)."""
        if self.stack[-2] is np.ndarray:
            raise UnsafePickleError(
                f"{self.source}: refused to call numpy.ndarray({self.stack[-1]!r:.60}): an "
                "array whose size the file names, not one built from its bytes."
            )
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]  # untyped there

    dispatch: ClassVar[dict[int, Any]] = {
        **pickle._Unpickler.dispatch,  # its opcode table
        pickle.REDUCE[0]: load_reduce,
    }


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
            value = _RestrictedUnpickler(_Budget(handle, str(path)), str(path)).load()
    except (UnsafePickleError, DataError):
        raise
    except Exception as exc:  # the Python unpickler's errors for garbage are of many kinds
        raise DataError(
            f"{path}: not a readable pickle of numpy arrays ({type(exc).__name__}: {exc})."
        ) from None
    _check_arrays(value, str(path))
    return value
